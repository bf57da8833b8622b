"""Reward-model training: the Bradley-Terry pairwise loss and the step around it.

``bradley_terry`` returns a ``(sum, count)`` pair like the policy losses, so the step divides once by the
global number of pairs and the gradient is the same for any micro-batch or device split. Pairs travel as
``[B, 2, T]`` (chosen, rejected) so a pair never straddles two devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from reasoning_rl.config import OptimizerConfig, RewardModelConfig
from reasoning_rl.models.reward import RewardDef, scores

from .steps import TrainState, _accumulate, _apply, _ratios


def bradley_terry(chosen: jax.Array, rejected: jax.Array, margin: jax.Array, center: float = 0.0,
                  weight: jax.Array | None = None) -> tuple[jax.Array, jax.Array, dict]:
    """Sum over pairs of ``-log sigmoid(r_c - r_r - margin) + center * (r_c + r_r)^2`` and the pair count;
    metrics (as (sum, count) pairs): accuracy (r_c > r_r) and the mean score gap."""
    w = jnp.ones_like(chosen) if weight is None else weight.astype(chosen.dtype)
    diff = chosen - rejected
    per = -jax.nn.log_sigmoid(diff - margin)
    if center:
        per = per + center * (chosen + rejected) ** 2
    count = jnp.sum(w)
    stop = jax.lax.stop_gradient
    metrics = {"pair_accuracy": (jnp.sum(w * (stop(diff) > 0)), count), "score_gap": (jnp.sum(w * stop(diff)), count),
               "score_mean": (jnp.sum(w * stop(chosen + rejected)) / 2, count)}
    return jnp.sum(w * per), count, metrics


def pair_scores(rdef: RewardDef, params: dict, tokens: jax.Array, valid: jax.Array) -> jax.Array:
    """[B, 2, T] pairs -> scores [B, 2]."""
    b, two, t = tokens.shape
    return scores(rdef, params, tokens.reshape(b * two, t), valid.reshape(b * two, t)).reshape(b, two)


def make_reward_model_step(rdef: RewardDef, rcfg: RewardModelConfig, ocfg: OptimizerConfig,
                           tx: optax.GradientTransformation, micro_batches: int = 1):
    """batch: tokens/valid [B, 2, T] (chosen, rejected), margin [B]."""

    def loss_fn(params, b):
        s = pair_scores(rdef, params, b["tokens"], b["valid"])
        total, count, metrics = bradley_terry(s[:, 0], s[:, 1], b["margin"], rcfg.center)
        return total, {"loss_sum": total, "count": count, **metrics}

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        grads, aux = _accumulate(loss_fn, state.params, batch, micro_batches)
        loss = aux["loss_sum"] / jnp.maximum(aux["count"], 1.0)
        state, m = _apply(state, grads, tx, ocfg.max_grad_norm, loss, ocfg.inject_nan_steps)
        return state, {"loss": loss, "pairs": aux["count"], **m, **_ratios(aux)}

    return step
