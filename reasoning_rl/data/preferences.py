"""Preference pairs from local JSONL / Parquet files (``task: {name: file, preset: preference}``).

Rows are ``{"prompt", "chosen", "rejected"}`` plus an optional numeric ``margin``; ``task.fields`` maps other
column names (``{chosen: response_a, rejected: response_b}``). Prompts go through the task's template (or
the tokenizer's chat template with ``template: chat``), as the other file tasks' do. Every row is read and
checked when the task is built, so a malformed one (a missing or non-text field, chosen equal to rejected)
stops the run before any compute, naming ``file:line`` and the field.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from reasoning_rl.config import ConfigError, TaskConfig

from .files import DataError, FileTask, read_rows

FIELDS = ("prompt", "chosen", "rejected", "margin")


class PreferenceFileTask(FileTask):
    """Pairs of a file; ``pair(split, index)`` serves them as a pure function of the index (seeded epochs)."""

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg
        self.correctness = "accuracy"
        unknown = set(cfg.fields) - set(FIELDS)
        if unknown:
            raise ConfigError(f"task.fields: unknown preference field(s) {sorted(unknown)} "
                              f"(known: {', '.join(FIELDS)})")
        self.mapping = {**{f: f for f in FIELDS}, **{str(k): str(v) for k, v in cfg.fields.items()}}
        rows = self._load(cfg.path)
        if cfg.held_out_path:
            self._held, self._train = self._load(cfg.held_out_path)[: cfg.held_out_size], rows
        else:
            if len(rows) <= cfg.held_out_size:
                raise DataError(f"{cfg.path}: {len(rows)} pairs, but task.held_out_size={cfg.held_out_size} are "
                                "held out: none left for training (lower held_out_size or set held_out_path)")
            order = np.random.default_rng([cfg.seed, 3]).permutation(len(rows))
            self._held = [rows[i] for i in order[: cfg.held_out_size]]
            self._train = [rows[i] for i in order[cfg.held_out_size:]]
        self._format = self._raw_template(cfg.template)
        self._order = (-1, np.zeros(0, np.int64))

    def check_lengths(self, context: int, with_solution: bool) -> None:
        """Pairs are cut to the reward-model stage's sequence length when batched (``pair_batch``): no
        whole-file length check here (the file rows' prompt/solution check does not apply to pairs)."""

    def _row(self, row: dict, where: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in ("prompt", "chosen", "rejected"):
            col = self.mapping[f]
            v = row.get(col)
            if v is None:
                raise DataError(f"{where}: field {col!r} ({f}) is missing")
            if not isinstance(v, str):
                raise DataError(f"{where}: field {col!r} ({f}) must be a string, got {type(v).__name__}")
            out[f] = v
        if out["chosen"] == out["rejected"]:
            raise DataError(f"{where}: fields {self.mapping['chosen']!r} and {self.mapping['rejected']!r} are "
                            "equal: a preference pair needs two different responses")
        m = row.get(self.mapping["margin"])
        if m is not None:
            if isinstance(m, bool) or not isinstance(m, (int, float)) or not np.isfinite(m):
                raise DataError(f"{where}: field {self.mapping['margin']!r} (margin) must be a finite number")
            out["margin"] = float(m)
        out["key"] = hashlib.sha1(out["prompt"].encode()).hexdigest()[:16]
        return out

    def _load(self, path) -> list[dict[str, Any]]:
        return [self._row(row, f"{path}:{line}") for line, row in read_rows(path)]

    def _templated_pair(self, p: dict[str, Any]) -> dict[str, Any]:
        return {**p, "prompt": self._format(p["prompt"]), "task": "file"}

    def pair(self, split: str, index: int) -> dict[str, Any]:
        if split == "held_out":
            return self._templated_pair(self._held[index % len(self._held)])
        n = len(self._train)
        return self._templated_pair(self._train[int(self._epoch_order(index // n)[index % n])])

    def held_out_size(self) -> int:
        return len(self._held)

    def example(self, split: str, index: int):
        raise ConfigError("task: preference pairs train reward_model stages; they are not prompts to answer")

    def held_out(self, n: int | None = None):
        return self.example("held_out", 0)

    def held_out_keys(self) -> set[str]:
        return {p["key"] for p in self._held}

    def corpus(self, n: int = 2000) -> list[str]:
        return [p["prompt"] + r for p in self._train[:n] for r in (p["chosen"], p["rejected"])]
