"""Held-out evaluation: pass@1, unbiased pass@k, maj@k, response length, format rate, greedy accuracy.

pass@k uses the unbiased estimator of Chen et al. (2021): from n samples with c correct,
``1 - C(n-c, k) / C(n, k)``, averaged over problems.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from reasoning_rl.data.batching import truncated_rows
from reasoning_rl.distributed import gather
from reasoning_rl.progress import Progress
from reasoning_rl.rollout.sampler import SamplingParams, sample
from reasoning_rl.rollout.stops import StopTable


def pass_at_k(n: int, c: int, k: int) -> float:
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """1 if the most common extracted answer among the first k samples is a correct one."""
    votes = Counter(a for a in answers[:k] if a is not None)
    if not votes:
        return 0.0
    top = votes.most_common(1)[0][0]
    return float(any(c for a, c in zip(answers[:k], correct[:k]) if a == top))


def sample_texts(mdef, params, tok, prompts: list[list[int]], sp: SamplingParams, seed: int, batch_prompts: int,
                 stopped: list[bool] | None = None,
                 progress: Progress | None = None) -> tuple[list[str], np.ndarray]:
    """Sample ``sp.group_size`` completions per prompt in fixed-shape chunks; returns texts and lengths.
    ``stopped``: appended per completion, whether it ended on a stop token or string (else it hit the token
    limit). ``progress`` counts the completions as each chunk comes back."""
    from reasoning_rl.rollout.sampler import left_pad

    texts: list[str] = []
    lengths: list[int] = []
    tp = max(len(p) for p in prompts)
    for start in range(0, len(prompts), batch_prompts):
        chunk = prompts[start:start + batch_prompts]
        real = len(chunk)
        chunk = chunk + [chunk[0]] * (batch_prompts - real)  # fixed shape: no recompile on the last chunk
        pt, pv = left_pad(chunk, tok.pad_id, bucket=8, min_len=tp)
        out = gather(sample(mdef, params, pt, pv, jax.random.key(seed + start), sp))
        rows = real * sp.group_size
        cut = truncated_rows(np.asarray(out.tokens[:rows]), np.asarray(out.lengths[:rows]), sp.max_new_tokens,
                             sp.stop_ids, sp.stop_table)
        for r in range(rows):
            n = int(out.lengths[r])
            texts.append(tok.decode(out.tokens[r, :n]))
            lengths.append(n)
            if stopped is not None:
                stopped.append(not cut[r])
        if progress is not None:
            progress.advance(rows)
    return texts, np.asarray(lengths)


def filters_of(top_k: int, top_p: float, min_p: float) -> dict[str, Any]:
    """The sampling filters in effect, for a result's record (none when all are off)."""
    on = {"top_k": int(top_k), "top_p": float(top_p), "min_p": float(min_p)}
    return {k: v for k, v in on.items() if v != {"top_k": 0, "top_p": 1.0, "min_p": 0.0}[k]}


