"""Rule-checked rewards for the ``instruct`` task, registered with ``reasoning_rl.rewards``.

Each reads the response (the ``<answer>`` content, else the whole completion) and the constraints carried
by the example (``example["constraints"]``: ``items``, ``keywords``, ``separator``). Keeping one reward per
rule lets a multi-task run see which rule a policy breaks; ``instruct`` is their conjunction and is the
task's correctness signal (pass@k, accuracy).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reasoning_rl.rewards import register
from reasoning_rl.rewards.extract import as_text, last_tag

SEPARATORS = ("-", ";", "|", ",")


def response(completion: Any) -> str | None:
    """The part of a completion that answers the instruction."""
    text = as_text(completion)
    if text is None:
        return None
    body = last_tag(text, "answer")
    return (body if body is not None else text).strip()


def _items(text: str, sep: str) -> list[str]:
    return [x.strip() for x in text.split(sep)] if text else []


def _constraints(example: Mapping[str, Any]) -> Mapping[str, Any]:
    c = example.get("constraints")
    if not isinstance(c, Mapping):
        raise TypeError("example has no 'constraints' mapping (is this an instruct example?)")
    return c


@register("instruct_length")
def length_reward(completion: str, example: Mapping[str, Any]) -> float:
    """1.0 iff the response has exactly the requested number of items."""
    c, text = _constraints(example), response(completion)
    return float(text is not None and len(_items(text, c["separator"])) == int(c["items"]))


@register("instruct_keywords")
def keywords_reward(completion: str, example: Mapping[str, Any]) -> float:
    """Fraction of the required keywords that appear as items of the response."""
    c, text = _constraints(example), response(completion)
    kws = list(c["keywords"])
    if text is None or not kws:
        return 0.0
    items = set(_items(text, c["separator"]))
    return sum(k in items for k in kws) / len(kws)


@register("instruct_format")
def format_reward(completion: str, example: Mapping[str, Any]) -> float:
    """1.0 iff the response is single letters joined by the requested separator and no other one."""
    c, text = _constraints(example), response(completion)
    sep = c["separator"]
    if not text or any(s in text for s in SEPARATORS if s != sep):
        return 0.0
    items = _items(text, sep)
    return float(all(len(x) == 1 and x.isalpha() and x.islower() for x in items))


@register("instruct")
def instruct_reward(completion: str, example: Mapping[str, Any]) -> float:
    """1.0 iff every rule holds (length, keywords, format)."""
    return float(length_reward(completion, example) == 1.0 and keywords_reward(completion, example) == 1.0
                 and format_reward(completion, example) == 1.0)
