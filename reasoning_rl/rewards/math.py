"""Math rewards: a fast exact ``accuracy`` and a symbolic ``math`` check via math-verify.

math-verify bounds its own time with ``signal.alarm``, which only works in the main
thread; rewards run in worker threads. So its timeouts are switched off and every check
runs in one of a few lazily started, reused worker processes (``_mathworker.py``, plain
subprocesses rather than multiprocessing, which would re-import the caller's main module):
a check past its timeout scores 0 and its stuck worker is killed and replaced. Workers that
cannot start, or keep dying, raise ``MathVerifyUnavailable`` at once: counted as reward
errors, never scored 0.
Plain numbers never reach sympy: they are compared exactly with ``fractions.Fraction``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
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


# --------------------------------------------------------------------------- math-verify workers
class MathVerifyUnavailable(RuntimeError):
    """math-verify workers cannot start or keep dying: a reward that was not computed (never a 0)."""


WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_mathworker.py")
_LOADER = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"
START_TIMEOUT_S = 120.0  # importing sympy on a loaded machine
_RETRY_AFTER_S = 30.0  # after a failed start, calls fail at once for this long


class _Worker:
    """One math-verify child process (see ``_mathworker.py``), used by one thread at a time."""

    def __init__(self) -> None:
        # -P: nothing of the caller's directory on sys.path (a user's math.py must not shadow the stdlib).
        self.proc = subprocess.Popen([sys.executable, "-P", "-c", _LOADER, WORKER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True)
        self.buf = b""
        line = self._readline(time.monotonic() + START_TIMEOUT_S)
        if line != b"ready":
            err = self._stderr_tail()
            self.kill()
            why = "timed out" if line is None else "exited" if line == b"" else f"said {line[:80]!r}"
            raise MathVerifyUnavailable(f"a math-verify worker could not start ({why}){': ' + err if err else ''}")

    def _readline(self, deadline: float) -> bytes | None:
        """One line (without newline); b"" at EOF; None past ``deadline``."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return b""
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def _stderr_tail(self) -> str:
        try:
            if self.proc.poll() is None:
                return ""
            text = self.proc.stderr.read().decode("utf-8", "replace").strip().splitlines()
            return text[-1][:300] if text else ""
        except (OSError, ValueError):
            return ""

    def check(self, reference: str, answer: str, timeout_s: float) -> bool | None:
        """True/False; None on timeout (the worker is then killed). Raises OSError if the worker died."""
        self.proc.stdin.write((json.dumps({"ref": reference, "ans": answer}) + "\n").encode())
        self.proc.stdin.flush()
        line = self._readline(time.monotonic() + timeout_s)
        if line is None:
            self.kill()
            return None
        if line not in (b"0", b"1"):
            raise OSError(f"math-verify worker died ({self._stderr_tail() or 'no message'})")
        return line == b"1"

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass


class _Pool:
    """At most ``pool_size()`` workers, started lazily, each lent to one check at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: list[_Worker] = []
        self.slots = threading.BoundedSemaphore(pool_size())
        self.failed_at = -1e9
        self.failure = ""

    def _take(self) -> _Worker:
        with self.lock:
            if self.idle:
                return self.idle.pop()
            if time.monotonic() - self.failed_at < _RETRY_AFTER_S:
                raise MathVerifyUnavailable(self.failure)
        try:
            return _Worker()
        except (OSError, MathVerifyUnavailable) as e:
            with self.lock:
                self.failed_at, self.failure = time.monotonic(), str(e)
            raise MathVerifyUnavailable(str(e)) from None

    def check(self, reference: str, answer: str, timeout_s: float) -> bool:
        with self.slots:
            for attempt in range(2):  # a worker that died (e.g. killed by the OOM killer) is replaced once
                worker = self._take()
                try:
                    ok = worker.check(reference, answer, timeout_s)
                except (OSError, ValueError) as e:
                    worker.kill()
                    if attempt:
                        raise MathVerifyUnavailable(f"math-verify workers keep dying: {e}") from None
                    continue
                if ok is None:  # past its timeout: the worker was killed, the answer scores 0
                    log.debug("math-verify check timed out after %ss", timeout_s)
                    return False
                with self.lock:
                    self.idle.append(worker)
                return ok
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for w in idle:
            w.kill()


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def pool_size() -> int:
    """Worker processes for math-verify ($REASONING_RL_MATH_WORKERS, default min(4, cores))."""
    env = os.environ.get("REASONING_RL_MATH_WORKERS")
    return max(1, int(env)) if env else max(1, min(4, os.cpu_count() or 1))


def _get_pool() -> _Pool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = _Pool()
        return _pool


def shutdown_pool() -> None:
    """Stop the math-verify workers (a later check starts new ones)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.close()


atexit.register(shutdown_pool)


def verify_equivalent(reference: str, answer: str, timeout_s: float = 5.0) -> bool:
    """math-verify equivalence of two answer strings, bounded by ``timeout_s`` (False on timeout).

    Raises MathVerifyUnavailable when no worker can start or workers keep dying: that check
    was not computed, and must not be mistaken for a wrong answer.
    """
    return _get_pool().check(reference, answer, timeout_s)


def score_math(completion: str, reference: str, timeout_s: float = 5.0) -> float:
    """1.0 if the completion's final answer is mathematically equivalent to ``reference``.

    The answer is taken from the last ``<answer>`` block, else the last ``\\boxed{}``,
    else the last number. Plain numbers are compared exactly here; anything else
    (LaTeX, intervals, sets, expressions) by math-verify in a worker process, bounded by
    ``timeout_s`` (an answer whose check runs past it scores 0). Bad input scores 0; raises
    ``MathVerifyUnavailable`` only when the check could not be run at all (its workers cannot
    start or keep dying). Thread-safe; callable from scripts without a main guard.
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
    except MathVerifyUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 - garbage input is a wrong answer, not an error
        log.debug("score_math failed: %r", e)
        return 0.0


@register("math")
def math_reward(completion: str, example: Mapping[str, Any], timeout_s: float = 5.0) -> float:
    """Symbolic equivalence of the extracted answer with ``example["answer"]`` (math-verify)."""
    return score_math(completion, example.get("answer"), timeout_s=timeout_s)
