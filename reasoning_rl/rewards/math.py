"""Math rewards: a fast exact ``accuracy`` and a symbolic ``math`` check via math-verify.

math-verify bounds its own time with ``signal.alarm``, which only works in the main
thread; rewards run in worker threads. So its timeouts are switched off and every check
runs in a lazily created, module-level, reused process pool ('spawn' context) instead:
a check past its timeout scores 0 and the pool (with the stuck worker) is replaced.
Plain numbers never reach sympy: they are compared exactly with ``fractions.Fraction``.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import re
import threading
from collections.abc import Mapping
from concurrent.futures.process import BrokenProcessPool
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from .extract import as_text, extract_answer
from .registry import register

log = logging.getLogger("reasoning_rl.rewards")

MAX_ANSWER_CHARS = 1000

_INT = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)"
_DEC = rf"{_INT}(?:\.\d*)?|[-+]?\.\d+"
_SCI = re.compile(rf"(?:{_DEC})[eE][-+]?\d{{1,4}}")
_PLAIN = re.compile(rf"(?:{_DEC})")
_FRAC = re.compile(rf"({_DEC})\s*/\s*({_DEC})")
_LATEX_FRAC = re.compile(rf"([-+]?)\\[dt]?frac\{{\s*({_DEC})\s*\}}\{{\s*({_DEC})\s*\}}")


def _clean(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s[1:-1].strip()
    return s.rstrip(".").strip()


def _decimal(s: str) -> Fraction:
    return Fraction(Decimal(s.replace(",", "")))


def parse_number(text: str) -> Fraction | None:
    """Exact value of a plain number: int, decimal, ``a/b``, ``\\frac{a}{b}``, ``1e3``, ``1,000``."""
    s = _clean(text)
    if len(s) > 200:
        return None
    try:
        if _PLAIN.fullmatch(s) or _SCI.fullmatch(s):
            return _decimal(s)
        m = _FRAC.fullmatch(s)
        if m:
            den = _decimal(m.group(2))
            return _decimal(m.group(1)) / den if den else None
        m = _LATEX_FRAC.fullmatch(s)
        if m:
            den = _decimal(m.group(3))
            val = _decimal(m.group(2)) / den if den else None
            return -val if val is not None and m.group(1) == "-" else val
    except (InvalidOperation, ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


def _canonical(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def answers_match_exact(answer: str | None, reference: str | None) -> bool:
    """Numeric equality when both are plain numbers, else exact (stripped) string equality."""
    if answer is None or reference is None:
        return False
    a, r = parse_number(answer), parse_number(reference)
    if a is not None and r is not None:
        return a == r
    return _clean(answer) == _clean(reference) and _clean(answer) != ""


@register("accuracy")
def accuracy(completion: str, example: Mapping[str, Any]) -> float:
    """1.0 iff the extracted final answer equals ``example["answer"]`` (no sympy: fast)."""
    return 1.0 if answers_match_exact(extract_answer(completion), as_text(example.get("answer"))) else 0.0


# --------------------------------------------------------------------------- math-verify pool
_pool: cf.ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _worker_init() -> None:
    import resource
    import signal

    # Ctrl-C reaches the whole foreground process group: the trainer finishes its step (and needs these
    # workers for it), so the workers leave SIGINT to it
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    limit = 4 << 30  # a runaway sympy power must not eat the host
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    import math_verify  # noqa: F401 - import once per worker, not per check


def _mv_parse(s: str) -> list:
    from math_verify import parse

    tries = [s] if ("$" in s or "\\boxed" in s) else [f"${s}$", s]
    for t in tries:
        parsed = parse(t, parsing_timeout=None)
        if parsed:
            return parsed
    return []


def _verify_job(reference: str, answer: str) -> bool:
    """Runs in a pool worker."""
    from math_verify import verify

    gold, pred = _mv_parse(reference), _mv_parse(answer)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=None))


def _warm() -> bool:
    return True


def pool_size() -> int:
    """Worker processes for math-verify ($REASONING_RL_MATH_WORKERS, default min(4, cores))."""
    env = os.environ.get("REASONING_RL_MATH_WORKERS")
    return max(1, int(env)) if env else max(1, min(4, os.cpu_count() or 1))


def _get_pool() -> cf.ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            pool = cf.ProcessPoolExecutor(pool_size(), mp_context=multiprocessing.get_context("spawn"),
                                          initializer=_worker_init)
            # Start (and import sympy in) the workers now, so that start-up time is not
            # charged to the first checks' timeouts.
            for f in [pool.submit(_warm) for _ in range(pool_size())]:
                f.result(timeout=300)
            _pool = pool
        return _pool


def _replace_pool(old: cf.ProcessPoolExecutor) -> None:
    """Drop ``old`` (if still current) and kill its workers, stuck ones included."""
    global _pool
    with _pool_lock:
        if _pool is old:
            _pool = None
    for proc in list(getattr(old, "_processes", {}).values()):
        try:
            proc.kill()
        except Exception:  # noqa: BLE001, S110 - already gone
            pass
    old.shutdown(wait=False, cancel_futures=True)


def shutdown_pool() -> None:
    """Stop the math-verify workers (a later check starts a new pool)."""
    with _pool_lock:
        pool = _pool
    if pool is not None:
        _replace_pool(pool)


def verify_equivalent(reference: str, answer: str, timeout_s: float = 5.0) -> bool:
    """math-verify equivalence of two answer strings, bounded by ``timeout_s`` (False on timeout)."""
    for _ in range(2):  # one retry when another check's timeout replaced the pool under us
        pool = _get_pool()
        try:
            future = pool.submit(_verify_job, reference, answer)
        except (BrokenProcessPool, RuntimeError):
            _replace_pool(pool)
            continue
        try:
            return bool(future.result(timeout=timeout_s))
        except cf.TimeoutError:
            log.debug("math-verify check timed out after %ss; replacing the worker pool", timeout_s)
            _replace_pool(pool)
            return False
        except (BrokenProcessPool, cf.CancelledError):
            _replace_pool(pool)
            continue
        except Exception:  # noqa: BLE001 - sympy errors mean "not verified"
            return False
    return False


def score_math(completion: str, reference: str, timeout_s: float = 5.0) -> float:
    """1.0 if the completion's final answer is mathematically equivalent to ``reference``.

    The answer is taken from the last ``<answer>`` block, else the last ``\\boxed{}``,
    else the last number. Plain numbers are compared exactly here; anything else
    (LaTeX, intervals, sets, expressions) by math-verify in a worker process, bounded by
    ``timeout_s``. Never raises; thread-safe.
    """
    try:
        answer, ref = extract_answer(completion), as_text(reference)
        if not answer or ref is None or not ref.strip():
            return 0.0
        a, r = parse_number(answer), parse_number(ref)
        if a is not None and r is not None:
            return 1.0 if a == r else 0.0
        if len(answer) > MAX_ANSWER_CHARS or len(ref) > MAX_ANSWER_CHARS:
            return 0.0  # no real final answer is this long; sympy could crawl on it
        # math-verify reads "1e3" as 1*e*3: hand it plain numbers in canonical form
        if a is not None:
            answer = _canonical(a)
        if r is not None:
            ref = _canonical(r)
        return 1.0 if verify_equivalent(ref, answer, timeout_s) else 0.0
    except Exception as e:  # noqa: BLE001 - a reward must never take training down
        log.debug("score_math failed: %r", e)
        return 0.0


@register("math")
def math_reward(completion: str, example: Mapping[str, Any], timeout_s: float = 5.0) -> float:
    """Symbolic equivalence of the extracted answer with ``example["answer"]`` (math-verify)."""
    return score_math(completion, example.get("answer"), timeout_s=timeout_s)
