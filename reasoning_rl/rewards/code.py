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
from .registry import register

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
    program's definitions). ``timeout_s`` is the wall-clock budget per test. Never raises
    (bad input scores 0); thread-safe; at most ``sandbox.max_concurrent()`` sandboxes
    run at once.
    """
    try:
        text = as_text(program)
        cases = _tests(tests)
        if not text or not text.strip() or not cases or len(text) > MAX_PROGRAM_CHARS:
            return 0.0
        verdicts = sandbox.run_tests(text, cases, float(timeout_s), limits=limits, backend=backend)
        return sum(verdicts) / len(verdicts)
    except Exception as e:  # noqa: BLE001 - a reward must never take training down
        log.warning("score_code failed: %r", e)
        return 0.0


@register("code")
def code_reward(completion: str, example: Mapping[str, Any], all_or_nothing: bool = False,
                timeout_s: float = 5.0, backend: str | None = None) -> float:
    """Runs the program in the completion against ``example["tests"]``.

    The program is the ``<answer>`` content if present, else the last ```python fence,
    else the whole completion. ``all_or_nothing``: 1.0 only if every test passes.
    """
    score = score_code(extract_program(completion), example.get("tests"), timeout_s, backend=backend)
    if all_or_nothing:
        return 1.0 if score == 1.0 else 0.0
    return score
