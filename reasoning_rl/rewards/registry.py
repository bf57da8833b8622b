"""Reward registry and the batched, fault-tolerant reward computer.

A reward is ``fn(completion: str, example: Mapping[str, Any], **kwargs) -> float``.
Rewards are looked up by registered name or imported from a ``"package.module:function"``
path, so experiments can plug in their own without touching this package.

``RewardComputer`` is what the trainer calls once per batch. One bad sample must not take
the run down, but a reward that cannot be computed is never a silent zero: a call that
raises, hangs past ``timeout_s`` or returns garbage (NaN, inf, a string) is counted in
``RewardResult.errors`` / ``non_finite`` (per reward name, logged as ``reward_errors/<name>``
each step, the first message of each name logged) and ``check_error_rate`` stops the stage
when more than ``max_error_rate`` of a step's samples could not be scored.

A reward may register a *preflight* (``register_preflight``): a check run once at the start
of a run, before any compute, that raises when the reward cannot work here (e.g. no
sandbox isolates code) - the run then refuses to start with that one line.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import importlib
import logging
import math
import numbers
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

import numpy as np

log = logging.getLogger("reasoning_rl.rewards")

RewardFn = Callable[..., float]
_REGISTRY: dict[str, RewardFn] = {}


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make ``fn`` available to configs as ``name``."""

    def deco(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"reward {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


Preflight = Callable[[Mapping[str, Any]], "str | None"]
_PREFLIGHT: dict[str, Preflight] = {}


def register_preflight(name: str) -> Callable[[Preflight], Preflight]:
    """Decorator: ``fn(kwargs) -> line to log | None``, raising when reward ``name`` cannot run here."""

    def deco(fn: Preflight) -> Preflight:
        _PREFLIGHT[name] = fn
        return fn

    return deco


def preflight(name: str, kwargs: Mapping[str, Any]) -> str | None:
    """Run reward ``name``'s preflight check (if it has one): the line to log, or raises."""
    fn = _PREFLIGHT.get(name)
    return fn(kwargs) if fn is not None else None


class RewardErrorRateExceeded(RuntimeError):
    """More of a step's samples could not be scored than the configured maximum allows."""


def check_error_rate(errors: Mapping[str, int], non_finite: Mapping[str, int], first: Mapping[str, str],
                     n_samples: int, max_error_rate: float) -> None:
    """Raise RewardErrorRateExceeded naming the reward and its first error when a reward failed on
    more than ``max_error_rate`` of ``n_samples`` (errors and non-finite values both count)."""
    for name in errors:
        bad = errors.get(name, 0) + non_finite.get(name, 0)
        if n_samples and bad / n_samples > max_error_rate:
            msg = first.get(name) or "returned a non-finite value"
            raise RewardErrorRateExceeded(
                f"reward {name!r} could not score {bad} of {n_samples} samples (more than the allowed "
                f"{max_error_rate:g}); first error: {msg}")


def known() -> list[str]:
    """Registered reward names, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> RewardFn:
    """Resolve a registered name or a ``"package.module:function"`` plug-in path."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except ModuleNotFoundError as e:
            raise KeyError(f"cannot load reward plug-in {name!r}: {e} (is its directory on PYTHONPATH?)") from e
        except AttributeError as e:
            raise KeyError(f"cannot load reward plug-in {name!r}: {e}") from e
        except Exception as e:  # the plug-in's module itself fails to import (a syntax error, a raise at import)
            raise KeyError(f"cannot load reward plug-in {name!r}: importing {module_name} raised "
                           f"{type(e).__name__}: {e}") from e
        if not callable(obj):
            raise TypeError(f"reward plug-in {name!r} is not callable (got {type(obj).__name__})")
        return obj
    raise KeyError(f"unknown reward {name!r}; known rewards: {', '.join(known())} "
                   "(or use a 'package.module:function' plug-in path)")


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """One reward term: ``weight * fn(completion, example, **kwargs)``."""

    name: str
    weight: float = 1.0
    kwargs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RewardResult:
    """Scores for one batch. ``per_reward`` is unweighted; ``total`` is the weighted sum."""

    total: np.ndarray
    per_reward: dict[str, np.ndarray]
    errors: dict[str, int]
    non_finite: dict[str, int]
    first_error: dict[str, str] = dataclasses.field(default_factory=dict)  # per name, this batch's first

    def error_metrics(self) -> dict[str, int]:
        """``reward_errors/<name>`` (failed calls plus non-finite values) for every reward, zeros included."""
        return {f"reward_errors/{k}": int(self.errors.get(k, 0) + self.non_finite.get(k, 0))
                for k in dict.fromkeys([*self.errors, *self.non_finite])}


def _as_score(value: Any) -> float | None:
    """A finite float, or None for NaN/inf/non-numbers (strings are not numbers here)."""
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (numbers.Real, np.integer, np.floating)):
        try:
            f = float(value)
        except (TypeError, ValueError, OverflowError):
            return None
        return f if math.isfinite(f) else None
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "biuf":
        return _as_score(value.item())
    return None


