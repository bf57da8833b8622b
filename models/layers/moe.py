"""Mixture-of-experts feed-forward: a pure router plus the expert computation.

The router (:func:`route`) is a pure function of the router logits: it picks the experts, weights them, and
reports per-expert load and mean router probability (the statistics a balancing loss or DeepSeek's
aux-loss-free bias update need). The expert computation is separate so an expert-parallel version
(``shard_map`` + all-to-all) can reuse the same routing decisions.

Two expert computations share one routing: ``ragged`` sorts token copies by expert and runs grouped matmuls
(``lax.ragged_dot``; cost proportional to the active parameters, differentiable), ``dense`` runs every expert
on every token (the readable reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx
from reasoning_rl.sharding import constrain

from ..config import MoEConfig
from .init import param, zeros
from .mlp import MLP, activation_fn


@jax.tree_util.register_dataclass
@dataclass
class Routing:
    """Per token: ``experts`` [N, k] int32 and their ``weights`` [N, k] float32. Per expert, over valid
    tokens: ``load`` [E] (fraction of tokens routed there; sums to k) and ``prob`` [E] (mean router
    probability; sums to one)."""

    experts: jax.Array
    weights: jax.Array
    load: jax.Array
    prob: jax.Array


def route(logits: jax.Array, mc: MoEConfig, bias: jax.Array | None = None,
          valid: jax.Array | None = None) -> Routing:
    """Top-k routing from router logits [N, E] (float32).

    softmax (Qwen3-MoE, Mixtral): weights are the softmax probabilities of the top-k experts, renormalised
    if ``norm_topk``. sigmoid (DeepSeek-V3): experts are chosen on sigmoid scores plus the selection-only
    ``bias``, first restricted to the ``topk_group`` best groups (a group scores the sum of its best two), and
    weighted by their unbiased scores; then ``scaling`` (routed_scaling_factor) applies.
    """
    logits = logits.astype(jnp.float32)
    n, e = logits.shape
    if mc.score == "softmax":
        scores = jax.nn.softmax(logits, axis=-1)
        choice = scores
        prob = scores
    elif mc.score == "sigmoid":
        scores = jax.nn.sigmoid(logits)
        choice = scores if bias is None else scores + bias.astype(jnp.float32)
        prob = scores / jnp.sum(scores, axis=-1, keepdims=True)
    else:
        raise ValueError(f"moe.score: unsupported value {mc.score!r}")
    if mc.n_group > 1:
        grouped = choice.reshape(n, mc.n_group, e // mc.n_group)
        group_scores = jnp.sum(jax.lax.top_k(grouped, 2)[0], axis=-1)  # [N, G]
        _, top_groups = jax.lax.top_k(group_scores, mc.topk_group)
        keep = jnp.zeros((n, mc.n_group), bool).at[jnp.arange(n)[:, None], top_groups].set(True)
        keep = jnp.repeat(keep, e // mc.n_group, axis=1)
        choice = jnp.where(keep, choice, -jnp.inf)
    _, experts = jax.lax.top_k(choice, mc.top_k)
    weights = jnp.take_along_axis(scores, experts, axis=-1)
    if mc.norm_topk:
        eps = 1e-20 if mc.score == "sigmoid" else 0.0
        weights = weights / (jnp.sum(weights, axis=-1, keepdims=True) + eps)
    if mc.scaling != 1.0:
        weights = weights * mc.scaling

    w = jnp.ones((n,), jnp.float32) if valid is None else valid.reshape(n).astype(jnp.float32)
    denom = jnp.maximum(jnp.sum(w), 1.0)
    counts = jnp.zeros((e,), jnp.float32).at[experts.reshape(-1)].add(jnp.repeat(w, mc.top_k))
    load = counts / denom
    prob = jnp.sum(prob * w[:, None], axis=0) / denom
    return Routing(experts.astype(jnp.int32), weights, load, prob)


def balance_loss(load: jax.Array, prob: jax.Array) -> jax.Array:
    """Switch-Transformer balancing loss over layers, from per-layer ``load``/``prob`` [L, E]: the
    reference pools every layer's tokens, which (equal token counts per layer) is E * sum_e mean_l(load) *
    mean_l(prob)."""
    e = load.shape[-1]
    return e * jnp.sum(jnp.mean(load, axis=0) * jnp.mean(prob, axis=0))


def score_bias_update(bias: jax.Array, load: jax.Array, rate: float = 1e-3) -> jax.Array:
    """DeepSeek-V3's aux-loss-free balancing step: raise the selection bias of under-loaded experts and lower
    it for over-loaded ones by ``rate`` (``bias``/``load``: [..., E], e.g. params["layers"]["mlp"]["score_bias"]
    and ``aux["expert_load"]``). The bias only affects which experts are chosen, never their weights, and gets
    no gradient; exclude it from weight decay."""
    return bias + rate * jnp.sign(jnp.mean(load, axis=-1, keepdims=True) - load).astype(bias.dtype)


def experts_dense(x: jax.Array, r: Routing, gate, up, down, act) -> jax.Array:
    """Every expert on every token, combined with the routing weights (reference; E times the FLOPs)."""
    n = x.shape[0]
    combine = jnp.zeros((n, gate.shape[0]), jnp.float32).at[jnp.arange(n)[:, None], r.experts].add(r.weights)
    h = act(jnp.einsum("nd,edi->nei", x, gate)) * jnp.einsum("nd,edi->nei", x, up)
    y = jnp.einsum("nei,eid->ned", h, down)
    return jnp.einsum("ned,ne->nd", y, combine.astype(y.dtype))


def experts_ragged(x: jax.Array, r: Routing, gate, up, down, act) -> jax.Array:
    """Dropless grouped matmul: the N*k token copies sorted by expert, one ``ragged_dot`` per projection."""
    k = r.experts.shape[1]
    flat = r.experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    token = order // k
    sizes = jnp.bincount(flat, length=gate.shape[0]).astype(jnp.int32)
    xs = jnp.take(x, token, axis=0)
    h = act(jax.lax.ragged_dot(xs, gate, sizes)) * jax.lax.ragged_dot(xs, up, sizes)
    y = jax.lax.ragged_dot(h, down, sizes)
    y = y * jnp.take(r.weights.reshape(-1), order).astype(y.dtype)[:, None]
    return jnp.zeros_like(x).at[token].add(y)


EXPERTS = {"dense": experts_dense, "ragged": experts_ragged}


class MoE(nnx.Module):
    def __init__(self, d_model: int, mc: MoEConfig, *, rngs: nnx.Rngs, activation: str = "silu",
                 param_dtype=jnp.float32, dtype=jnp.float32, out_scale: float = 1.0):
        if mc.impl not in EXPERTS:
            raise ValueError(f"moe.impl: unsupported value {mc.impl!r} (supported: {', '.join(EXPERTS)})")
        e, f = mc.n_experts, mc.ffn_dim
        self.mc, self.dtype, self.activation = mc, dtype, activation
        # The router stays float32 whatever the parameter dtype: its logits decide discrete choices.
        self.router = param(rngs, (d_model, e), ("embed", None), d_model, jnp.float32)
        self.score_bias = zeros((e,), (None,), jnp.float32) if mc.score_bias else None
        self.gate = param(rngs, (e, d_model, f), ("experts", "embed", "expert_mlp"), d_model, param_dtype)
        self.up = param(rngs, (e, d_model, f), ("experts", "embed", "expert_mlp"), d_model, param_dtype)
        self.down = param(rngs, (e, f, d_model), ("experts", "expert_mlp", "embed"), f, param_dtype,
                          scale=out_scale)
        self.shared = (MLP(d_model, mc.n_shared * f, rngs=rngs, param_dtype=param_dtype, dtype=dtype,
                           out_scale=out_scale, activation=activation) if mc.n_shared else None)

    def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """x [B, T, D] -> (y [B, T, D], {"load": [E], "prob": [E]})."""
        b, t, d = x.shape
        flat = x.reshape(b * t, d)
        logits = flat.astype(jnp.float32) @ self.router[...]
        bias = None if self.score_bias is None else jax.lax.stop_gradient(self.score_bias[...])
        r = route(logits, self.mc, bias, valid)
        dt = self.dtype
        y = EXPERTS[self.mc.impl](flat, r, self.gate[...].astype(dt), self.up[...].astype(dt),
                                  self.down[...].astype(dt), activation_fn(self.activation))
        y = constrain(y.reshape(b, t, d), ("batch", "seq", "act_embed"))
        if self.shared is not None:
            y = y + self.shared(x)
        return y, {"load": r.load, "prob": r.prob}
