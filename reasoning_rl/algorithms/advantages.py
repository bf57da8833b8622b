"""Advantage estimators and reward shaping, registered by name. Pure jnp: usable on host or inside jit."""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

ADVANTAGES: dict[str, Callable] = {}


def register(name: str):
    def deco(fn):
        ADVANTAGES[name] = fn
        return fn

    return deco


@register("grpo")
def grpo_advantages(rewards, group_size: int, eps: float = 1e-6):
    """(r - mean_group) / (std_group + eps), std with Bessel's correction as in DeepSeekMath / TRL."""
    r = jnp.asarray(rewards, jnp.float32).reshape(-1, group_size)
    mean = r.mean(axis=1, keepdims=True)
    std = r.std(axis=1, ddof=1, keepdims=True) if group_size > 1 else jnp.zeros_like(mean)
    return ((r - mean) / (std + eps)).reshape(-1)


@register("drgrpo")
def drgrpo_advantages(rewards, group_size: int, eps: float = 1e-6):
    """Dr.GRPO: r - mean_group, no std scaling (which over-weights near-uniform groups)."""
    r = jnp.asarray(rewards, jnp.float32).reshape(-1, group_size)
    return (r - r.mean(axis=1, keepdims=True)).reshape(-1)


def compute_advantages(name: str, rewards, group_size: int):
    if name not in ADVANTAGES:
        raise KeyError(f"algorithm.advantage: unknown estimator {name!r} (known: {', '.join(ADVANTAGES)})")
    return ADVANTAGES[name](rewards, group_size)


def overlong_penalty(lengths, max_len: int, cache: int, penalty: float = 1.0):
    """DAPO soft overlong punishment: 0 up to max_len - cache, then linear down to -penalty at max_len,
    and -penalty beyond."""
    L = jnp.asarray(lengths, jnp.float32)
    start = max_len - cache
    ramp = (start - L) / max(cache, 1) * penalty
    return jnp.where(L <= start, 0.0, jnp.where(L <= max_len, ramp, -penalty))


def informative_groups(rewards, group_size: int):
    """DAPO dynamic sampling: True for groups whose rewards are not all equal (they carry a gradient)."""
    r = jnp.asarray(rewards).reshape(-1, group_size)
    return jnp.max(r, axis=1) > jnp.min(r, axis=1)
