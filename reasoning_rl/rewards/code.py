"""The ``code`` reward: fraction of unit tests a generated program passes, in a sandbox.

See ``sandbox.py`` for the isolation and ``_runner.py`` for why a candidate cannot mark
its own tests as passed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from . import sandbox
from .extract import as_text, extract_program
from .registry import register, register_preflight

log = logging.getLogger("reasoning_rl.rewards")

MAX_PROGRAM_CHARS = 1 << 20


def _tests(tests: Any) -> list[Mapping[str, Any]] | None:
    if isinstance(tests, (str, bytes)):
        try:
            tests = json.loads(tests)
        except ValueError:
            return None
    if isinstance(tests, Mapping):
        tests = [tests]
    if not isinstance(tests, (list, tuple)):
        return None
    return list(tests)


def score_code(program: str, tests: list[dict], timeout_s: float = 5.0, *, backend: str | None = None,
               limits: sandbox.Limits | None = None) -> float:
    """Fraction in [0, 1] of ``tests`` that ``program`` passes, run in the sandbox.

    ``tests``: ``{"stdin": str, "stdout": str}`` (program run as a script, stdout compared
    whitespace-insensitively) or ``{"assert": str}`` (test code evaluated against the
    program's definitions). ``timeout_s`` is the wall-clock budget per test. A program that
    is empty, too long or not text scores 0, and so do tests that are not a list of such
    mappings (counted as failed tests). Raises ``sandbox.SandboxUnavailable`` when no backend
    isolates here and ``sandbox.SandboxError`` when the sandbox fails for a reason of the
    machine: a score that was not computed is never reported as 0. Thread-safe; at most
    ``sandbox.max_concurrent()`` sandboxes run at once.
    """
    text = as_text(program)
    cases = _tests(tests)
    if not text or not text.strip() or not cases or len(text) > MAX_PROGRAM_CHARS:
        return 0.0
    verdicts = sandbox.run_tests(text, cases, float(timeout_s), limits=limits, backend=backend)
    return sum(verdicts) / len(verdicts)


@register("code")
def code_reward(completion: str, example: Mapping[str, Any], all_or_nothing: bool = False,
                timeout_s: float = 5.0, sandbox: str | None = None, backend: str | None = None) -> float:
    """Runs the program in the completion against ``example["tests"]``.

    The program is the ``<answer>`` content if present, else the last ```python fence,
    else the whole completion. ``all_or_nothing``: 1.0 only if every test passes.
    ``sandbox``: ``auto`` (default), ``bwrap``, ``fallback`` or ``none-unsafe`` (see
    ``reasoning_rl.rewards.sandbox``); ``backend`` is its older name.
    """
    score = score_code(extract_program(completion), example.get("tests"), timeout_s, backend=sandbox or backend)
    if all_or_nothing:
        return 1.0 if score == 1.0 else 0.0
    return score


@register_preflight("code")
def preflight(kwargs: Mapping[str, Any]) -> str:
    """Check before any compute that the configured sandbox isolates here; returns the line to log.

    Raises ``sandbox.SandboxUnavailable`` (cause and fix in one line) or ValueError (unknown name).
    """
    return sandbox.describe_backend(kwargs.get("sandbox") or kwargs.get("backend"))
