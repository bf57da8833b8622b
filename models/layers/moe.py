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

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx
from reasoning_rl.sharding import constrain, current

from ..config import MoEConfig
from ..lora import weight
from .init import param, zeros
from .mlp import MLP, gated, glu_fn
from .norm import RMSNorm


@jax.tree_util.register_dataclass
@dataclass
class Routing:
    """Per token: ``experts`` [N, k] int32 and their ``weights`` [N, k] float32. Per expert, over valid
    tokens: ``load`` [E] (fraction of tokens routed there; sums to k), ``prob`` [E] (mean router
    probability; sums to one) and ``balance_load`` [E], the load the balancing loss counts: ``load``, or
    under softmax routing with a selection bias the unbiased top-k's (as the reference's loss counts it)."""

    experts: jax.Array
    weights: jax.Array
    load: jax.Array
    prob: jax.Array
    balance_load: jax.Array


def route(logits: jax.Array, mc: MoEConfig, bias: jax.Array | None = None,
          valid: jax.Array | None = None, forced: jax.Array | None = None) -> Routing:
    """Top-k routing from router logits [N, E] (float32).

    softmax (Qwen3-MoE, Mixtral, ERNIE 4.5): weights are the softmax probabilities of the top-k experts,
    renormalised if ``norm_topk``; the selection-only ``bias`` (ERNIE) moves which experts are chosen.
    sigmoid (DeepSeek-V3): experts are chosen on sigmoid scores plus the selection-only ``bias``, first
    restricted to the ``topk_group`` best groups (a group scores the sum of its best two), and weighted by
    their unbiased scores (``bias_on_logits``: chosen on the logits plus the bias, Kolibri-1's); then ``scaling``
    (routed_scaling_factor) applies. Softmax scores can be grouped
    too (DeepSeek-V2's ``group_limited_greedy``: a group scores its best expert, ``group_score="max"``).

    ``forced`` [N, k] (routing replay): these experts instead of the top-k, weighted by the current scores,
    so the router still gets the gradient of the weights it gives them.
    """
    logits = logits.astype(jnp.float32)
    if mc.router_softcap:
        logits = mc.router_softcap * jnp.tanh(logits / mc.router_softcap)
    n, e = logits.shape
    if mc.score == "softmax":  # a selection bias (ERNIE 4.5) moves the choice, not the weights
        scores = jax.nn.softmax(logits, axis=-1)
        choice = scores if bias is None else scores + bias.astype(jnp.float32)
        prob = scores
    elif mc.score == "sigmoid":
        scores = jax.nn.sigmoid(logits)
        choice = scores if bias is None else (logits if mc.bias_on_logits else scores) + bias.astype(jnp.float32)
        prob = scores / jnp.sum(scores, axis=-1, keepdims=True)
    else:
        raise ValueError(f"moe.score: unsupported value {mc.score!r}")
    if mc.n_group > 1:
        grouped = choice.reshape(n, mc.n_group, e // mc.n_group)
        if mc.group_score == "max":
            group_scores = jnp.max(grouped, axis=-1)  # [N, G]
        elif mc.group_score == "top2":
            group_scores = jnp.sum(jax.lax.top_k(grouped, 2)[0], axis=-1)
        else:
            raise ValueError(f"moe.group_score: unsupported value {mc.group_score!r} (top2 | max)")
        _, top_groups = jax.lax.top_k(group_scores, mc.topk_group)
        keep = jnp.zeros((n, mc.n_group), bool).at[jnp.arange(n)[:, None], top_groups].set(True)
        keep = jnp.repeat(keep, e // mc.n_group, axis=1)
        choice = jnp.where(keep, choice, -jnp.inf)
    experts = jax.lax.top_k(choice, mc.top_k)[1] if forced is None else forced.astype(jnp.int32)
    weights = jnp.take_along_axis(scores, experts, axis=-1)
    if mc.norm_topk:
        eps = 1e-20 if mc.score == "sigmoid" else 0.0
        weights = weights / (jnp.sum(weights, axis=-1, keepdims=True) + eps)
    if mc.scaling != 1.0:
        weights = weights * mc.scaling

    w = jnp.ones((n,), jnp.float32) if valid is None else valid.reshape(n).astype(jnp.float32)
    denom = jnp.maximum(jnp.sum(w), 1.0)

    def load_of(chosen):
        return jnp.zeros((e,), jnp.float32).at[chosen.reshape(-1)].add(jnp.repeat(w, mc.top_k)) / denom

    load = load_of(experts)
    balance = load if bias is None or mc.score != "softmax" else load_of(jax.lax.top_k(scores, mc.top_k)[1])
    prob = jnp.sum(prob * w[:, None], axis=0) / denom
    return Routing(experts.astype(jnp.int32), weights, load, prob, balance)


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


def _bias(b: jax.Array | None, ids: jax.Array) -> jax.Array | float:
    """Each row's expert bias (``b`` [E, F] gathered by ``ids``), or 0 for experts without biases."""
    return 0.0 if b is None else jnp.take(b, ids, axis=0, mode="clip")


def experts_dense(x: jax.Array, r: Routing, w: dict, glu) -> jax.Array:
    """Every expert on every token, combined with the routing weights (reference; E times the FLOPs).
    ``w``: gate/up [E, D, F], down [E, F, D] and, for families with expert biases, gate_b/up_b [E, F], down_b
    [E, D]."""
    n = x.shape[0]
    gate, up, down = w.get("gate"), w["up"], w["down"]
    combine = jnp.zeros((n, up.shape[0]), jnp.float32).at[jnp.arange(n)[:, None], r.experts].add(r.weights)
    zero = {"gate_b": 0.0, "up_b": 0.0, "down_b": 0.0}
    b = {k: (w[k][None] if w.get(k) is not None else v) for k, v in zero.items()}
    g = None if gate is None else jnp.einsum("nd,edi->nei", x, gate) + b["gate_b"]
    h = glu(g, jnp.einsum("nd,edi->nei", x, up) + b["up_b"])
    y = jnp.einsum("nei,eid->ned", h, down) + b["down_b"]
    return jnp.einsum("ned,ne->nd", y, combine.astype(y.dtype))


def _grouped_ffn(xs: jax.Array, ids: jax.Array, sizes: jax.Array, w: dict, glu, down_bias: bool = True) -> jax.Array:
    """The expert FFN of rows ``xs`` sorted by expert (``ids`` [M] each row's expert, ``sizes`` rows per
    expert): one ``ragged_dot`` per projection, plus each row's expert biases (no gate projection for an
    ungated activation: ``w`` has no "gate")."""
    g = jax.lax.ragged_dot(xs, w["gate"], sizes) + _bias(w.get("gate_b"), ids) if "gate" in w else None
    u = jax.lax.ragged_dot(xs, w["up"], sizes) + _bias(w.get("up_b"), ids)
    y = jax.lax.ragged_dot(glu(g, u), w["down"], sizes)
    return y + _bias(w.get("down_b"), ids) if down_bias else y


def experts_ragged(x: jax.Array, r: Routing, w: dict, glu) -> jax.Array:
    """Dropless grouped matmul: the N*k token copies sorted by expert, one ``ragged_dot`` per projection."""
    k = r.experts.shape[1]
    flat = r.experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    token = order // k
    sizes = jnp.bincount(flat, length=w["up"].shape[0]).astype(jnp.int32)
    xs = jnp.take(x, token, axis=0)
    y = _grouped_ffn(xs, jnp.take(flat, order), sizes, w, glu)
    y = y * jnp.take(r.weights.reshape(-1), order).astype(y.dtype)[:, None]
    return jnp.zeros_like(x).at[token].add(y)


EXPERTS = {"dense": experts_dense, "ragged": experts_ragged}


def _local_experts(xs: jax.Array, ids: jax.Array, n_local: int, w: dict, glu) -> jax.Array:
    """Grouped matmul over this shard's experts; rows with id == n_local (empty slots) come out as zeros. The
    down-projection bias is left out (added after the partial sums are reduced over ``tensor``)."""
    order = jnp.argsort(ids, stable=True)
    sizes = jnp.bincount(ids, length=n_local + 1)[:n_local].astype(jnp.int32)
    xo = jnp.take(xs, order, axis=0)
    y = _grouped_ffn(xo, jnp.take(ids, order), sizes, w, glu, down_bias=False)
    y = jnp.where((jnp.take(ids, order) < n_local)[:, None], y, 0)
    return jnp.zeros_like(y).at[order].set(y)


def experts_parallel(x: jax.Array, r: Routing, w: dict, glu, ctx, capacity_factor: float = 0.0
                     ) -> tuple[jax.Array, jax.Array]:
    """Expert parallelism: experts split over the mesh's ``expert`` axis, tokens sent to them with all_to_all.

    Inside ``shard_map`` each device holds its tokens (the batch axes) and ``E / P`` experts (``P`` = the
    expert axis size; the expert FFN dim may also be split over ``tensor``). Every token copy is packed into a
    per-destination buffer [P, C, D], exchanged with ``all_to_all`` over ``expert``, run through the local
    experts as one grouped matmul, sent back the same way and combined with its routing weight. ``C`` is
    dropless (every copy fits) when ``capacity_factor`` is 0, else ``capacity_factor * n * k / P``; copies
    over capacity are dropped (their token keeps the other experts' outputs) and counted.
    Returns (y [N, D], dropped copies)."""
    from jax.sharding import PartitionSpec as P

    mesh = ctx.mesh
    ep = mesh.shape["expert"]
    n_exp = w["up"].shape[0]
    if n_exp % ep:
        raise ValueError(f"mesh.expert: {ep} does not divide the {n_exp} experts")
    n_local = n_exp // ep
    tok_spec = ctx.spec(("batch", None), x.shape)
    w_axes = {"gate": ("experts", None, "expert_mlp"), "up": ("experts", None, "expert_mlp"),
              "down": ("experts", "expert_mlp", None), "gate_b": ("experts", "expert_mlp"),
              "up_b": ("experts", "expert_mlp"), "down_b": ("experts", None)}
    names = [k for k in w_axes if w.get(k) is not None]
    w_specs = [ctx.spec(w_axes[k], w[k].shape) for k in names]
    tensor_axes = w_specs[names.index("up")][2]
    tensor_axes = () if tensor_axes is None else (tensor_axes,) if isinstance(tensor_axes, str) else tensor_axes
    k = r.experts.shape[1]

    def body(xl, experts, weights, *ws):
        wl = dict(zip(names, ws))
        n = xl.shape[0]
        copies = n * k
        cap = copies if capacity_factor <= 0 else max(1, int(-(-capacity_factor * copies // ep)))
        flat = experts.reshape(-1)
        dest = flat // n_local
        onehot = jax.nn.one_hot(dest, ep, dtype=jnp.int32)  # [copies, P]
        slot = jnp.sum((jnp.cumsum(onehot, axis=0) - 1) * onehot, axis=1)  # position in its destination
        keep = slot < cap
        dropped = jnp.sum(~keep).astype(jnp.int32)
        slot = jnp.where(keep, slot, cap)  # an overflow slot, cut off below
        src = jnp.repeat(xl, k, axis=0)
        buf = jnp.zeros((ep, cap + 1, xl.shape[1]), xl.dtype).at[dest, slot].set(src)[:, :cap]
        ids = jnp.full((ep, cap + 1), n_local, jnp.int32).at[dest, slot].set(flat % n_local)[:, :cap]
        buf = jax.lax.all_to_all(buf, "expert", 0, 0, tiled=True)
        ids = jax.lax.all_to_all(ids, "expert", 0, 0, tiled=True).reshape(-1)
        y = _local_experts(buf.reshape(ep * cap, -1), ids, n_local, wl, glu)
        if tensor_axes:
            y = jax.lax.psum(y, tensor_axes)
        if "down_b" in wl:
            y = y + jnp.where((ids < n_local)[:, None], _bias(wl["down_b"], ids), 0)
        y = jax.lax.all_to_all(y.reshape(ep, cap, -1), "expert", 0, 0, tiled=True)
        y = jnp.concatenate([y, jnp.zeros((ep, 1, y.shape[-1]), y.dtype)], axis=1)[dest, slot]  # [copies, D]
        y = y * (weights.reshape(-1) * keep).astype(y.dtype)[:, None]
        out = jnp.sum(y.reshape(n, k, -1), axis=1)
        return out, jax.lax.psum(dropped, tuple(mesh.axis_names))

    fn = jax.shard_map(body, mesh=mesh, in_specs=(tok_spec, tok_spec, tok_spec, *w_specs),
                       out_specs=(tok_spec, P()), check_vma=False)
    return fn(x, r.experts, r.weights, *(w[k] for k in names))


class MoE(nnx.Module):
    def __init__(self, d_model: int, mc: MoEConfig, *, rngs: nnx.Rngs, activation: str = "silu",
                 param_dtype=jnp.float32, dtype=jnp.float32, out_scale: float = 1.0,
                 glu_args: tuple[float, float] = (1.702, 7.0), norm_eps: float = 1e-6):
        if mc.impl not in EXPERTS:
            raise ValueError(f"moe.impl: unsupported value {mc.impl!r} (supported: {', '.join(EXPERTS)})")
        e, f = mc.n_experts, mc.ffn_dim
        width = mc.latent_dim or d_model  # the experts' input/output width
        self.mc, self.dtype, self.activation, self.glu_args = mc, dtype, activation, tuple(glu_args)
        self.router_eps = norm_eps  # (the router input's norm: ``mc.router_norm``)
        # The router stays float32 whatever the parameter dtype: its logits decide discrete choices.
        self.router = param(rngs, (d_model, e), ("embed", None), d_model, jnp.float32)
        self.router_bias = zeros((e,), (None,), jnp.float32) if mc.router_bias else None
        self.router_scale = (nnx.Param(jnp.ones((d_model,), jnp.float32), axes=("norm",)) if mc.router_norm
                             else None)
        self.expert_scale = nnx.Param(jnp.ones((e,), jnp.float32), axes=(None,)) if mc.expert_scale else None
        self.score_bias = zeros((e,), (None,), jnp.float32) if mc.score_bias else None
        self.gate = (param(rngs, (e, width, f), ("experts", "embed", "expert_mlp"), width, param_dtype)
                     if gated(activation) else None)  # (an ungated activation: up and down only)
        self.up = param(rngs, (e, width, f), ("experts", "embed", "expert_mlp"), width, param_dtype)
        self.down = param(rngs, (e, f, width), ("experts", "expert_mlp", "embed"), f, param_dtype,
                          scale=out_scale)
        if mc.latent_dim:
            self.latent_in = param(rngs, (d_model, width), ("embed", None), d_model, param_dtype)
            self.latent_out = param(rngs, (width, d_model), (None, "embed"), width, param_dtype)
        else:
            self.latent_in = self.latent_out = None
        if mc.expert_bias:
            if self.gate is None:
                raise ValueError(f"moe.expert_bias: experts of the ungated activation {activation!r} take no biases")
            self.gate_b = zeros((e, f), ("experts", "expert_mlp"), param_dtype)
            self.up_b = zeros((e, f), ("experts", "expert_mlp"), param_dtype)
            self.down_b = zeros((e, d_model), ("experts", None), param_dtype)
        else:
            self.gate_b = self.up_b = self.down_b = None
        shared = mc.shared_ffn or mc.n_shared * f
        self.shared = (MLP(d_model, shared, rngs=rngs, param_dtype=param_dtype, dtype=dtype, out_scale=out_scale,
                           activation=activation, glu_args=glu_args) if shared else None)
        self.shared_gate = param(rngs, (d_model, 1), ("embed", None), d_model, param_dtype) if mc.shared_gate else None
        self.post_norm = RMSNorm(d_model, eps=norm_eps, param_dtype=param_dtype) if mc.post_norm else None

    def __call__(self, x: jax.Array, valid: jax.Array | None = None, routes: jax.Array | None = None,
                 router_x: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """x [B, T, D] -> (y [B, T, D], stats): ``load``/``prob`` [E], the chosen ``experts`` [B, T, k].

        ``routes`` [B, T, k] (routing replay): compute with these experts (the ones the sampler used) and
        count in ``route_diff``/``route_count`` the valid tokens whose own top-k differs. ``router_x``: what the
        router reads when not ``x`` (Gemma 4: the layer's input, the experts a norm of it)."""
        b, t, d = x.shape
        k = self.mc.top_k
        flat = x.reshape(b * t, d)
        rx = (flat if router_x is None else router_x.reshape(b * t, d)).astype(jnp.float32)
        if self.router_scale is not None:  # Gemma 4: RMS-normalised, a learned scale, d ** -0.5
            rx = rx * jax.lax.rsqrt(jnp.mean(rx * rx, axis=-1, keepdims=True) + self.router_eps)
            rx = rx * self.router_scale[...] * d**-0.5
        logits = rx @ self.router[...]
        if self.router_bias is not None:
            logits = logits + self.router_bias[...]
        bias = None if self.score_bias is None else jax.lax.stop_gradient(self.score_bias[...])
        r = route(logits, self.mc, bias, valid)
        stats = {"load": r.load, "prob": r.prob, "balance_load": r.balance_load,
                 "experts": r.experts.reshape(b, t, k)}
        if routes is not None:
            forced = routes.reshape(b * t, k)
            w = jnp.ones((b * t,), bool) if valid is None else valid.reshape(-1)
            differ = jnp.any(jnp.sort(r.experts, axis=-1) != jnp.sort(forced, axis=-1), axis=-1)
            stats["route_diff"] = jnp.sum(differ & w).astype(jnp.float32)
            stats["route_count"] = jnp.sum(w).astype(jnp.float32)
            r = route(logits, self.mc, bias, valid, forced=forced)
        if self.expert_scale is not None:  # Gemma 4: after renormalising, a learned scale per chosen expert
            r = dataclasses.replace(r, weights=r.weights * self.expert_scale[...][r.experts])
        dt = self.dtype
        # weights with their adapters merged, if any (expert biases are never adapted)
        ws = {n: weight(self, n, dt) if n in ("gate", "up", "down") else getattr(self, n)[...].astype(dt)
              for n in ("gate", "up", "down", "gate_b", "up_b", "down_b") if getattr(self, n) is not None}
        glu = glu_fn(self.activation, *self.glu_args)
        ctx = current()
        xe = flat if self.latent_in is None else flat.astype(dt) @ self.latent_in[...].astype(dt)
        if ctx is not None and ctx.mesh.shape.get("expert", 1) > 1:
            y, stats["dropped"] = experts_parallel(xe, r, ws, glu, ctx, self.mc.capacity_factor)
        else:
            y = EXPERTS[self.mc.impl](xe, r, ws, glu)
        if self.latent_out is not None:
            y = y @ self.latent_out[...].astype(dt)
        y = constrain(y.reshape(b, t, d), ("batch", "seq", "act_embed"))
        if self.shared is not None:
            s = self.shared(x)
            if self.shared_gate is not None:
                s = s * jax.nn.sigmoid(x @ self.shared_gate[...].astype(dt))
            y = (y + s) / 2 if self.mc.shared_average else y + s
        if self.post_norm is not None:
            y = self.post_norm(y)
        return y, stats
