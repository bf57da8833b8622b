"""Tasks over local JSONL / Parquet files: field mapping, presets for common formats, prompt templates.

Every row is read and checked when the task is built, so a malformed row stops the run before any compute
with one line naming the file, the line (or Parquet row) and the field. Rows become ``Example`` objects
like the built-in tasks' and are served as a pure function of (task seed, split, index): the training
order is a seeded permutation, redrawn every epoch, so a data iterator's state is still one integer.

Presets (``task.preset``) map a known format onto the example fields; ``task.fields`` overrides any
mapping (``{prompt: text, tests: test_list}`` reads MBPP):

* ``fields``: ``prompt``, ``answer``, optional ``solution``, ``difficulty``, ``tests``.
* ``gsm8k``: ``question``; ``answer`` is the worked solution ending in ``#### 72`` (calculator
  annotations ``<<a=b>>`` are dropped from the reasoning).
* ``math``: ``problem``; ``solution`` with a final ``\\boxed{}`` (or an ``answer`` column); ``level``
  ("Level 3") is the difficulty.
* ``code``: ``prompt``, ``tests`` (assert strings, ``{stdin, stdout}`` objects or a JSON string of
  either), optional ``solution`` (a program).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from reasoning_rl.config import ConfigError, TaskConfig

from .tasks import Example


class DataError(ConfigError):
    """A malformed data file or row; the message names ``file:line`` and the field."""


PRESETS: dict[str, dict[str, str]] = {
    "fields": {"prompt": "prompt", "answer": "answer", "solution": "solution", "difficulty": "difficulty",
               "tests": "tests"},
    "gsm8k": {"prompt": "question", "answer": "answer"},
    "math": {"prompt": "problem", "solution": "solution", "answer": "answer", "difficulty": "level"},
    "code": {"prompt": "prompt", "tests": "tests", "solution": "solution", "difficulty": "difficulty"},
}
REQUIRED = {"fields": ("prompt", "answer"), "gsm8k": ("prompt", "answer"), "math": ("prompt",),
            "code": ("prompt", "tests")}
CORRECTNESS = {"fields": "accuracy", "gsm8k": "accuracy", "math": "math", "code": "code"}
TARGETS = ("prompt", "answer", "solution", "difficulty", "tests")


# --------------------------------------------------------------------------- reading


def read_rows(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line, row)`` pairs of a JSONL or Parquet file; a bad line raises DataError naming it."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: data file not found")
    if p.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow); "
                            "or convert the file to JSONL") from None
        return [(i + 1, row) for i, row in enumerate(pq.read_table(p).to_pylist())]
    rows = []
    with p.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            rows.append((line_no, row))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


# --------------------------------------------------------------------------- rows → examples

_CALC = re.compile(r"<<[^<>]*>>")
_NAMES = {str: "a string", int: "an integer", list: "a list"}


def _boxed(text: str) -> str | None:
    from reasoning_rl.rewards.extract import last_boxed

    return last_boxed(text)


def _tests(value: Any, where: str) -> list[dict]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(f"{where}: is a string but not JSON tests") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: expected a non-empty list of tests, got {type(value).__name__}")
    out = []
    for t in value:
        if isinstance(t, str):
            out.append({"assert": t})
        elif isinstance(t, dict) and ({"assert"} <= t.keys() or {"stdin", "stdout"} <= t.keys()):
            out.append(dict(t))
        else:
            raise DataError(f"{where}: each test must be an assert string or a {{stdin, stdout}} object")
    return out


def _difficulty(value: Any) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    m = re.search(r"\d+", str(value))
    return int(m.group(0)) if m else 0


class RowMapper:
    """Turns one row into an Example following a preset and a field mapping."""

    def __init__(self, cfg: TaskConfig):
        self.preset = cfg.preset
        self.mapping = {**PRESETS[cfg.preset], **{str(k): str(v) for k, v in cfg.fields.items()}}
        unknown = set(cfg.fields) - set(TARGETS)
        if unknown:
            raise ConfigError(f"task.fields: unknown example field(s) {sorted(unknown)} (known: {', '.join(TARGETS)})")
        self.required = REQUIRED[cfg.preset]

    def _get(self, row: dict, target: str, where: str, kind: type | None = str) -> Any:
        col = self.mapping.get(target)
        if col is None or col not in row or row[col] is None:
            if target in self.required:
                raise DataError(f"{where}: field {col!r} ({target}) is missing")
            return None
        v = row[col]
        if kind is str and isinstance(v, (int, float)) and not isinstance(v, bool) and target == "answer":
            v = str(v)  # numeric answers are fine
        if kind is not None and not isinstance(v, kind):
            raise DataError(f"{where}: field {col!r} ({target}) must be {_NAMES.get(kind, kind.__name__)}, "
                            f"got {type(v).__name__}")
        return v

    def __call__(self, row: dict, where: str) -> Example:
        prompt = self._get(row, "prompt", where)
        answer = self._get(row, "answer", where)
        solution = self._get(row, "solution", where)
        reasoning = None
        if self.preset == "gsm8k":
            if "####" not in answer:
                raise DataError(f"{where}: field {self.mapping['answer']!r} (answer) has no '#### <answer>' line")
            reasoning, _, final = answer.rpartition("####")
            reasoning, answer = _CALC.sub("", reasoning).strip(), final.strip().replace(",", "")
        elif self.preset == "math":
            if answer is None:
                answer = _boxed(solution or "")
                if answer is None:
                    raise DataError(f"{where}: no answer: neither field {self.mapping['answer']!r} nor a \\boxed{{}} "
                                    f"in field {self.mapping['solution']!r}")
            reasoning = solution
        extra: dict[str, Any] = {}
        if self.preset == "code" or self.mapping.get("tests") in row:
            tests = self._get(row, "tests", where, kind=None)
            if tests is not None:
                extra["tests"] = _tests(tests, f"{where}: field {self.mapping['tests']!r} (tests)")
        answer = "" if answer is None else answer
        if self.preset in ("gsm8k", "math"):
            solution = f"<think>{reasoning or ''}</think><answer>{answer}</answer>"
        elif solution is None:
            solution = f"<think></think><answer>{answer}</answer>"
        elif self.preset == "code" and "<answer>" not in solution:
            solution = f"<think></think><answer>{solution}</answer>"
        diff = _difficulty(self._get(row, "difficulty", where, kind=None) or 0)
        key = hashlib.sha1(prompt.encode()).hexdigest()[:16]
        return Example(prompt, answer, solution, diff, key, extra)


def load_examples(path: str | Path, mapper: RowMapper) -> list[Example]:
    return [mapper(row, f"{path}:{line}") for line, row in read_rows(path)]


# --------------------------------------------------------------------------- the task


class FileTask:
    """A task over a file's rows. ``held_out_path`` (or ``held_out_size`` rows of ``path``) is held out."""

    name = "file"

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg
        self.correctness = CORRECTNESS[cfg.preset]
        mapper = RowMapper(cfg)
        rows = load_examples(cfg.path, mapper)
        if cfg.held_out_path:
            self._held = load_examples(cfg.held_out_path, mapper)[: cfg.held_out_size]
            self._train = rows
        else:
            if len(rows) <= cfg.held_out_size:
                raise DataError(f"{cfg.path}: {len(rows)} rows, but task.held_out_size={cfg.held_out_size} "
                                "are held out: none left for training (lower held_out_size or set held_out_path)")
            order = np.random.default_rng([cfg.seed, 3]).permutation(len(rows))
            self._held = [rows[i] for i in order[: cfg.held_out_size]]
            self._train = [rows[i] for i in order[cfg.held_out_size:]]
        self._format: Callable[[str], str] = self._raw_template(cfg.template)
        self._order: tuple[int, np.ndarray] = (-1, np.zeros(0, np.int64))

    # templates ------------------------------------------------------------
    def _raw_template(self, template: str) -> Callable[[str], str]:
        if template == "chat":
            def unbound(prompt: str) -> str:
                raise ConfigError("task.template: 'chat' needs the tokenizer; call bind_tokenizer first")
            return unbound
        try:
            template.format(prompt="")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"task.template: {template!r} is not a template over {{prompt}} ({e})") from None
        return lambda prompt: template.format(prompt=prompt)

    def bind_tokenizer(self, tok: Any) -> None:
        """Render prompts with the tokenizer's chat template (``task.template: chat``)."""
        if self.cfg.template != "chat":
            return
        if getattr(tok, "apply_chat_template", None) is None or getattr(tok, "chat_template", None) is None:
            raise ConfigError("task.template: 'chat' needs a tokenizer with a chat template (an HF tokenizer)")
        system = self.cfg.system

        def render(prompt: str) -> str:
            msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            return tok.apply_chat_template(msgs, add_generation_prompt=True)

        self._format = render

    def _templated(self, ex: Example) -> Example:
        return Example(self._format(ex.prompt), ex.answer, ex.solution, ex.difficulty, ex.key, ex.extra)

    # the task interface ---------------------------------------------------
    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.cfg.seed, 11, epoch]).permutation(len(self._train)))
        return self._order[1]

    def example(self, split: str, index: int) -> Example:
        if split == "held_out":
            return self._templated(self._held[index % len(self._held)])
        n = len(self._train)
        return self._templated(self._train[int(self._epoch_order(index // n)[index % n])])

    def held_out(self, n: int | None = None) -> list[Example]:
        n = len(self._held) if n is None else min(n, len(self._held))
        return [self.example("held_out", i) for i in range(n)]

    def held_out_keys(self) -> set[str]:
        return {e.key for e in self._held}

    def corpus(self, n: int = 2000) -> list[str]:
        return [e.prompt + e.solution for e in self._train[:n]]

    @property
    def train_size(self) -> int:
        return len(self._train)
