"""Policy-gradient losses, registered by name, each returning a ``(sum, count)`` pair.

Returning the unnormalised sum and its count (tokens or sequences, depending on the aggregation) lets the
step divide once by the *global* count, so the gradient is identical however the batch is split into
micro-batches or across devices.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

LOSSES: dict[str, Callable] = {}


def register(name: str):
    def deco(fn):
        LOSSES[name] = fn
        return fn

    return deco


class LossInputs(NamedTuple):
    logp: jax.Array  # [B, T] current policy log-probs of the sampled tokens
    old_logp: jax.Array  # [B, T] behaviour policy log-probs
    ref_logp: jax.Array | None  # [B, T] reference log-probs (None when beta == 0)
    adv: jax.Array  # [B] advantages per row, or [B, T] per token (REINFORCE++, PPO's GAE)
    mask: jax.Array  # [B, T] completion mask
    # [B, T] off-policy correction of stale rollouts: pi_prox / pi_behaviour per token, already truncated or
    # masked (see ``off_policy_weights``); None: on-policy
    weight: jax.Array | None = None


def kl_estimate(logp, ref_logp, kind: str):
    """Per-token estimates of KL(pi || ref) from samples of pi (Schulman's k1/k2/k3)."""
    log_r = ref_logp - logp  # log(ref/pi)
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r**2
    if kind == "k3":
        return jnp.exp(log_r) - log_r - 1.0
    raise KeyError(f"algorithm.kl_estimator: unknown estimator {kind!r}")


def aggregate(per_token, mask, mode: str, budget: int | None = None):
    """Token losses [B, T] → (sum, count) for the aggregation ``mode``. ``budget``: the generation budget
    Dr.GRPO divides by (None: T; a rollout batch trimmed to its longest completion is narrower than that)."""
    m = mask.astype(jnp.float32)
    if mode == "token-mean":
        return jnp.sum(per_token * m), jnp.sum(m)
    if mode == "seq-mean-token-mean":
        per_seq = jnp.sum(per_token * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
        return jnp.sum(per_seq), jnp.asarray(per_token.shape[0], jnp.float32)
    if mode == "seq-mean-token-sum-norm":  # Dr.GRPO: divide by the (constant) generation budget
        per_seq = jnp.sum(per_token * m, axis=1) / (budget or per_token.shape[1])
        return jnp.sum(per_seq), jnp.asarray(per_token.shape[0], jnp.float32)
    raise KeyError(f"algorithm.aggregation: unknown mode {mode!r}")


def _metrics(x: LossInputs, clipped, kl):
    m = x.mask.astype(jnp.float32)
    n = jnp.sum(m)
    out = {"clip_frac": (jnp.sum(clipped * m), n)}
    if kl is not None:
        out["kl"] = (jnp.sum(kl * m), n)
    return out


@register("grpo")
def grpo_loss(x: LossInputs, *, eps_low: float, eps_high: float, beta: float, kl_estimator: str,
              aggregation: str, budget: int | None = None):
    """Token-level clipped surrogate (PPO/GRPO) with DAPO clip-higher and an optional KL penalty."""
    ratio = jnp.exp(x.logp - x.old_logp)
    a = x.adv[:, None] if x.adv.ndim == 1 else x.adv
    unclipped = ratio * a
    clipped_r = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * a
    per_token = -jnp.minimum(unclipped, clipped_r)
    if x.weight is not None:
        per_token = per_token * x.weight
    clipped = (clipped_r < unclipped).astype(jnp.float32)
    kl = None
    if beta > 0:
        kl = kl_estimate(x.logp, x.ref_logp, kl_estimator)
        per_token = per_token + beta * kl
    s, c = aggregate(per_token, x.mask, aggregation, budget)
    return s, c, _metrics(x, clipped, kl)


@register("gspo")
def gspo_loss(x: LossInputs, *, eps_low: float, eps_high: float, beta: float, kl_estimator: str,
              aggregation: str, budget: int | None = None):
    """GSPO: one importance ratio per sequence, exp(mean_t log(pi/pi_old)), clipped at sequence level.

    The loss is per sequence (mean over sequences); ``aggregation`` only applies to the KL term."""
    m = x.mask.astype(jnp.float32)
    n_tok = jnp.maximum(jnp.sum(m, axis=1), 1.0)
    log_s = jnp.sum((x.logp - x.old_logp) * m, axis=1) / n_tok
    s = jnp.exp(log_s)
    unclipped = s * x.adv
    clipped_r = jnp.clip(s, 1.0 - eps_low, 1.0 + eps_high) * x.adv
    per_seq = -jnp.minimum(unclipped, clipped_r)
    if x.weight is not None:  # one weight per sequence: the mean of its tokens'
        per_seq = per_seq * jnp.sum(x.weight * m, axis=1) / n_tok
    clipped = jnp.broadcast_to(((clipped_r < unclipped).astype(jnp.float32))[:, None], m.shape)
    total = jnp.sum(per_seq)
    count = jnp.asarray(per_seq.shape[0], jnp.float32)
    kl = None
    if beta > 0:
        kl = kl_estimate(x.logp, x.ref_logp, kl_estimator)
        per_seq_kl = jnp.sum(kl * m, axis=1) / n_tok
        total = total + beta * jnp.sum(per_seq_kl)
    return total, count, _metrics(x, clipped, kl)


def off_policy_terms(prox_logp, behav_logp, mask, mode: str, cap: float):
    """Per-token importance weights pi_prox / pi_behaviour for rollouts sampled by an older policy, and their
    metrics as (sum, count) pairs (``is_ratio_max`` a max), so they combine exactly over micro-batches.

    ``tis``: truncated at ``cap`` (truncated importance sampling); ``decoupled``: tokens above ``cap`` get
    weight 0 (the decoupled PPO objective's behaviour-weight cap). The metrics: the untruncated ratio's mean
    and max and the share of tokens truncated or masked, over ``mask``."""
    m = mask.astype(jnp.float32)
    n = jnp.sum(m)
    ratio = jnp.exp(prox_logp - behav_logp)
    over = (ratio > cap).astype(jnp.float32)
    w = jnp.minimum(ratio, cap) if mode == "tis" else jnp.where(ratio > cap, 0.0, ratio)
    metrics = {"is_ratio_mean": (jnp.sum(ratio * m), n), "is_ratio_max": jnp.max(jnp.where(mask, ratio, 0.0)),
               "is_truncated_frac": (jnp.sum(over * m), n)}
    return w * m, metrics


def off_policy_weights(prox_logp, behav_logp, mask, mode: str, cap: float):
    """``off_policy_terms`` with its metrics as plain means (one batch, no micro-batches)."""
    w, terms = off_policy_terms(prox_logp, behav_logp, mask, mode, cap)
    metrics = {k: v[0] / jnp.maximum(v[1], 1.0) if isinstance(v, tuple) else v for k, v in terms.items()}
    return w, metrics


def value_loss(values, old_values, returns, mask, vf_clip: float):
    """PPO's clipped value loss, 0.5 max((V - R)^2, (V_old + clip(V - V_old, +-vf_clip) - R)^2) per token
    (``vf_clip`` 0: unclipped), as (sum, count, metrics) over the completion tokens: the critic's gradient is
    then the same for any micro-batch split, like the policy's."""
    m = mask.astype(jnp.float32)
    l_un = (values - returns) ** 2
    if vf_clip > 0:
        v_cl = old_values + jnp.clip(values - old_values, -vf_clip, vf_clip)
        l_cl = (v_cl - returns) ** 2
        per_token = 0.5 * jnp.maximum(l_un, l_cl)
        clipped = (l_cl > l_un).astype(jnp.float32)
    else:
        per_token = 0.5 * l_un
        clipped = jnp.zeros_like(m)
    n = jnp.sum(m)
    return jnp.sum(per_token * m), n, {"vf_clip_frac": (jnp.sum(clipped * m), n)}


def get_loss(name: str):
    if name not in LOSSES:
        raise KeyError(f"algorithm.loss: unknown loss {name!r} (known: {', '.join(LOSSES)})")
    return LOSSES[name]


def sft_loss(logp, mask):
    """Next-token cross-entropy as (sum, count) over target tokens."""
    m = mask.astype(jnp.float32)
    return -jnp.sum(logp * m), jnp.sum(m)
