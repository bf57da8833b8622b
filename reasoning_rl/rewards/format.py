"""The ``format`` reward: did the model answer in the trained ``<think>``/``<answer>`` layout?

Strict layout (1.0): optional leading whitespace, ``<think>…</think>``, only whitespace,
``<answer>…</answer>``, then nothing but whitespace (and optionally an end-of-sequence
marker such as ``</s>`` that a decoder may have left in the text). Each tag exactly once.

The tags are options (``kwargs`` of the reward): ``think`` names the thinking block's opening and closing tags
(EXAONE Deep thinks in ``<thought>``), ``answer`` the answer's, or null for the layout reasoning models write
without answer tags (DeepSeek-R1, Qwen3, EXAONE Deep): the thinking block, then a non-empty answer. The held-out
evaluation and rejection sampling score format with the same options as the stage's ``format`` reward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .extract import as_text
from .registry import register, register_preflight

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
THINK, ANSWER = TAGS[:2], TAGS[2:]
EOS_MARKERS = ("</s>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<eos>")


def _strip_eos(text: str, eos: Sequence[str]) -> str:
    text = text.rstrip()
    changed = True
    while changed:
        changed = False
        for marker in eos:
            if marker and text.endswith(marker):
                text = text[: -len(marker)].rstrip()
                changed = True
    return text


def format_score(completion: str, partial: bool = False, eos: Sequence[str] = EOS_MARKERS,
                 think: Sequence[str] = THINK, answer: Sequence[str] | None = ANSWER) -> float:
    """1.0 for the strict layout; with ``partial``, 0.25 per tag present once and in order (max 0.75).
    ``answer=None``: the layout without answer tags, the thinking block followed by a non-empty answer."""
    text = as_text(completion)
    if text is None:
        return 0.0
    text = _strip_eos(text, eos)
    tags = tuple(think) + (tuple(answer) if answer else ())
    pos = [text.find(t) if text.count(t) == 1 else -1 for t in tags]
    if min(pos) >= 0 and pos == sorted(pos):
        think_close = pos[1] + len(tags[1])
        if not text[:pos[0]].strip():
            if not answer and text[think_close:].strip():
                return 1.0
            if answer and not text[think_close:pos[2]].strip() and not text[pos[3] + len(tags[3]):].strip():
                return 1.0
    if not partial:
        return 0.0
    credit, last = 0, -1
    for p in pos:
        if p > last:
            credit, last = credit + 1, p
    return min(0.25 * credit, 0.75)


def opens_think(prompt: Any, tag: str = THINK[0]) -> bool:
    """The prompt ends inside an open thinking block (``tag``): chat templates of reasoning models (DeepSeek-R1
    and its distilled models) end their generation prompt with ``<think>\n``, so the completion starts with the
    thinking itself and holds only the closing tag."""
    return isinstance(prompt, str) and prompt.rstrip().endswith(tag)


@register("format")
def format_reward(completion: str, example: Mapping[str, Any], partial: bool = False,
                  eos: Sequence[str] = EOS_MARKERS, think: Sequence[str] = THINK,
                  answer: Sequence[str] | None = ANSWER) -> float:
    """Layout reward. A prompt that opened the thinking block (``opens_think``) counts as the completion's start."""
    text = as_text(completion)
    if text is not None and opens_think(example.get("prompt") if isinstance(example, Mapping) else None, think[0]):
        completion = think[0] + text
    return format_score(completion, partial=partial, eos=eos, think=think, answer=answer)


@register_preflight("format")
def _check_tags(kwargs: Mapping[str, Any]) -> None:
    """``think`` must be two tags, ``answer`` two tags or null, all non-empty and distinct."""
    for name, allow_none in (("think", False), ("answer", True)):
        if name not in kwargs or (allow_none and kwargs[name] is None):
            continue
        v = kwargs[name]
        if (not isinstance(v, (list, tuple)) or len(v) != 2 or not all(isinstance(t, str) and t for t in v)
                or v[0] == v[1]):
            raise ValueError(f"kwargs.{name}: expected two different non-empty tags (opening, closing)"
                             f"{' or null' if allow_none else ''}, got {v!r}")
    tags = list(kwargs.get("think", THINK)) + list(kwargs.get("answer", ANSWER) or [])
    if len(set(tags)) != len(tags):
        raise ValueError(f"kwargs: the thinking and answer tags must all differ, got {tags}")
    return None


def format_fn_for(rewards: Sequence[Any]) -> Callable[[str, Mapping[str, Any]], float]:
    """The ``format`` reward with the options a stage's (or a task's) ``format`` reward is given: what the held-out
    evaluation and rejection sampling score format with, so their figure is the trained one."""
    kw = next((dict(r.kwargs) for r in rewards
               if r.name == "format" and getattr(r, "kind", "function") == "function"), {})
    return functools.partial(format_reward, **kw) if kw else format_reward
