"""Plug-in rewards for end-to-end tests of reward-error handling (referenced as ``reward_plugins:NAME``)."""

import zlib


def half_fail(completion: str, example: dict) -> float:
    """Raises for about half the prompts (chosen by a stable hash of the prompt), else scores 1."""
    if zlib.crc32(example["prompt"].encode()) % 2:
        raise RuntimeError("grader backend unreachable")
    return 1.0
