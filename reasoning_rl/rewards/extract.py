"""Pull the final answer (or program) out of a model completion.

Written with ``str.rfind`` and bounded scans rather than backtracking regexes over the
whole text: completions can be long and adversarial, and these run for every sample.
"""

from __future__ import annotations

import re
from typing import Any

_NUMBER = re.compile(
    r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+\b|\s*/\s*\d+(?:\.\d+)?)?|[-+]?\.\d+"
)
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)


def as_text(value: Any) -> str | None:
    """Best-effort str for untrusted input (bytes are decoded, other types rejected)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return None


def last_tag(text: str, tag: str) -> str | None:
    """Content of the last complete ``<tag>…</tag>`` pair, or None."""
    close = text.rfind(f"</{tag}>")
    if close < 0:
        return None
    start = text.rfind(f"<{tag}>", 0, close)
    if start < 0:
        return None
    return text[start + len(tag) + 2: close]


def last_boxed(text: str) -> str | None:
    """Content of the last well-formed ``\\boxed{…}`` (nested braces) or ``\\boxed 5``."""
    end = len(text)
    for _ in range(8):  # bounded: many unclosed "\boxed{" must not cost O(n^2)
        i = text.rfind("\\boxed", 0, end)
        if i < 0:
            return None
        j = i + len("\\boxed")
        k = j
        while k < len(text) and text[k] in " \t":
            k += 1
        if k < len(text) and text[k] == "{":
            depth = 0
            for pos in range(k, len(text)):
                c = text[pos]
                if c == "{" and text[pos - 1] != "\\":
                    depth += 1
                elif c == "}" and text[pos - 1] != "\\":
                    depth -= 1
                    if depth == 0:
                        return text[k + 1: pos]
        elif k > j and k < len(text):  # "\boxed 5": one token, up to whitespace or '$'
            m = re.match(r"[^\s$]+", text[k:])
            if m:
                return m.group(0)
        end = i  # malformed: try the previous one
    return None


def last_number(text: str) -> str | None:
    """The last number in ``text`` (int, decimal, ``a/b`` fraction; commas dropped)."""
    match = None
    for match in _NUMBER.finditer(text):
        pass
    if match is None:
        return None
    return re.sub(r"[\s,]", "", match.group(0))


def extract_answer(text: str, fallback: str = "last_number") -> str | None:
    """Final answer of a completion.

    Order: the content of the LAST ``<answer>…</answer>``; else of the last
    ``\\boxed{…}``; else ``fallback``: ``"last_number"`` (the last number in the text)
    or ``"none"``. Returns a stripped string or None; never raises on str input and
    returns None for non-text input.
    """
    text = as_text(text)
    if text is None:
        return None
    if fallback not in ("last_number", "none"):
        raise ValueError(f"fallback must be 'last_number' or 'none', got {fallback!r}")
    for found in (last_tag(text, "answer"), last_boxed(text)):
        if found is not None:
            return found.strip()
    if fallback == "last_number":
        return last_number(text)
    return None


def extract_program(text: str) -> str:
    """Program in a completion: ``<answer>`` content, else the last python fence, else all.

    A fence inside the ``<answer>`` block is unwrapped too.
    """
    text = as_text(text) or ""
    body = last_tag(text, "answer")
    if body is None:
        fences = _FENCE.findall(text)
        return fences[-1] if fences else text
    inner = _FENCE.findall(body)
    if inner:
        return inner[-1]
    bare = re.search(r"```[^\n]*\n(.*?)```", body, re.DOTALL)
    return bare.group(1) if bare else body
