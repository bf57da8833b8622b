"""Advantage estimators and reward shaping, registered by name. Pure jnp: usable on host or inside jit.

Every estimator takes ``(rewards [B], group_size, mask=None, token_rewards=None)``. Outcome estimators (GRPO,
Dr.GRPO, RLOO) return one advantage per row [B]; token-level ones (REINFORCE++, and GAE for PPO in
``gae``) return [B, T] over the completion tokens, where ``token_rewards`` [B, T] (e.g. ``-beta * KL`` per
token) is added to the outcome reward, which lands on each row's last completion token.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

ADVANTAGES: dict[str, Callable] = {}


def register(name: str):
    def deco(fn):
        ADVANTAGES[name] = fn
        return fn

    return deco


@register("grpo")
def grpo_advantages(rewards, group_size: int, eps: float = 1e-6, **_):
    """(r - mean_group) / (std_group + eps), std with Bessel's correction as in DeepSeekMath / TRL."""
    r = jnp.asarray(rewards, jnp.float32).reshape(-1, group_size)
    mean = r.mean(axis=1, keepdims=True)
    std = r.std(axis=1, ddof=1, keepdims=True) if group_size > 1 else jnp.zeros_like(mean)
    return ((r - mean) / (std + eps)).reshape(-1)


@register("group-mean-batch-std")
def group_mean_batch_std_advantages(rewards, group_size: int, mask=None, eps: float = 1e-6, **_):
    """(r - mean_group) / (std_batch + eps): the group's mean as baseline, the whole batch's reward std as
    scale (Liu et al. 2025's "Lite PPO" normalisation; TRL ``scale_rewards="batch"``). A group whose rewards
    barely differ is not blown up by its own tiny std, as it is under ``grpo``. With ``mask`` [B, T], rows
    without completion tokens (dynamic sampling's fill groups) are left out of the batch std."""
    r = jnp.asarray(rewards, jnp.float32)
    w = jnp.ones_like(r) if mask is None else jnp.any(jnp.asarray(mask, bool), axis=1).astype(jnp.float32)
    n = jnp.sum(w)
    mean = jnp.sum(r * w) / jnp.maximum(n, 1.0)
    std = jnp.sqrt(jnp.sum(w * (r - mean) ** 2) / jnp.maximum(n - 1.0, 1.0))  # Bessel's correction, as grpo
    g = r.reshape(-1, group_size)
    return ((g - g.mean(axis=1, keepdims=True)).reshape(-1)) / (std + eps)


@register("drgrpo")
def drgrpo_advantages(rewards, group_size: int, eps: float = 1e-6, **_):
    """Dr.GRPO: r - mean_group, no std scaling (which over-weights near-uniform groups)."""
    r = jnp.asarray(rewards, jnp.float32).reshape(-1, group_size)
    return (r - r.mean(axis=1, keepdims=True)).reshape(-1)


@register("rloo")
def rloo_advantages(rewards, group_size: int, **_):
    """RLOO (Ahmadian et al. 2024): r_i minus the mean of the *other* G - 1 rewards of its group, an unbiased
    baseline (it does not depend on the row's own sample) and no std scaling; needs G >= 2."""
    if group_size < 2:
        raise ValueError("rloo needs group_size >= 2 (a leave-one-out baseline needs another sample)")
    r = jnp.asarray(rewards, jnp.float32).reshape(-1, group_size)
    baseline = (r.sum(axis=1, keepdims=True) - r) / (group_size - 1)
    return (r - baseline).reshape(-1)


def token_rewards_with_outcome(rewards, mask, token_rewards=None):
    """[B, T] per-token rewards: ``token_rewards`` (0 if None) plus each row's outcome reward on its last
    completion token (a row with no tokens gets nothing)."""
    m = jnp.asarray(mask, bool)
    r = jnp.asarray(rewards, jnp.float32)
    n = m.sum(axis=1)
    last = jnp.arange(m.shape[1])[None, :] == (n - 1)[:, None]
    out = jnp.where(last & m, r[:, None], 0.0)
    if token_rewards is not None:
        out = out + jnp.where(m, jnp.asarray(token_rewards, jnp.float32), 0.0)
    return out


def masked_whiten(x, mask, eps: float = 1e-8):
    """(x - mean) / std over the valid tokens of the whole batch (population variance, as OpenRLHF); 0 at
    masked positions."""
    m = jnp.asarray(mask, jnp.float32)
    n = jnp.maximum(m.sum(), 1.0)
    mean = (x * m).sum() / n
    var = (((x - mean) ** 2) * m).sum() / n
    return jnp.where(m > 0, (x - mean) * jax.lax.rsqrt(jnp.maximum(var, eps)), 0.0)


@register("reinforce++")
def reinforce_pp_advantages(rewards, group_size: int, mask=None, token_rewards=None, **_):
    """REINFORCE++ (Hu 2025): per-token return G_t = sum_{s >= t} r_s of the token rewards (the KL penalty
    ``token_rewards`` when the KL goes in the reward, plus the outcome reward on the last token), normalised
    over all valid tokens of the batch: a global baseline and scale, no critic, no per-group statistics.

    Without a mask the rows are single outcomes and this is the batch-normalised reward [B]."""
    if mask is None:
        r = jnp.asarray(rewards, jnp.float32)
        return masked_whiten(r, jnp.ones_like(r))
    m = jnp.asarray(mask, bool)
    tr = token_rewards_with_outcome(rewards, m, token_rewards)
    returns = jnp.flip(jnp.cumsum(jnp.flip(tr, axis=1), axis=1), axis=1)  # gamma = 1
    return masked_whiten(returns, m)


def gae(token_rewards, values, mask, gamma: float, lam: float):
    """Generalised advantage estimation over ragged rows: ``mask`` [B, T] marks each row's completion tokens
    (a prefix of the row; rows end at different lengths). delta_t = r_t + gamma V_{t+1} - V_t with V = 0
    after a row's last token; A_t = delta_t + gamma lam A_{t+1}. Returns (advantages, returns = A + V), 0 on
    masked positions."""
    m = jnp.asarray(mask, jnp.float32)
    r = jnp.asarray(token_rewards, jnp.float32) * m
    v = jnp.asarray(values, jnp.float32) * m
    v_next = jnp.concatenate([v[:, 1:], jnp.zeros_like(v[:, :1])], axis=1)
    m_next = jnp.concatenate([m[:, 1:], jnp.zeros_like(m[:, :1])], axis=1)
    delta = r + gamma * v_next * m_next - v

    def back(carry, xs):
        d, mn = xs
        a = d + gamma * lam * mn * carry
        return a, a

    _, adv = jax.lax.scan(back, jnp.zeros(r.shape[0], jnp.float32), (delta.T, m_next.T), reverse=True)
    adv = adv.T * m
    return adv, (adv + v) * m


def compute_advantages(name: str, rewards, group_size: int, mask=None, token_rewards=None):
    if name not in ADVANTAGES:
        raise KeyError(f"algorithm.advantage: unknown estimator {name!r} (known: {', '.join(ADVANTAGES)})")
    return ADVANTAGES[name](rewards, group_size, mask=mask, token_rewards=token_rewards)


TOKEN_LEVEL = ("reinforce++",)  # estimators returning [B, T] advantages (and taking a KL penalty per token)


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
