"""The ``format`` reward: did the model answer in the trained ``<think>``/``<answer>`` layout?

Strict layout (1.0): optional leading whitespace, ``<think>…</think>``, only whitespace,
``<answer>…</answer>``, then nothing but whitespace (and optionally an end-of-sequence
marker such as ``</s>`` that a decoder may have left in the text). Each tag exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .extract import as_text
from .registry import register

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
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


def format_score(completion: str, partial: bool = False, eos: Sequence[str] = EOS_MARKERS) -> float:
    """1.0 for the strict layout; with ``partial``, 0.25 per tag present once and in order (max 0.75)."""
    text = as_text(completion)
    if text is None:
        return 0.0
    text = _strip_eos(text, eos)
    pos = [text.find(t) if text.count(t) == 1 else -1 for t in TAGS]
    if min(pos) >= 0 and pos == sorted(pos):
        think_open, think_close, ans_open, ans_close = pos
        if (not text[:think_open].strip()
                and not text[think_close + len("</think>"): ans_open].strip()
                and not text[ans_close + len("</answer>"):].strip()):
            return 1.0
    if not partial:
        return 0.0
    credit, last = 0, -1
    for p in pos:
        if p > last:
            credit, last = credit + 1, p
    return min(0.25 * credit, 0.75)


def opens_think(prompt: Any) -> bool:
    """The prompt ends inside an open ``<think>`` block: chat templates of reasoning models (DeepSeek-R1 and
    its distilled models) end their generation prompt with ``<think>\n``, so the completion starts with the
    thinking itself and holds only the closing tag."""
    return isinstance(prompt, str) and prompt.rstrip().endswith("<think>")


@register("format")
def format_reward(completion: str, example: Mapping[str, Any], partial: bool = False,
                  eos: Sequence[str] = EOS_MARKERS) -> float:
    """Layout reward. A prompt that opened ``<think>`` (``opens_think``) counts as the completion's start."""
    text = as_text(completion)
    if text is not None and opens_think(example.get("prompt") if isinstance(example, Mapping) else None):
        completion = "<think>" + text
    return format_score(completion, partial=partial, eos=eos)
