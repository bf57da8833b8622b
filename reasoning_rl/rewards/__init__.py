"""Verifiable rewards for RL: answer accuracy, math equivalence, output format, code tests.

Reward functions have the signature ``fn(completion: str, example: Mapping) -> float``
and are registered by name (``"accuracy"``, ``"math"``, ``"format"``, ``"code"``); the
trainer combines them with ``RewardComputer([RewardSpec(name, weight, kwargs), ...])``.
Plug-ins are referenced as ``"package.module:function"``.

Public entry points:

* ``score_math(completion, reference)`` -> 1.0 / 0.0: the completion's final answer
  (``<answer>``, else ``\\boxed{}``, else the last number) is mathematically equivalent
  to ``reference`` (exact for plain numbers, math-verify otherwise, time-bounded).
* ``score_code(program, tests, timeout_s=5.0)`` -> fraction of tests passed, with the
  program isolated by ``reasoning_rl.rewards.sandbox``.

Both never raise and are safe to call from many threads.
"""

from . import code as _code
from . import format as _format
from . import math as _math
from .code import score_code
from .extract import extract_answer, extract_program
from .math import score_math
from .registry import RewardComputer, RewardResult, RewardSpec, get, known, register

__all__ = [
    "RewardComputer",
    "RewardResult",
    "RewardSpec",
    "extract_answer",
    "extract_program",
    "get",
    "known",
    "register",
    "score_code",
    "score_math",
]

del _code, _format, _math
