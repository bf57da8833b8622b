"""Built-in, procedurally generated, verifiable reasoning tasks.

Every problem is a pure function of (task seed, split, index), so a data iterator's state is one integer
and any run can be reproduced or resumed exactly. Held-out problems are drawn from their own stream and
excluded from training.

``arithmetic``: add ``terms`` numbers of ``digits`` digits. The worked solution goes column by column
from the right, writing each column's sum and carry inside ``<think>``; the result goes inside
``<answer>``. Difficulty grows with digits and terms (more columns, larger carries).

``countdown``: reach a target from a few numbers with + - * (TinyZero-style); the solution shows the steps.

``instruct``: rule-checked instruction following, the non-reasoning side of a multi-task mixture. A prompt
such as ``n3 kbe s-:`` asks for exactly 3 items (single letters a-h) (a length limit), among them the keywords ``b`` and ``e``,
joined by ``-`` (an output format); the constraints travel with the example (``example["constraints"]``)
and the ``instruct*`` rewards (``reasoning_rl.data.instruct_rewards``) check them.

``code``: write the Python function a few input/output examples show; scored by running the program against
assert tests in the sandbox (the ``code`` reward).

``helpfulness``: no verifier; a hidden rule-based judge labels preference pairs for a reward model
(``reasoning_rl.data.helpfulness``).

``file``: rows of a local JSONL / Parquet file (``reasoning_rl.data.files``; preference pairs:
``reasoning_rl.data.preferences``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reasoning_rl.config import TaskConfig

SPLIT_IDS = {"train": 0, "held_out": 1}


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_IDS[split], index])


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    solution: str  # worked reasoning + answer, in the trained format (for cold-start SFT)
    difficulty: int
    key: str  # identity of the problem (disjointness of splits)
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific fields rewards read (tests, constraints)

    def as_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "answer": self.answer, "solution": self.solution,
                "difficulty": self.difficulty, "key": self.key, **self.extra}


class ArithmeticTask:
    name = "arithmetic"
    correctness = "accuracy"  # the reward that says whether a completion solves the problem

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg
        self._held_keys: set[str] | None = None

    def _draw(self, rng: np.random.Generator) -> Example:
        d, k = self.cfg.digits, self.cfg.terms
        nums = [int(rng.integers(10 ** (d - 1), 10**d)) for _ in range(k)]
        prompt = "+".join(str(x) for x in nums) + "="
        total = sum(nums)
        cols = [[(x // 10**i) % 10 for x in nums] for i in range(len(str(max(nums))))]
        steps, carry = [], 0
        for i, col in enumerate(cols):
            s = sum(col) + carry
            parts = [str(c) for c in col] + ([str(carry)] if carry else [])
            steps.append("+".join(parts) + f"={s}")
            carry = s // 10
        if carry:
            steps.append(f"c={carry}")
        solution = f"<think>{','.join(steps)}</think><answer>{total}</answer>"
        # difficulty: number of columns with a carry out (the hard part of the task)
        carries, c = 0, 0
        for col in cols:
            c = (sum(col) + c) // 10
            carries += c > 0
        return Example(prompt, str(total), solution, carries, prompt)

    def example(self, split: str, index: int) -> Example:
        rng = _rng(self.cfg.seed, split, index)
        ex = self._draw(rng)
        if split == "train":
            held = self.held_out_keys()
            attempt = 0
            while ex.key in held:  # keep the splits disjoint
                attempt += 1
                ex = self._draw(np.random.default_rng([self.cfg.seed, 7, index, attempt]))
        return ex

    def held_out_keys(self) -> set[str]:
        if self._held_keys is None:
            self._held_keys = {self.example("held_out", i).key for i in range(self.cfg.held_out_size)}
        return self._held_keys

    def held_out(self, n: int | None = None) -> list[Example]:
        n = self.cfg.held_out_size if n is None else min(n, self.cfg.held_out_size)
        return [self.example("held_out", i) for i in range(n)]

    def corpus(self, n: int = 2000) -> list[str]:
        """Text for training the tokenizer: prompts with worked solutions."""
        return [e.prompt + e.solution for e in (self.example("train", i) for i in range(n))]


class CountdownTask(ArithmeticTask):
    """Combine ``terms`` numbers with + - * to reach a target; the solution lists the steps."""

    name = "countdown"

    def _draw(self, rng: np.random.Generator) -> Example:
        k = max(self.cfg.terms, 2)
        hi = 10 ** max(self.cfg.digits - 2, 1) * 10
        nums = [int(rng.integers(1, hi)) for _ in range(k)]
        ops = [str(rng.choice(["+", "-", "*"])) for _ in range(k - 1)]
        acc, steps = nums[0], []
        for op, x in zip(ops, nums[1:]):
            new = acc + x if op == "+" else acc - x if op == "-" else acc * x
            steps.append(f"{acc}{op}{x}={new}")
            acc = new
        order = list(rng.permutation(k))
        shown = ",".join(str(nums[i]) for i in order)
        prompt = f"{shown}->{acc}:"
        expr = str(nums[0])
        for op, x in zip(ops, nums[1:]):
            expr = f"({expr}{op}{x})" if op != "*" else f"{expr}*{x}"
        solution = f"<think>{','.join(steps)}</think><answer>{expr}</answer>"
        key = hashlib.sha1(prompt.encode()).hexdigest()[:16]
        return Example(prompt, str(acc), solution, k, key)


class InstructTask(ArithmeticTask):
    """Produce ``n`` single-letter items, including the keywords, joined by a separator.

    The prompt space is small (a few thousand prompts), so keeping train and held-out prompts disjoint is
    best-effort: after a bounded number of redraws a held-out prompt may also appear in training."""

    name = "instruct"
    correctness = "instruct"
    LETTERS = "abcdefgh"
    SEPARATORS = ("-", ";", "|")

    def _draw(self, rng: np.random.Generator) -> Example:
        most = max(self.cfg.terms, 2) + 2
        n = int(rng.integers(2, most + 1))
        n_kw = int(rng.integers(1, min(n, 3) + 1))
        letters = list(self.LETTERS)
        kws = sorted(str(x) for x in rng.choice(letters, n_kw, replace=False))
        sep = str(rng.choice(self.SEPARATORS))
        fill = [str(x) for x in rng.choice([c for c in letters if c not in kws], n - n_kw, replace=True)]
        items = [kws[i] if i < n_kw else fill[i - n_kw] for i in rng.permutation(n)]
        prompt = f"n{n} k{''.join(kws)} s{sep}:"
        answer = sep.join(items)
        solution = f"<think>{','.join(items)}</think><answer>{answer}</answer>"
        constraints = {"items": n, "keywords": kws, "separator": sep}
        return Example(prompt, answer, solution, n, prompt, {"constraints": constraints})

    def example(self, split: str, index: int) -> Example:
        ex = self._draw(_rng(self.cfg.seed, split, index))
        if split == "train":
            held = self.held_out_keys()
            for attempt in range(1, 32):
                if ex.key not in held:
                    break
                ex = self._draw(np.random.default_rng([self.cfg.seed, 7, index, attempt]))
        return ex


class CodeTask(ArithmeticTask):
    """Write the Python function that the examples show: ``f(1)=5 f(2)=8:`` → ``def f(x):return 3*x+2``.

    ``terms`` 2: a line ``a*x+b``; ``terms`` 3 or more: a parabola ``a*x*x+b*x+c``; coefficients of up to
    ``digits`` digits (1 digit allows only 90 lines: keep ``held_out_size`` well below the problem count). The completion is a program, scored by the ``code`` reward
    against assert tests at inputs the prompt does not show, in the sandbox; reading off the coefficients from
    differences is the reasoning the worked solution writes out."""

    name = "code"
    correctness = "code"

    def _draw(self, rng: np.random.Generator) -> Example:
        hi = 10 ** self.cfg.digits
        quad = self.cfg.terms >= 3
        a = int(rng.integers(1, hi))
        b = int(rng.integers(0, hi))
        c = int(rng.integers(0, hi)) if quad else 0
        f = (lambda x: a * x * x + b * x + c) if quad else (lambda x: a * x + b)
        xs = [1, 2, 3] if quad else [1, 2]
        shown = " ".join(f"f({x})={f(x)}" for x in xs)
        prompt = f"{shown}:"
        if quad:
            d1, d2 = f(2) - f(1), f(3) - f(2)
            think = f"{f(2)}-{f(1)}={d1},{f(3)}-{f(2)}={d2},({d2}-{d1})/2={a},{d1}-3*{a}={b},{f(1)}-{a}-{b}={c}"
            body = f"{a}*x*x+{b}*x+{c}"
        else:
            think = f"{f(2)}-{f(1)}={a},{f(1)}-{a}={b}"
            body = f"{a}*x+{b}"
        program = f"def f(x):return {body}"
        probe = [0, 5, 7, -3]
        tests = [{"assert": f"assert f({x})=={f(x)}"} for x in probe]
        solution = f"<think>{think}</think><answer>{program}</answer>"
        key = hashlib.sha1(prompt.encode()).hexdigest()[:16]
        return Example(prompt, program, solution, self.cfg.digits + (2 if quad else 0), key, {"tests": tests})

    example = InstructTask.example  # bounded redraws: small problem spaces must not loop forever


TASKS = {"arithmetic": ArithmeticTask, "countdown": CountdownTask, "instruct": InstructTask, "code": CodeTask}


def make_task(cfg: TaskConfig):
    """The task a config describes (built-in generator or a local file)."""
    if cfg.name == "file" and cfg.preset == "preference":
        from .preferences import PreferenceFileTask

        return PreferenceFileTask(cfg)
    if cfg.name == "file":
        from .files import FileTask

        return FileTask(cfg)
    if cfg.name == "instruct":
        from . import instruct_rewards  # noqa: F401 - registers the instruct rewards with the registry
    if cfg.name == "helpfulness":
        from .helpfulness import HelpfulnessTask

        return HelpfulnessTask(cfg)
    return TASKS[cfg.name](cfg)