class RewardComputer:
    """Scores batches of completions with a weighted set of rewards.

    Calls run in a thread pool (``max_workers``; 1 runs them inline) because the
    expensive rewards (code execution, math verification) wait on subprocesses with the
    GIL released. Output order always follows the input order. ``timeout_s`` bounds one
    call's wall time from when it starts running; a call past it scores 0 and counts as
    an error (a Python thread cannot be killed, so it is left to finish in the
    background — the built-in rewards bound their own work).
    """

    def __init__(self, specs: Sequence[RewardSpec], max_workers: int = 8, timeout_s: float = 60.0):
        names = [s.name for s in specs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate reward names {sorted(dup)}; per_reward is keyed by name")
        self.specs = list(specs)
        self.fns = [get(s.name) for s in self.specs]
        self.max_workers = max(1, int(max_workers))
        self.timeout_s = float(timeout_s)
        self._pool: cf.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._logged: set[str] = set()

    def __call__(self, completions: Sequence[str], examples: Sequence[Mapping]) -> RewardResult:
        if len(completions) != len(examples):
            raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
        n = len(completions)
        per_reward = {s.name: np.zeros(n, np.float32) for s in self.specs}
        errors = {s.name: 0 for s in self.specs}
        non_finite = {s.name: 0 for s in self.specs}
        jobs = [(j, i) for j in range(len(self.specs)) for i in range(n)]
        first: dict[str, str] = {}
        raw = self._run(jobs, completions, examples)
        for (j, i), (ok, value) in zip(jobs, raw):
            name = self.specs[j].name
            if not ok:
                errors[name] += 1
                first.setdefault(name, value)
                self._log_once(name, value)
                continue
            score = _as_score(value)
            if score is None:
                non_finite[name] += 1
                first.setdefault(name, f"returned {value!r:.80}, not a finite number")
            else:
                per_reward[name][i] = score
        total = np.zeros(n, np.float64)
        for s in self.specs:
            total += float(s.weight) * per_reward[s.name]
        return RewardResult(total.astype(np.float32), per_reward, errors, non_finite, first)

    def _call(self, j: int, completion: str, example: Mapping, started: list[float], slot: int):
        started[slot] = time.monotonic()
        try:
            return True, self.fns[j](completion, example, **self.specs[j].kwargs)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a broken reward must not stop training
            last = traceback.format_exception_only(type(e), e)[-1].strip()
            return False, last

    def _run(self, jobs, completions, examples) -> list[tuple[bool, Any]]:
        started = [0.0] * len(jobs)
        if self.max_workers == 1:
            return [self._call(j, completions[i], examples[i], started, k) for k, (j, i) in enumerate(jobs)]
        pool = self._get_pool()
        futures = [pool.submit(self._call, j, completions[i], examples[i], started, k)
                   for k, (j, i) in enumerate(jobs)]
        results: list[tuple[bool, Any] | None] = [None] * len(jobs)
        pending = set(range(len(jobs)))
        index = {f: k for k, f in enumerate(futures)}
        while pending:
            done, _ = cf.wait([futures[k] for k in pending], timeout=0.05, return_when=cf.FIRST_COMPLETED)
            for f in done:
                k = index[f]
                results[k] = f.result()
                pending.discard(k)
            now = time.monotonic()
            for k in list(pending):
                if started[k] and now - started[k] > self.timeout_s:
                    results[k] = (False, f"TimeoutError: reward call exceeded {self.timeout_s:g}s")
                    pending.discard(k)
        return results  # type: ignore[return-value]

    def _get_pool(self) -> cf.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = cf.ThreadPoolExecutor(self.max_workers, thread_name_prefix="reward")
            return self._pool

    def _log_once(self, name: str, message: str) -> None:
        with self._lock:
            if name in self._logged:
                return
            self._logged.add(name)
        log.warning("reward %r could not score a sample (counted in reward_errors/%s; further failures are "
                    "counted there, not logged): %s", name, name, message)

    def close(self) -> None:
        """Release the worker threads (calls still running are not waited for)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