def evaluate(mdef, params, tok, examples: list[dict], *, samples: int, ks: Sequence[int], temperature: float,
             max_new_tokens: int, stop_ids: Sequence[int], correct_fn: Callable[[str, dict], float],
             stop_table: StopTable | None = None,
             format_fn: Callable[[str, dict], float] | None, extract_fn: Callable[[str], Any] | None,
             batch_size: int = 512, greedy: bool = True, seed: int = 0, name: str = "eval",
             records: list[dict] | None = None,
             correct_name: str = "correct",
             rewards_fn: Callable[[list[str], list[dict]], dict[str, Sequence[float]]] | None = None,
             top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
             ) -> dict[str, Any]:
    """Held-out figures (module docstring); its progress shows as phase ``name`` (completions sampled). ``records``: when given, one dict per scored completion is
    appended (see ``sample_record``): what ``samples.jsonl`` holds. ``rewards_fn(texts, examples)``: further
    reward components for the records (``{name: values}``), besides correctness (``correct_name``) and format.
    ``top_k``/``top_p``/``min_p``: the sampled completions' filters (published reasoning evaluations sample
    at e.g. temperature 0.6, top-p 0.95); the greedy pass takes the argmax whatever they are."""
    prompts = [tok.encode(e["prompt"]) for e in examples]
    bp = max(1, min(len(prompts), batch_size // samples))
    sp = SamplingParams(max_new_tokens, float(temperature), int(top_k), float(top_p), False, tuple(stop_ids),
                        tok.pad_id, samples, stop_table=stop_table, min_p=float(min_p))
    n = len(examples)
    bar = Progress(name, n * samples + (n if greedy else 0), unit="completion")
    stopped: list[bool] = []
    texts, lengths = sample_texts(mdef, params, tok, prompts, sp, seed, bp, stopped, bar)
    scores = [float(correct_fn(t, examples[i // samples])) for i, t in enumerate(texts)]
    correct = (np.asarray(scores) >= 1.0).reshape(n, samples)
    out: dict[str, Any] = {"num_problems": n, "samples_per_problem": samples, "temperature": temperature,
                           **filters_of(top_k, top_p, min_p)}
    out["pass@1"] = float(correct.mean())
    for k in ks:
        out[f"pass@{k}"] = float(np.mean([pass_at_k(samples, int(c), k) for c in correct.sum(1)]))
    answers = [extract_fn(t) for t in texts] if extract_fn is not None else [None] * len(texts)
    if extract_fn is not None:
        for k in ks:
            if k > 1:
                out[f"maj@{k}"] = float(np.mean([maj_at_k(answers[i * samples:(i + 1) * samples],
                                                           list(correct[i]), k) for i in range(n)]))
    out["mean_response_tokens"] = float(lengths.mean())
    fmt = [float(format_fn(t, examples[i // samples])) for i, t in enumerate(texts)] if format_fn else None
    if fmt is not None:
        out["format_rate"] = float(np.mean(np.asarray(fmt) >= 1.0))
    if records is not None:
        extra = rewards_fn(texts, [examples[i // samples] for i in range(len(texts))]) if rewards_fn else {}
        for i, t in enumerate(texts):
            comps = {correct_name: scores[i], **({"format": fmt[i]} if fmt is not None else {}),
                     **{k: float(v[i]) for k, v in extra.items() if k not in (correct_name, "format")}}
            records.append(sample_record(examples[i // samples], t, answers[i], comps, bool(correct.flat[i]),
                                         int(lengths[i]), not stopped[i], index=i // samples, sample=i % samples,
                                         greedy=False))
    diffs = np.array([e.get("difficulty", 0) for e in examples])
    per_len = lengths.reshape(n, samples).mean(1)
    out["by_difficulty"] = {
        str(int(d)): {"n": int((diffs == d).sum()), "pass@1": float(correct[diffs == d].mean()),
                      "mean_response_tokens": float(per_len[diffs == d].mean())}
        for d in sorted(set(diffs.tolist()))
    }
    if greedy:
        gsp = dataclasses.replace(sp, greedy=True, temperature=1.0, group_size=1)
        gstopped: list[bool] = []
        gtexts, glens = sample_texts(mdef, params, tok, prompts, gsp, seed, max(1, min(n, batch_size)), gstopped,
                                     bar)
        gscores = [float(correct_fn(t, examples[i])) for i, t in enumerate(gtexts)]
        out["greedy_accuracy"] = float(np.mean(np.asarray(gscores) >= 1.0))
        if records is not None:
            for i, t in enumerate(gtexts):
                ans = extract_fn(t) if extract_fn is not None else None
                comps = {correct_name: gscores[i]}
                if format_fn is not None:
                    comps["format"] = float(format_fn(t, examples[i]))
                records.append(sample_record(examples[i], t, ans, comps, gscores[i] >= 1.0, int(glens[i]),
                                             not gstopped[i], index=i, sample=0, greedy=True))
    bar.fields = {"pass@1": out["pass@1"], **({"greedy": out["greedy_accuracy"]} if greedy else {})}
    bar.close()
    return out


def sample_record(example: dict, completion: str, answer: Any, rewards: dict[str, float], correct: bool,
                  tokens: int, truncated: bool, **where: Any) -> dict[str, Any]:
    """One scored completion as ``samples.jsonl`` / ``rollouts.jsonl`` hold it: enough to read what the
    model wrote and why it scored what it did (``truncated``: it hit the token limit without a stop token)."""
    ref = example.get("answer")
    return {**({"task": example["task"]} if "task" in example else {}), **where, "prompt": example.get("prompt"),
            "completion": completion, "answer": None if answer is None else str(answer),
            "reference": None if ref is None else str(ref), "rewards": rewards, "correct": bool(correct),
            "tokens": tokens, "truncated": bool(truncated)}


def budget_curve(mdef, params, tok, examples: list[dict], budgets: Sequence[int], *,
                 correct_fn: Callable[[str, dict], float], format_fn: Callable[[str, dict], float] | None = None,
                 extend: bool = False, continuation: str = ",", answer_tokens: int = 16, samples: int = 1,
                 greedy: bool = True, temperature: float = 1.0, stop_ids: Sequence[int] = (),
                 stop_table: StopTable | None = None, batch_rows: int = 512, seed: int = 0,
                 name: str = "budget forcing", top_k: int = 0, top_p: float = 1.0,
                 min_p: float = 0.0) -> dict[str, Any]:
    """Accuracy against thinking budget by budget forcing (``reasoning_rl.rollout.budget``).

    Every problem is answered once per budget (``samples`` times, greedy by default) with its thinking
    capped at the budget (and, with ``extend``, held up to it). Returns lists aligned with ``budgets``."""
    from reasoning_rl.rollout.budget import BudgetParams, budget_sample
    from reasoning_rl.rollout.sampler import left_pad

    ids = {t: tok.token_id(t) for t in ("<think>", "</think>", "<answer>")}
    cont = tok.encode(continuation)
    if ids["<think>"] is None or ids["</think>"] is None or len(cont) != 1:
        raise ValueError("budget forcing needs <think>, </think> and the continuation "
                         f"{continuation!r} to be single tokens of the tokenizer")
    ids["<answer>"] = -1 if ids["<answer>"] is None else ids["<answer>"]
    budgets = [int(b) for b in budgets]
    g = len(budgets) * samples
    bp = BudgetParams(max(budgets) + answer_tokens + 2, ids["<think>"], ids["</think>"], ids["<answer>"], cont[0],
                      tuple(stop_ids), tok.pad_id, float(temperature), bool(greedy), g, stop_table=stop_table,
                      top_k=int(top_k), top_p=float(top_p), min_p=float(min_p))
    prompts = [tok.encode(e["prompt"]) for e in examples]
    tp = max(len(p) for p in prompts)
    bpp = max(1, min(len(prompts), batch_rows // g))
    row_budget = np.tile(np.repeat(np.asarray(budgets, np.int32), samples), bpp)
    floor = row_budget if extend else np.zeros_like(row_budget)
    correct, fmt, think, forced = [], [], [], []
    bar = Progress(name, len(prompts) * g, unit="completion")
    for start in range(0, len(prompts), bpp):
        chunk = prompts[start:start + bpp]
        real = len(chunk)
        pt, pv = left_pad(chunk + [chunk[0]] * (bpp - real), tok.pad_id, bucket=8, min_len=tp)
        out = gather(budget_sample(mdef, params, pt, pv, row_budget, floor, jax.random.key(seed + start), bp))
        for r in range(real * g):
            ex = examples[start + r // g]
            text = tok.decode(out.tokens[r, : int(out.lengths[r])])
            correct.append(correct_fn(text, ex) >= 1.0)
            fmt.append(format_fn(text, ex) >= 1.0 if format_fn is not None else False)
            think.append(int(out.think_tokens[r]))
            forced.append(bool(out.forced[r]))
        bar.advance(real * g)
    bar.close()
    # rows are (problem, budget, sample): average over problems and samples per budget
    shape = (len(examples), len(budgets), samples)

    def per_budget(x):
        return np.asarray(x, np.float64).reshape(shape).mean(axis=(0, 2)).tolist()

    return {"budgets": budgets, "accuracy": per_budget(correct), "mean_think_tokens": per_budget(think),
            "forced_rate": per_budget(forced), "format_rate": per_budget(fmt), "num_problems": len(examples),
            "samples": samples, "greedy": bool(greedy), "extend": bool(extend),
            **({} if greedy else {"temperature": float(temperature), **filters_of(top_k, top_p, min_p)})}
