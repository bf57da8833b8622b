"""``helpfulness``: a task without a verifier, whose quality is a hidden rule-based judge.

A prompt ``help dbf:`` asks about a few topics (letters a-h, in the asker's order). The hidden judge scores
a response (the ``<answer>`` content, else the whole completion) on a rubric, 0 to 1:

* 0.4 x the share of the asked topics it covers (items joined by ``,``),
* 0.2 if it names nothing that was not asked (no filler, no other topic, nothing twice),
* 0.2 if it answers every topic in the order asked,
* 0.2 if it ends with ``!`` (courtesy).

The judge is what a human rater would be in RLHF: it labels preference pairs (``pair(split, i)``: two
responses to one prompt, the one the judge scores higher is ``chosen``) from which a reward model must learn
the rubric, and it measures a policy afterwards (``judge_mean``, the ``helpfulness_judge`` correctness
reward used for pass@k). It never scores rollouts for RL: a policy trained here sees only the reward model,
so reward hacking (the reward model's score rising while the judge's does not) is visible in the metrics.

The worked solutions (``solution``, for SFT) are mediocre on purpose: they cover the topics, but most of
them in a shuffled order, some with a filler item (``um``), most without the courtesy, so there is room
for RL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from reasoning_rl.rewards import register
from reasoning_rl.rewards.extract import as_text, last_tag

from .tasks import ArithmeticTask, Example, InstructTask

LETTERS = "abcdefgh"
FILLER = "um"  # an item that answers nothing
WEIGHTS = {"coverage": 0.4, "precision": 0.2, "order": 0.2, "courtesy": 0.2}


def _response(completion: Any) -> str | None:
    text = as_text(completion)
    if text is None:
        return None
    body = last_tag(text, "answer")
    return (body if body is not None else text).strip()


def rubric(completion: Any, topics: list[str]) -> dict[str, float]:
    """Each rubric item's score (0..1) for a completion answering ``topics``."""
    resp = _response(completion)
    if not resp or not topics:
        return {k: 0.0 for k in WEIGHTS}
    items = [x.strip() for x in resp.rstrip("!.").split(",") if x.strip()]
    asked = [x for x in items if x in topics]
    return {"coverage": len(set(asked)) / len(topics),
            "precision": float(len(asked) == len(items) and len(set(items)) == len(items) and bool(items)),
            "order": float(asked == list(topics)),
            "courtesy": float(resp.endswith("!"))}


def judge(completion: Any, topics: list[str]) -> float:
    """The hidden judge's score in [0, 1]."""
    r = rubric(completion, topics)
    return float(sum(WEIGHTS[k] * r[k] for k in WEIGHTS))


@register("helpfulness_judge")
def helpfulness_judge(completion: str, example: Mapping[str, Any]) -> float:
    """The helpfulness task's correctness signal for evaluation (1.0 only for a perfect answer). Not a
    training reward: configs that put it in ``rewards`` are refused."""
    topics = example.get("topics")
    if not isinstance(topics, (list, tuple)):
        raise TypeError("example has no 'topics' list (is this a helpfulness example?)")
    return judge(completion, list(topics))


def completion(think: list[str], answer: str) -> str:
    return f"<think>{','.join(think)}</think><answer>{answer}</answer>"


def random_answer(rng: np.random.Generator, topics: list[str]) -> tuple[list[str], str]:
    """(thinking items, answer) of random quality, with the slips a small policy makes: topics dropped,
    shuffled or repeated (in the answer and in the thinking), filler or an unasked topic, a wrong separator,
    courtesy or not."""
    items = [t for t in topics if rng.random() > 0.25] or [topics[int(rng.integers(len(topics)))]]
    if rng.random() < 0.5:
        items = [items[i] for i in rng.permutation(len(items))]
    if rng.random() < 0.3:
        j = int(rng.integers(len(items)))
        items.insert(j, items[j])
    u = rng.random()
    if u < 0.4:
        extra = FILLER if u < 0.3 else str(rng.choice([c for c in LETTERS if c not in topics]))
        items.insert(int(rng.integers(len(items) + 1)), extra)
    think = list(topics)
    if rng.random() < 0.25:
        think = items if rng.random() < 0.5 else think + [think[-1]]
    sep = "," if rng.random() > 0.1 else str(rng.choice(["-", "|", ";"]))
    return think, sep.join(items) + ("!" if rng.random() < 0.5 else ".")


class HelpfulnessTask(InstructTask):
    """Prompts ``help <topics>:`` with 2 to ``terms`` + 1 topics; see the module docstring."""

    name = "helpfulness"
    correctness = "helpfulness_judge"

    def _draw(self, rng: np.random.Generator) -> Example:
        most = min(max(self.cfg.terms, 2) + 1, len(LETTERS))
        k = int(rng.integers(2, most + 1))
        topics = [str(x) for x in rng.choice(list(LETTERS), k, replace=False)]
        prompt = f"help {''.join(topics)}:"
        items = list(topics)
        if rng.random() < 0.6:  # a mediocre demonstration: order, extras, courtesy left to chance
            items = [items[i] for i in rng.permutation(k)]
        if rng.random() < 0.4:
            items.insert(int(rng.integers(k + 1)), FILLER)
        answer = ",".join(items) + ("!" if rng.random() < 0.4 else ".")
        best = ",".join(topics) + "!"
        return Example(prompt, best, completion(topics, answer), k, prompt, {"topics": topics})

    def judge(self, text: str, example: Mapping[str, Any]) -> float:
        return judge(text, list(example["topics"]))

    def pair(self, split: str, index: int) -> dict[str, Any]:
        """A preference pair on the ``index``-th prompt of ``split``: two random responses the judge scores
        differently, the better one ``chosen``."""
        ex = self.example(split, index)
        rng = np.random.default_rng([self.cfg.seed, 5, {"train": 0, "held_out": 1}[split], index])
        topics = ex.extra["topics"]
        for _ in range(64):
            a, b = (completion(*random_answer(rng, topics)) for _ in range(2))
            ja, jb = judge(a, topics), judge(b, topics)
            if abs(ja - jb) > 1e-9:
                break
        else:  # practically unreachable: a perfect answer against a bare one
            a, b, ja, jb = completion(topics, ",".join(topics) + "!"), completion(topics, topics[0] + "."), 1.0, 0.0
        chosen, rejected = (a, b) if ja > jb else (b, a)
        return {"prompt": ex.prompt, "chosen": chosen, "rejected": rejected, "task": self.name}

    def corpus(self, n: int = 2000) -> list[str]:
        lines = ArithmeticTask.corpus(self, n // 2)
        for i in range(n // 4):
            p = self.pair("train", i)
            lines += [p["prompt"] + p["chosen"], p["prompt"] + p["rejected"]]
        return lines


def judge_mean(task: HelpfulnessTask, texts: list[str], rows: list[Mapping[str, Any]]) -> float:
    return float(np.mean([task.judge(t, r) for t, r in zip(texts, rows)])) if texts else 0.0


__all__ = ["HelpfulnessTask", "judge", "judge_mean", "random_answer", "rubric"]
