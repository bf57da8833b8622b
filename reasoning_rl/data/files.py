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
from reasoning_rl.rewards.format import opens_think

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
    """``(line, row)`` pairs of a JSONL or Parquet file, or of a JSON file holding one array of objects (as
    ``json.dump(rows, f, indent=2)`` and ``to_json(lines=False)`` write them); for Parquet and a JSON array
    the number is the row's position. A bad line raises DataError naming it. A UTF-8 byte-order mark (files
    saved on Windows) is skipped."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: data file not found")
    if p.suffix != ".parquet" and _first_char(p) == "[":
        return _json_array(p)
    if p.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow); "
                            "or convert the file to JSONL") from None
        try:
            table = pq.read_table(p)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged or foreign file
            raise DataError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0][:200]})") from None
        return [(i + 1, row) for i, row in enumerate(table.to_pylist())]
    rows = []
    with p.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{line_no}: not UTF-8 text (byte {e.start} of the line); a JSONL file "
                                "holds one JSON object per line") from None
            if line_no == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg} at column {e.colno})") from None
            except RecursionError:
                raise DataError(f"{path}:{line_no}: JSON nested too deeply") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            rows.append((line_no, row))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _first_char(p: Path) -> str:
    """The first character of a file past a byte-order mark and white space ('' for none)."""
    with p.open("rb") as f:
        head = f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    return chr(head[0]) if head else ""


def _json_array(p: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        data = json.loads(p.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{p}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); a .json file "
                        "holds one array of objects, a .jsonl file one object per line") from None
    except RecursionError:
        raise DataError(f"{p}: JSON nested too deeply") from None
    if not isinstance(data, list):
        raise DataError(f"{p}: expected an array of objects, got {type(data).__name__}")
    for i, row in enumerate(data, 1):
        if not isinstance(row, dict):
            raise DataError(f"{p}:{i}: expected a JSON object (row {i} of the array), got {type(row).__name__}")
    if not data:
        raise DataError(f"{p}: no rows")
    return list(enumerate(data, 1))


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


def _load_located(path: str | Path, mapper: RowMapper) -> list[tuple[Example, str]]:
    """Examples with the ``file:line`` they came from (for the token-length check's messages)."""
    return [(mapper(row, f"{path}:{line}"), f"{path}:{line}") for line, row in read_rows(path)]


# a token covers at least one byte of text: a text of this many bytes fewer than a limit fits it in tokens
# whatever the tokenizer (the margin covers BOS/EOS and a sentencepiece word-start piece)
_TOKEN_MARGIN = 8


# --------------------------------------------------------------------------- the task


class FileTask:
    """A task over a file's rows. ``held_out_path`` (or ``held_out_size`` rows of ``path``) is held out."""

    name = "file"

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg
        self.correctness = CORRECTNESS[cfg.preset]
        mapper = RowMapper(cfg)
        located = _load_located(cfg.path, mapper)
        rows = [ex for ex, _ in located]
        if cfg.held_out_path:
            held = _load_located(cfg.held_out_path, mapper)[: cfg.held_out_size]
            self._held, self._train = [ex for ex, _ in held], rows
            self._where = [w for _, w in located] + [w for _, w in held]
        else:
            if len(rows) <= cfg.held_out_size:
                raise DataError(f"{cfg.path}: {len(rows)} rows, but task.held_out_size={cfg.held_out_size} "
                                "are held out: none left for training (lower held_out_size or set held_out_path)")
            order = np.random.default_rng([cfg.seed, 3]).permutation(len(rows))
            self._held = [rows[i] for i in order[: cfg.held_out_size]]
            self._train = [rows[i] for i in order[cfg.held_out_size:]]
            self._where = [located[i][1] for i in order[cfg.held_out_size:]] + \
                [located[i][1] for i in order[: cfg.held_out_size]]
        self._format: Callable[[str], str] = self._raw_template(cfg.template)
        self._tok: Any = None
        self._checked: set[tuple[int, bool]] = set()
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
        """Render prompts with the tokenizer's chat template (``task.template: chat``); the tokenizer also
        measures rows (``check_lengths``) and cuts prompts to ``task.max_prompt_tokens``."""
        self._tok = tok
        self._cut_cache: dict[str, str] = {}
        if self.cfg.template != "chat":
            return
        if getattr(tok, "apply_chat_template", None) is None or getattr(tok, "chat_template", None) is None:
            raise ConfigError("task.template: 'chat' needs a tokenizer with a chat template (an HF tokenizer)")
        system, kwargs = self.cfg.system, dict(self.cfg.chat_template_kwargs)

        def render(prompt: str) -> str:
            msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            return tok.apply_chat_template(msgs, add_generation_prompt=True, **kwargs)

        self._format = render

    def _templated(self, ex: Example) -> Example:
        prompt, solution = self._cut(self._format(ex.prompt)), ex.solution
        if opens_think(prompt) and solution.lstrip().startswith("<think>"):  # the template opened it already
            solution = solution.lstrip()[len("<think>"):]
        return Example(prompt, ex.answer, solution, ex.difficulty, ex.key, ex.extra)

    def _cut(self, prompt: str) -> str:
        """The prompt's last ``task.max_prompt_tokens`` tokens (the question and a chat template's generation
        prompt come last, so the start is what goes, as in TRL's left truncation)."""
        limit = self.cfg.max_prompt_tokens
        if limit is None or self._tok is None or len(prompt.encode()) + _TOKEN_MARGIN <= limit:
            return prompt
        if prompt not in self._cut_cache:
            ids = self._tok.encode(prompt)
            text = prompt
            keep = ids[-limit:] if len(ids) > limit else None
            while keep is not None:  # a decoded tail may re-encode a token longer: drop from the front
                text = self._tok.decode(keep)
                if len(self._tok.encode(text)) <= limit:
                    break
                keep = keep[1:]
            if len(self._cut_cache) < 100_000:
                self._cut_cache[prompt] = text
            return text
        return self._cut_cache[prompt]

    def check_lengths(self, context: int, with_solution: bool) -> None:
        """Every row fits the model's context in tokens, before any compute: its templated prompt (cut to
        ``task.max_prompt_tokens`` when set) and, for a stage that trains on solutions, prompt + solution +
        EOS. An overlong row (a 10 MB field would otherwise exhaust memory in the first step) is rejected
        naming its ``file:line``."""
        if self._tok is None or (context, with_solution) in self._checked:
            return
        fix = ("shorten or drop the row" + ("" if self.cfg.max_prompt_tokens else
               ", or set task.max_prompt_tokens to keep the prompt's last tokens"))
        for ex, where in zip(self._train + self._held, self._where):
            prompt = self._format(ex.prompt)
            size = len(prompt.encode()) + (len(ex.solution.encode()) if with_solution else 0)
            if size + _TOKEN_MARGIN <= context:
                continue
            n = len(self._tok.encode(self._cut(prompt)))
            if n > context:
                raise DataError(f"{where}: the prompt is {n} tokens, longer than the model's context of {context} "
                                f"tokens (model.max_seq_len); {fix}")
            if with_solution:
                n += len(self._tok.encode(ex.solution)) + 1
                if n > context:
                    raise DataError(f"{where}: prompt + solution are {n} tokens, longer than the model's context "
                                    f"of {context} tokens (model.max_seq_len) an SFT stage trains on; "
                                    "shorten or drop the row")
        self._checked.add((context, with_solution))

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
