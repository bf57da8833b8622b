"""Decoder-only transformer built from the shared layers; one forward for training and sampling.

The same ``hidden`` method runs a full sequence (training, scoring) and cache-backed prefill/decode
(sampling). Because both paths run identical layer code on identical positions and masks, the sampler's
log-probs equal the trainer's by construction (up to float reassociation).

Layers are stacked (every parameter of ``layers`` has a leading layer dimension) and run under
``lax.scan``, so compile time does not grow with depth; multi-token passes of shallow stacks (at most
``cfg.unroll_max`` layers) run unrolled over the same stacked parameters, which is faster for a small
compile-time cost. Layer-type schedules stay scanned: sliding/global
attention is a scanned per-layer flag, and dense-then-MoE (DeepSeek) is two stacks, each scanned. Dense
layers between MoE ones (Qwen's ``mlp_only_layers`` / ``decoder_sparse_step``) keep the same two stacks and
run as consecutive runs of each (``runs``), so an alternating schedule runs layer by layer.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from reasoning_rl.sharding import constrain

from . import lora
from .config import TransformerConfig
from .layers import invariant
from .layers.attention import Attention, attention_mask, freeze, rope_for
from .layers.gated_deltanet import GatedDeltaNet, KimiDeltaAttention
from .layers.init import drawn, param
from .layers.mamba2 import Mamba2
from .layers.mla import MLA
from .layers.mlp import ACTIVATIONS, INVARIANT_ACTIVATIONS, MLP
from .layers.moe import MoE, balance_loss
from .layers.multiplier import times
from .layers.norm import RMSNorm
from .layers.rope import rope_table
from .layers.short_conv import ShortConv


@jax.tree_util.register_dataclass
@dataclass
class KVCache:
    """Fixed-shape cache: k/v [L, B, K, S, D] (heads before slots: the layout decode reads without a
    transpose); ``valid`` [B, S] marks slots holding real tokens.

    Paged (``table`` set): k/v are page pools [L, pages, K, page_size, D] and ``table`` [B, S / page_size]
    maps each row's logical pages to pool pages, so rows can share pages (a prompt's full pages are stored
    once for its whole group); slot ``s`` of row ``b`` lives at page ``table[b, s // page_size]``, offset
    ``s % page_size``. Masks and slot indices are the same as the contiguous layout's.

    For multi-head latent attention, k holds the normalised latent [L, B, 1, S, kv_lora_rank] and v the rotary
    key [L, B, 1, S, qk_rope_dim] (see ``TransformerConfig.kv_shape``).

    With linear-attention layers (``cfg.linear``), k/v hold the attention layers only (L of them, in model
    order: ``cfg.cache_slots``) and each linear layer keeps its row's last convolution inputs ``conv``
    [L_lin, B, K - 1, C] and recurrent ``state`` [L_lin, B, Hv, dk, dv] (float32): a row's state after its valid
    tokens, whatever its slots (``models/layers/gated_deltanet``).

    With ``cfg.cache_kinds`` (full-attention layers whose keys/values differ in shape from the sliding ones':
    Gemma 4, MiMo-V2-Flash), k and v are dicts by kind, {"sliding": [L_s, ...], "full": [L_f, ...]}, each of its
    layers' own shape (a layer's index in its kind's buffer: ``cfg.cache_slots``): one buffer as wide as the widest
    layer would cost Gemma 4 twice its sliding layers' size and four times its full layers'. Whatever maps every
    buffer alike takes both (``jax.tree.map``); a layer stack runs on its kind's (``cfg.stack_cache_kind``)."""

    k: jax.Array | tuple | dict  # (stacked; per layer: ``split_layers``; by kind: ``cfg.cache_kinds``)
    v: jax.Array | tuple | dict
    valid: jax.Array
    table: jax.Array | None = None
    conv: jax.Array | None = None
    state: jax.Array | None = None

    @classmethod
    def empty(cls, cfg: TransformerConfig, batch: int, size: int, dtype=None) -> KVCache:
        dtype = dtype or cfg.jnp_dtype

        def buffers(kind):
            kk, kd, vk, vd = cfg.kv_shape_of(kind)
            n = sum(cfg.cache_kind(i) == kind for i in cfg.cached_layers)
            return jnp.zeros((n, batch, kk, size, kd), dtype), jnp.zeros((n, batch, vk, size, vd), dtype)

        if cfg.cache_kinds:
            bufs = {kind: buffers(kind) for kind in cfg.cache_kinds}
            k, v = ({kind: b[j] for kind, b in bufs.items()} for j in (0, 1))
        else:
            k, v = buffers(None)
        conv = state = None
        if cfg.linear is not None:
            lin = cfg.linear
            conv = jnp.zeros((len(lin.layers), batch, lin.conv - 1, lin.channels), dtype)
            state = jnp.zeros((len(lin.layers), batch, lin.v_heads, lin.k_dim, lin.v_dim), jnp.float32)
        return cls(k, v, jnp.zeros((batch, size), bool), None, conv, state)

    def with_kv(self, k, v, valid, table=None) -> KVCache:
        """This cache's recurrent states with other keys/values (the same rows)."""
        return KVCache(k, v, valid, table, self.conv, self.state)

    def recurrent(self) -> tuple:
        """(conv, state), or () without linear-attention layers."""
        return () if self.conv is None else (self.conv, self.state)

    @property
    def size(self) -> int:
        return self.valid.shape[1]

    def fan_out(self, g: int) -> KVCache:
        """Each row repeated ``g`` times (the sampler's prompt cache shared by its group's samples)."""
        if g == 1:
            return self
        rec = tuple(jnp.repeat(a, g, axis=1) for a in self.recurrent())
        k, v = (jax.tree.map(lambda a: jnp.repeat(a, g, axis=1), x) for x in (self.k, self.v))
        return KVCache(k, v, jnp.repeat(self.valid, g, axis=0), None, *rec)

    def grow(self, size: int) -> KVCache:
        """The contiguous cache with ``size`` slots, the new ones empty."""
        pad = size - self.size
        if self.table is not None or pad < 0:
            raise ValueError(f"grow: a contiguous cache grows to at least its {self.size} slots, got {size}")
        if self.split:
            kv = [(0, 0)] * 2 + [(0, pad), (0, 0)]
            return self.with_kv(tuple(jnp.pad(a, kv) for a in self.k), tuple(jnp.pad(a, kv) for a in self.v),
                                jnp.pad(self.valid, ((0, 0), (0, pad))))
        kv = [(0, 0)] * 3 + [(0, pad), (0, 0)]
        k, v = (jax.tree.map(lambda a: jnp.pad(a, kv), x) for x in (self.k, self.v))
        return self.with_kv(k, v, jnp.pad(self.valid, ((0, 0), (0, pad))))

    @property
    def split(self) -> bool:
        """Held as one buffer per layer (``split_layers``) rather than stacked."""
        return isinstance(self.k, tuple)

    def split_layers(self, cfg: TransformerConfig) -> KVCache:
        """The contiguous cache as one [B, K, S, D] buffer per layer (k and v tuples of L arrays).

        Why: a layer scan over the stacked cache hands each layer a slice of it, and XLA materialises that
        slice for the attention kernel (a custom call takes whole buffers): a copy of the whole cache every
        decode step (on an H200 at batch 256, 1.5 of 6.8 ms). With a buffer per layer, the decode step runs
        its layers unrolled, each layer writes its token in place and the kernel reads the buffer itself."""
        if self.split or self.table is not None or self.conv is not None:
            return self
        return KVCache(*self.layer_buffers(cfg), self.valid)

    def layer_buffers(self, cfg: TransformerConfig) -> tuple[tuple, tuple]:
        """(k, v): each cached attention layer's [B, K, S, D] buffer of a contiguous cache, in model order (with
        ``cfg.cache_kinds``, each from its kind's buffer; ``cfg.cached_layers``: a layer sharing another's
        keys/values has no buffer of its own); ``split_layers`` holds the cache as these."""
        slots, kinds = cfg.cache_slots, [cfg.cache_kind(i) for i in cfg.cached_layers]
        return tuple(tuple((x if kind is None else x[kind])[slots[i]] for i, kind in zip(cfg.cached_layers, kinds))
                     for x in (self.k, self.v))

    def layer_kv(self) -> tuple:
        """What the layer scan carries: (k, v) or, paged, (k pools, v pools, table); split (``split_layers``):
        (k tuple, v tuple), which the layers take unrolled; then (conv, state) with linear-attention layers."""
        return ((self.k, self.v) if self.table is None else (self.k, self.v, self.table)) + self.recurrent()


class Block(nnx.Module):
    """One decoder layer: attention (GQA, or MLA when ``cfg.mla``; a recurrent mixer in a ``linear`` layer, or,
    with ``cfg.linear.parallel`` (Falcon-H1), attention and a Mamba-2 mixer on the same input, their outputs
    added), then a dense or MoE MLP (none with ``mlp=False``: a mixer-only layer), each after an RMSNorm (unless
    ``cfg.pre_norm`` is off: OLMo-2) and, with ``cfg.sandwich_norm`` (Gemma, OLMo-2), with a norm on its
    output. ``shared``: the layer attends over another layer's keys/values (``cfg.kv_shared_layers``: no key or
    value projection of its own). With ``cfg.ple_dim`` the layer's per-layer input is gated into its output last
    (``_per_layer``)."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, moe: bool = False, linear: bool = False,
                 mlp: bool = True, full: bool = False, shared: bool = False):
        pd, dt = cfg.jnp_param_dtype, cfg.jnp_dtype
        out_scale = (2 * cfg.n_layers) ** -0.5
        norm = functools.partial(RMSNorm, cfg.d_model, eps=cfg.norm_eps, offset=cfg.norm_offset, param_dtype=pd,
                                 invariant=cfg.batch_invariant, center=cfg.norm_center, weight=cfg.norm_weight,
                                 bias=cfg.norm_bias)
        lin = cfg.linear
        # where the norms sit: before the mixer and the MLP (``pre_norm``) and/or on their outputs (``sandwich``);
        # a linear layer with ``lin.pre_norm`` (OLMo Hybrid) puts them before whatever the attention layers do
        pre_norm, sandwich = (True, False) if linear and lin.pre_norm else (cfg.pre_norm, cfg.sandwich_norm)
        self.attn_norm = norm() if pre_norm else None
        # a parallel layer (Falcon-H1) runs attention (``attn``) and a Mamba-2 mixer (``mamba``) side by side
        self.parallel = linear and lin.parallel
        self.linear = linear and not self.parallel
        self.hybrid = lin is not None  # the cache carries recurrent states after the keys/values
        self.attn_multipliers = (cfg.attn_in_multiplier, cfg.attn_out_multiplier)
        self.mamba_multipliers = (lin.in_multiplier, lin.out_multiplier) if linear else (1.0, 1.0)

        def mamba() -> Mamba2:
            return Mamba2(cfg.d_model, lin.k_heads, lin.v_heads, lin.k_dim, lin.v_dim, lin.conv, rngs=rngs,
                          conv_bias=lin.conv_bias, dt_limit=lin.dt_limit, norm_eps=cfg.norm_eps, param_dtype=pd,
                          dtype=dt, out_scale=out_scale, norm=lin.norm, multipliers=lin.multipliers)

        if self.parallel:
            self.mamba = mamba()
        if self.linear:
            if lin.kind == "shortconv":
                self.attn = ShortConv(cfg.d_model, lin.conv, rngs=rngs, param_dtype=pd, dtype=dt, out_scale=out_scale)
            elif lin.kind == "mamba2":
                self.attn = mamba()
            elif lin.kind == "kda":
                if lin.k_heads != lin.v_heads:
                    raise ValueError(f"linear: Kimi Delta Attention has one head count (k_heads {lin.k_heads}, "
                                     f"v_heads {lin.v_heads})")
                self.attn = KimiDeltaAttention(cfg.d_model, lin.k_heads, lin.k_dim, lin.v_dim, lin.conv, rngs=rngs,
                                               norm_eps=lin.norm_eps or cfg.norm_eps, param_dtype=pd, dtype=dt,
                                               out_scale=out_scale)
            else:
                self.attn = GatedDeltaNet(cfg.d_model, lin.k_heads, lin.v_heads, lin.k_dim, lin.v_dim, lin.conv,
                                          rngs=rngs, norm_eps=lin.norm_eps or cfg.norm_eps, param_dtype=pd, dtype=dt,
                                          out_scale=out_scale, beta_scale=lin.beta_scale)
        elif cfg.mla is not None:
            self.attn = MLA(cfg.d_model, cfg.n_heads, cfg.mla, rngs=rngs, rope_theta=cfg.rope_theta,
                            rope_scaling=cfg.rope_scaling, param_dtype=pd, dtype=dt, out_scale=out_scale,
                            length_scale=cfg.query_length_scale)
        else:
            # (``full``: a full-attention layer of its own kind, ``cfg.split_full``)
            kv_heads = cfg.full_kv_heads if full and cfg.full_kv_heads else cfg.n_kv_heads
            head_dim = cfg.full_head_dim if full and cfg.full_head_dim else cfg.head_dim
            heads = cfg.full_heads if full and cfg.full_heads else cfg.n_heads
            self.attn = Attention(cfg.d_model, heads, kv_heads, head_dim, rngs=rngs,
                                  rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling, qkv_bias=cfg.qkv_bias,
                                  qk_norm=cfg.qk_norm, norm_eps=cfg.norm_eps, norm_offset=cfg.norm_offset,
                                  query_scale=cfg.query_scale, param_dtype=pd, dtype=dt, out_scale=out_scale,
                                  softcap=cfg.attn_softcap, qk_norm_whole=cfg.qk_norm_whole,
                                  sinks=cfg.attn_sinks and (cfg.full_sinks or not full),
                                  v_dim=cfg.v_head_dim or head_dim, value_scale=cfg.value_scale,
                                  k_eq_v=full and cfg.full_k_eq_v and not shared, v_norm=cfg.v_norm,
                                  out_bias=cfg.out_bias, rope_interleave=cfg.rope_interleave,
                                  rope_dim=cfg.full_rope_dim if full and cfg.full_rope_dim else cfg.rope_dim,
                                  impl=cfg.attention_impl, invariant=cfg.batch_invariant,
                                  qk_norm_after_rope=cfg.qk_norm_after_rope, gate=cfg.attn_gate,
                                  length_scale=cfg.query_length_scale, key_multiplier=cfg.key_multiplier,
                                  kv_reuse=shared, norm_weight=cfg.norm_weight, head_gate=cfg.head_gate,
                                  gate_act=cfg.gate_act, gate_bias=cfg.gate_bias, clip_qkv=cfg.clip_qkv)
        self.post_attn_norm = norm() if sandwich else None
        self.residual_multiplier = cfg.residual_multiplier
        self.depth_residual = cfg.depth_residual
        # a stored scale of the layer's output, not trained (Gemma 4's layer_scalar buffer: no gradient reaches it,
        # and the optimizer's weight decay leaves it alone: algorithms.steps.NO_DECAY)
        self.layer_scalar = nnx.Param(jnp.ones((1,), pd), axes=(None,)) if cfg.layer_scalar else None
        # a parallel block (Cohere) runs its MLP on the attention's normed input: no norm of its own
        self.parallel_block = cfg.parallel_block
        if cfg.parallel_block and (linear or sandwich or not pre_norm or not mlp or (moe and cfg.moe.beside_dense)):
            raise ValueError("parallel_block: pre-norm attention layers with an MLP or experts only (no recurrent "
                             "layers, sandwich norms or a dense MLP beside the experts)")
        # per-layer inputs (Gemma 4 E2B/E4B): the output gated to ple_dim, times the layer's input, projected back
        # and normed, added to the residual
        if cfg.ple_dim and (cfg.parallel_block or not mlp):
            raise ValueError("ple_dim: per-layer inputs in layers with an MLP, not parallel blocks")
        self.invariant = cfg.batch_invariant
        self.activation = cfg.activation
        if cfg.ple_dim:
            p = cfg.ple_dim
            self.ple_gate = param(rngs, (cfg.d_model, p), ("embed", None), cfg.d_model, pd)
            self.ple_proj = param(rngs, (p, cfg.d_model), (None, "embed"), p, pd, scale=out_scale)
            self.ple_norm = norm()
        else:
            self.ple_gate = self.ple_proj = self.ple_norm = None
        if not mlp:
            if cfg.layer_scalar:
                raise ValueError("layer_scalar: layers with an MLP only")
            self.mlp_norm = self.mlp = self.post_mlp_norm = self.dense_mlp = None
            return
        self.mlp_norm = norm() if pre_norm and not cfg.parallel_block else None
        glu_args = (cfg.swiglu_alpha, cfg.swiglu_limit)
        ffn = cfg.ffn_dim * (2 if shared and cfg.double_wide_mlp else 1)
        beside = moe and cfg.moe.beside_dense  # Gemma 4: a dense MLP beside the experts, each normed before and after
        if beside and not (pre_norm and sandwich):
            raise ValueError("moe.beside_dense: layers with norms before and after their MLP (sandwich_norm)")
        self.dense_mlp = (MLP(cfg.d_model, ffn, rngs=rngs, param_dtype=pd, dtype=dt, out_scale=out_scale,
                              activation=cfg.activation, glu_args=glu_args) if beside else None)
        if beside:
            self.post_dense_norm, self.moe_norm, self.post_moe_norm = norm(), norm(), norm()
        if moe:
            self.mlp = MoE(cfg.d_model, cfg.moe, rngs=rngs, activation=cfg.activation, param_dtype=pd, dtype=dt,
                           out_scale=out_scale, glu_args=glu_args, norm_eps=cfg.norm_eps)
        else:
            self.mlp = MLP(cfg.d_model, ffn, rngs=rngs, param_dtype=pd, dtype=dt, out_scale=out_scale,
                           activation=cfg.activation, glu_args=glu_args, invariant=cfg.batch_invariant,
                           multipliers=cfg.mlp_multipliers, bias=cfg.mlp_bias)
        self.post_mlp_norm = norm() if sandwich else None

    def __call__(self, x, positions, mask, cache=None, layer=None, index=None, rope=None, valid=None,
                 routes=None, prefix=None, segments=None, ple=None, depth=None):
        """Returns (x, cache, moe_stats); moe_stats is None for a dense MLP. ``segments``: packed rows' sequence
        ids, for a linear-attention layer (attention layers have them in ``mask``). ``ple`` [B, T, ple_dim]: the
        layer's per-layer inputs (``cfg.ple_dim``). ``depth``: the layer's index in the model, for
        ``cfg.depth_residual``'s scales."""
        add = self._adder(depth)
        pre = self.attn_norm(x) if self.attn_norm is not None else x
        if self.linear:
            m_in, m_out = self.mamba_multipliers
            h, cache = self._linear(self.attn, times(pre, m_in), valid, cache, layer, segments)
            h = times(h, m_out)
        else:
            a_in, a_out = self.attn_multipliers
            if self.hybrid and cache is not None:  # the keys/values, then the linear layers' states
                h, own = self.attn(times(pre, a_in), positions, mask, cache[:-2], layer, index, rope, prefix)
                cache = tuple(own) + tuple(cache[-2:])
            else:
                h, cache = self.attn(times(pre, a_in), positions, mask, cache, layer, index, rope, prefix)
            h = times(h, a_out)
            if self.parallel:  # the Mamba-2 mixer on the same input, its state at the same slot: outputs added
                m_in, m_out = self.mamba_multipliers
                hm, cache = self._linear(self.mamba, times(pre, m_in), valid, cache, layer, segments)
                h = times(hm, m_out) + h
        if self.post_attn_norm is not None:
            h = self.post_attn_norm(h)
        stats = None
        if self.parallel_block:  # attention and MLP (or experts) on the same normed input, both added to the residual
            if isinstance(self.mlp, MoE):
                m, stats = self.mlp(pre, valid, routes)
            else:
                m = self.mlp(pre)
            x = x + self._residual(h) + self._residual(m)  # (the reference's order of the sums)
            return constrain(x, ("batch", "seq", "act_embed")), cache, stats
        x = constrain(add(x, h, 0), ("batch", "seq", "act_embed"))
        if self.mlp is None:  # a mixer-only layer
            return x, cache, stats
        pre = self.mlp_norm(x) if self.mlp_norm is not None else x
        if self.dense_mlp is not None:  # Gemma 4: the dense MLP and the experts (routed on the layer's input) summed
            h, stats = self.mlp(self.moe_norm(x), valid, routes, router_x=x)
            h = self.post_dense_norm(self.dense_mlp(pre)) + self.post_moe_norm(h)
        elif isinstance(self.mlp, MoE):
            h, stats = self.mlp(pre, valid, routes)
        else:
            h = self.mlp(pre)
        if self.post_mlp_norm is not None:
            h = self.post_mlp_norm(h)
        x = add(x, h, 1)
        if self.ple_gate is not None:
            x = x + self._per_layer(x, ple)
        if self.layer_scalar is not None:
            x = x * jax.lax.stop_gradient(self.layer_scalar[...]).astype(x.dtype)
        return constrain(x, ("batch", "seq", "act_embed")), cache, stats

    def _per_layer(self, x, ple):
        """The per-layer input's contribution (Gemma 4 E2B/E4B): ``norm(proj(act(x W_gate) * ple))``."""
        dt = x.dtype
        mm = invariant.matmul_for(self.invariant)
        act = (INVARIANT_ACTIVATIONS if self.invariant else ACTIVATIONS)[self.activation]
        x2 = x.reshape(-1, x.shape[-1])
        g = act(mm(x2, self.ple_gate[...].astype(dt))) * ple.reshape(x2.shape[0], -1).astype(dt)
        return self.ple_norm(mm(g, self.ple_proj[...].astype(dt)).reshape(x.shape))

    def _adder(self, depth):
        """``add(x, h, j)``: the residual ``x`` plus sub-layer ``j``'s output ``h`` (0 the mixer, 1 the MLP); with
        ``cfg.depth_residual`` (Beam) the k-th add of the model (k = 2 * (depth + 1) + j) weighs them
        sqrt((k - 1) / k) and 1 / sqrt(k), in float32, rounded once."""
        if not self.depth_residual:
            return lambda x, h, j: x + self._residual(h)
        if depth is None:
            raise ValueError("depth_residual: the layer's depth in the model is needed")

        def add(x, h, j):
            k = (2 * (jnp.asarray(depth, jnp.float32) + 1) + j)
            out = x.astype(jnp.float32) * jnp.sqrt((k - 1) / k) + self._residual(h).astype(jnp.float32) / jnp.sqrt(k)
            return out.astype(x.dtype)

        return add

    def _residual(self, h):
        """A sub-layer's output as it joins the residual stream: times ``cfg.residual_multiplier`` (Granite), in
        float32 and rounded once, as the reference multiplies a tensor by a Python float."""
        return times(h, self.residual_multiplier)

    @staticmethod
    def _linear(mixer, x, valid, cache, slot, segments=None):
        """A recurrent ``mixer`` over ``cache``'s (conv, state) entry ``slot`` (the layer's index among the
        linear layers), written back in place."""
        if valid is None:
            valid = jnp.ones(x.shape[:2], bool)
        if cache is None:
            return mixer(x, valid, segments=segments)[0], None
        conv, state = cache[-2], cache[-1]
        h, (c, s) = mixer(x, valid, (conv[slot], state[slot]))
        return h, tuple(cache[:-2]) + (conv.at[slot].set(c), state.at[slot].set(s))


_REMAT = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "nested": jax.checkpoint_policies.nothing_saveable,  # per layer, and per group of layers: see nested_group
}


def nested_group(n: int) -> int:
    """Layers per group of ``remat: nested``: the size g that keeps the fewest layer inputs for the backward,
    ceil(n / g) group inputs plus the g layer inputs of the group being differentiated (about 2 sqrt(n)
    instead of ``full``'s n); the smaller g of a tie (each group's slice of the stacked parameters and its
    gradients are live copies while it is differentiated: at SmolLM-135M's 30 layers and 16 rows, g = 5
    peaks 2.54 GiB, g = 6 2.57, g = 10 2.69)."""
    return min(range(1, n + 1), key=lambda g: (-(-n // g) + g, g))


def _moe_flags(cfg: TransformerConfig) -> tuple[bool, ...]:
    if cfg.moe is None:
        return (False,) * cfg.n_layers
    flags = tuple(cfg.moe.is_moe(i) for i in range(cfg.n_layers))
    bad = [i for i in cfg.moe.dense_layers if not 0 <= i < cfg.n_layers]
    if cfg.moe.first_dense >= cfg.n_layers or bad:
        raise ValueError(f"moe: dense layers {bad or [cfg.moe.first_dense]} outside the {cfg.n_layers} layers")
    return flags


STACKS = ("dense_layers", "layers", "linear_dense_layers", "linear_layers", "mixer_layers",
          "linear_mixer_layers", "full_dense_layers", "full_layers", "shared_dense_layers", "shared_layers",
          "full_shared_dense_layers", "full_shared_layers")  # see stack_layers


def stack_layers(cfg: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """Each stack of identical layers and the model layers it holds, in order.

    A dense model is one stack, ``layers``. A MoE model with dense layers (DeepSeek's leading
    ``first_k_dense_replace``, Qwen's ``mlp_only_layers`` / ``decoder_sparse_step``) has two: ``dense_layers``
    and ``layers`` (the MoE ones); a MoE model whose layers are all dense keeps only ``dense_layers``. Linear-
    attention layers (``cfg.linear``) stack apart the same way: ``linear_layers`` (MoE ones in a MoE model) and
    ``linear_dense_layers``. Layers without an MLP (``cfg.mixer_only_layers``) stack as ``mixer_layers`` and
    ``linear_mixer_layers``. Full-attention layers whose attention differs from the sliding ones'
    (``cfg.split_full``) stack as ``full_layers`` and ``full_dense_layers``. Layers attending over another layer's
    keys/values (``cfg.kv_shared_layers``: no key/value projections) stack as ``shared_layers`` (after ``full_``
    when full layers stack apart) and ``shared_dense_layers``."""
    flags = _moe_flags(cfg)
    if cfg.kv_shared_layers and (cfg.linear is not None or cfg.mla is not None or cfg.mixer_only_layers):
        raise ValueError("kv_shared_layers: models of grouped-query attention layers only (no linear, latent or "
                         "mixer-only layers)")
    owners = cfg.kv_owners
    if cfg.split_full and (cfg.linear is not None or cfg.mla is not None or cfg.mixer_only_layers):
        raise ValueError("full_kv_heads / full_sinks / full_head_dim / full_k_eq_v: full-attention layers of their "
                         "own beside sliding ones, in models of grouped-query attention layers only (no linear, "
                         "latent or mixer-only layers)")
    full = cfg.split_full and not all(cfg.sliding_layers)
    lin = set(cfg.linear.layers) if cfg.linear is not None else set()
    for what, idx in (("linear", lin), ("mixer_only_layers", set(cfg.mixer_only_layers))):
        if idx - set(range(cfg.n_layers)):
            raise ValueError(f"{what}: layers {sorted(idx - set(range(cfg.n_layers)))} outside the {cfg.n_layers}")
    out: dict[str, list[int]] = {}
    for i, m in enumerate(flags):
        kind = ("mixer_layers" if i in cfg.mixer_only_layers else "layers" if m or cfg.moe is None
                else "dense_layers")
        name = (("linear_" if i in lin else "full_" if full and not cfg.sliding_layers[i] else "")
                + ("shared_" if owners[i] != i else "") + kind)
        out.setdefault(name, []).append(i)
    return {k: tuple(out[k]) for k in STACKS if k in out}


def _stack_kind(cfg: TransformerConfig, name: str) -> tuple[bool, bool, bool]:
    """(is_moe, is_linear, is_full) of stack ``name`` (is_full: full-attention layers of their own)."""
    return (name in ("layers", "linear_layers", "full_layers", "shared_layers", "full_shared_layers")
            and cfg.moe is not None, name.startswith("linear"), name.startswith("full_"))


LINEAR_KINDS = ("gated_deltanet", "kda", "mamba2", "shortconv")  # ``LinearAttnConfig.kind``


def segments(cfg: TransformerConfig) -> list[tuple[str, int, int, bool]]:
    """The stacks: (attribute, first model layer, count, is_moe). See ``stack_layers`` for the layers each
    holds (not contiguous when dense layers sit between MoE ones)."""
    return [(name, idx[0], len(idx), _stack_kind(cfg, name)[0]) for name, idx in stack_layers(cfg).items()]


def runs(cfg: TransformerConfig) -> list[tuple[str, int, int, int, bool]]:
    """Consecutive model layers from one stack, in model order: (attribute, offset in the stack, first model
    layer, count, is_moe). One run per stack unless dense and MoE layers alternate; each run is scanned (or
    unrolled) on its own, so an alternating schedule runs layer by layer. A layer whose keys/values later layers
    share (``kv_stores``) is a run of its own, and the layers sharing them run by the layer they share: a pass
    without a cache keeps those keys/values for them."""
    where = {i: (name, k) for name, idx in stack_layers(cfg).items() for k, i in enumerate(idx)}
    stores, owners = kv_stores(cfg), cfg.kv_owners
    out: list[list] = []
    for i in range(cfg.n_layers):
        name, k = where[i]
        if out and out[-1][0] == name and i not in stores and out[-1][2] not in stores \
                and owners[i] == owners[out[-1][2] if owners[i] != i else i]:
            out[-1][3] += 1
        else:
            out.append([name, k, i, 1, _stack_kind(cfg, name)[0]])
    return [tuple(r) for r in out]


def prompt_pass(cfg: TransformerConfig) -> bool:
    """Can ``Transformer.hidden_with_prompt`` run ``cfg`` (dense attention layers whose prompt keys/values are all
    a continuation needs)?"""
    return cfg.moe is None and cfg.linear is None and not (cfg.mla and cfg.mla.index_topk)


def kv_stores(cfg: TransformerConfig) -> dict[int, str]:
    """The layers whose keys/values later layers attend over (``cfg.kv_shared_layers``), each with its kind
    ("sliding" or "full")."""
    owners = cfg.kv_owners
    return {j: "sliding" if cfg.sliding_layers[j] else "full" for i, j in enumerate(owners) if i != j}


def _stack(cfg: TransformerConfig, n: int, moe: bool, rngs: nnx.Rngs, linear: bool = False,
           mlp: bool = True, full: bool = False, shared: bool = False) -> Block:
    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_layers(r: nnx.Rngs) -> Block:
        return Block(cfg, rngs=r, moe=moe, linear=linear, mlp=mlp, full=full, shared=shared)

    return make_layers(rngs)


class Transformer(nnx.Module):
    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        if cfg.batch_invariant and (cfg.moe is not None or cfg.mla is not None or cfg.linear is not None):
            kind = ("mixture-of-experts" if cfg.moe is not None else "multi-head latent attention"
                    if cfg.mla is not None else "linear-attention")
            raise ValueError(f"batch_invariant: dense models with grouped-query attention only (this model has "
                             f"{kind} layers, whose products are not made batch-invariant)")
        lin = cfg.linear
        if lin is not None and lin.kind not in LINEAR_KINDS:
            raise ValueError(f"linear.kind: {lin.kind!r} is not a recurrent layer kind ({', '.join(LINEAR_KINDS)})")
        if lin is not None and lin.parallel and (lin.kind != "mamba2" or cfg.mla is not None
                                                  or tuple(lin.layers) != tuple(range(cfg.n_layers))):
            raise ValueError("linear.parallel: a Mamba-2 mixer beside grouped-query attention in every layer "
                             f"(linear.layers all {cfg.n_layers}; got kind {lin.kind!r}, layers {lin.layers}"
                             f"{', MLA' if cfg.mla is not None else ''})")
        if lin is not None:
            only = {"mamba2": {"norm": lin.norm != "gated", "multipliers": set(lin.multipliers) != {1.0},
                               "in_multiplier": lin.in_multiplier != 1.0, "out_multiplier": lin.out_multiplier != 1.0},
                    "gated_deltanet": {"beta_scale": lin.beta_scale != 1.0, "norm_eps": lin.norm_eps != 0.0}}
            for kind, switches in only.items():
                bad = [k for k, v in switches.items() if v]
                if bad and lin.kind != kind:
                    name = {"mamba2": "Mamba-2", "gated_deltanet": "Gated DeltaNet"}[kind]
                    raise ValueError(f"linear.{bad[0]}: {name} layers only (kind {lin.kind!r} has no such switch)")
        full_heads = cfg.full_heads or cfg.n_heads
        if cfg.full_kv_heads < 0 or (cfg.full_kv_heads and full_heads % cfg.full_kv_heads):
            raise ValueError(f"full_kv_heads: {cfg.full_kv_heads} does not divide the full layers' {full_heads} "
                             "attention heads")
        if cfg.nope_query_scale is not None and (cfg.mla is not None or not cfg.nope_layers):
            raise ValueError("nope_query_scale: scales the queries of layers without rotary (nope_layers) of GQA "
                             "attention")
        if not cfg.clip_qkv >= 0.0:
            raise ValueError(f"clip_qkv: {cfg.clip_qkv} is not a bound (0: none, else > 0)")
        if cfg.depth_residual and cfg.parallel_block:
            raise ValueError("depth_residual: one residual add per sub-layer (not parallel blocks)")
        if cfg.full_heads < 0 or full_heads % (cfg.full_kv_heads or cfg.n_kv_heads):
            raise ValueError(f"full_heads: {cfg.full_heads} is not a multiple of the full layers' key/value heads")
        if cfg.batch_invariant and (cfg.split_full or cfg.v_head_dim not in (0, cfg.head_dim)):
            raise ValueError("batch_invariant: one kind of attention layer with values as wide as keys")
        self.cfg = cfg
        pd = cfg.jnp_param_dtype
        emb = drawn(jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.d_model), jnp.float32)) * 0.02
        self.embed = nnx.Param(emb.astype(pd), axes=("vocab", "embed"))
        for name, _, n, moe in segments(cfg):
            _, linear, full = _stack_kind(cfg, name)
            setattr(self, name, _stack(cfg, n, moe, rngs, linear, "mixer" not in name, full, "shared_" in name))
        self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, offset=cfg.norm_offset, param_dtype=pd,
                                  invariant=cfg.batch_invariant, center=cfg.norm_center, weight=cfg.norm_weight,
                                  bias=cfg.norm_bias)
        if cfg.embed_norm and cfg.ple_dim:
            raise ValueError("embed_norm: per-layer inputs (ple_dim) read the embeddings before any norm; not both")
        if cfg.ple_dim:  # per-layer inputs: a table of every layer's, and a projection of the token's embedding
            width = cfg.n_layers * cfg.ple_dim
            rows = cfg.ple_vocab or cfg.vocab_size
            if rows < cfg.vocab_size:
                raise ValueError(f"ple_vocab: {rows} rows of per-layer inputs for a vocabulary of {cfg.vocab_size}")
            tab = drawn(jax.random.normal(rngs.params(), (rows, width), jnp.float32)) * 0.02
            # (as large as a few layers at E2B's size, 262144 x 35 x 256: split like the embedding)
            self.ple_embed = nnx.Param(tab.astype(pd), axes=("vocab", "embed"))
            self.ple_in = param(rngs, (cfg.d_model, width), ("embed", None), cfg.d_model, pd)
            self.ple_norm = RMSNorm(cfg.ple_dim, eps=cfg.norm_eps, offset=cfg.norm_offset, param_dtype=pd,
                                    invariant=cfg.batch_invariant, center=cfg.norm_center)
        if cfg.tie_embeddings:
            self.lm_head = None
        else:
            w = drawn(jax.random.normal(rngs.params(), (cfg.d_model, cfg.vocab_size), jnp.float32))
            w = w * cfg.d_model**-0.5
            self.lm_head = nnx.Param(w.astype(pd), axes=("embed", "vocab"))
        if cfg.lora is not None:
            from .lora import attach

            attach(self, cfg, rngs)

    # ------------------------------------------------------------------ forward pieces

    def embed_tokens(self, tokens: jax.Array) -> jax.Array:
        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.cfg.jnp_dtype)
        if self.cfg.embed_scale:
            # The reference rounds sqrt(d) to the parameter dtype before multiplying.
            scale = jnp.asarray(self.cfg.d_model**0.5, self.cfg.jnp_param_dtype).astype(x.dtype)
            x = x * scale
        x = times(x, self.cfg.embed_multiplier)  # Granite, Falcon-H1
        if self.cfg.embed_norm:  # nanochat: the final norm (weightless there) before the first layer too
            x = self.final_norm(x)
        return constrain(x, ("batch", "seq", "act_embed"))

    def per_layer_inputs(self, tokens: jax.Array, x: jax.Array) -> jax.Array:
        """Every layer's inputs [B, T, L, ple_dim] (``cfg.ple_dim``, Gemma 4 E2B/E4B): the token's row of the
        per-layer table (times sqrt(ple_dim), rounded to the parameter dtype as the reference does) plus the
        RMS-normed projection of its embedding ``x`` (times d_model ** -0.5), their sum times 2 ** -0.5."""
        cfg = self.cfg
        b, t, d = x.shape
        p, dt = cfg.ple_dim, x.dtype
        tab = jnp.take(self.ple_embed[...], tokens, axis=0).astype(dt)
        tab = tab * jnp.asarray(p**0.5, cfg.jnp_param_dtype).astype(dt)
        proj = invariant.matmul_for(cfg.batch_invariant)(x.reshape(-1, d), self.ple_in[...].astype(dt))
        proj = self.ple_norm(times(proj, d**-0.5).reshape(b, t, cfg.n_layers, p))
        return times(proj + tab.reshape(b, t, cfg.n_layers, p), 2**-0.5)

    def hidden(self, tokens: jax.Array, positions: jax.Array, valid: jax.Array, cache: KVCache | None = None,
               index: jax.Array | int = 0, *, return_aux: bool = False, routes: jax.Array | None = None,
               attend: int | None = None, layer_states: dict | None = None,
               segments: jax.Array | None = None):
        """Final-norm hidden states [B, T, D]: returns ``(h, cache)``, or ``(h, cache, aux)`` with
        ``return_aux=True``.

        tokens/positions/valid: [B, T]. Without a cache the call attends within the sequence (causal, pads
        masked). With a cache the tokens are written at slots ``index..index+T`` and attend over the cache;
        ``index`` [B] (with T == 1) gives every row its own slot (the in-flight sampler's slots). A token's
        position may not exceed its slot (positions count the valid tokens before a token, as
        ``positions_from_valid`` gives them; rope is tabulated over the slots).
        ``attend`` (static): attend over the first ``attend`` cache slots only; the caller guarantees every
        query's keys lie there (the sampler's bucketed decode window).
        ``layer_states`` (with a split cache: ``KVCache.split_layers``): ``layer_states()``, each layer's parameters
        sliced once outside the decode loop, so the unrolled layers read them in place.
        ``segments`` [B, T] int (no cache): packed rows, several sequences one after the other; a
        token attends only to earlier tokens of its own segment (the positions restart with each sequence).

        ``aux`` (MoE models; empty for dense ones): ``expert_load`` [L_moe, E] (fraction of valid tokens
        routed to each expert, per MoE layer), ``router_prob`` [L_moe, E], ``balance_loss`` (the Switch-style
        load-balancing loss the reference reports as ``aux_loss``) and ``aux_loss`` (``balance_loss`` times
        the family's coefficient: add it to the training loss; zero for aux-loss-free DeepSeek-V3), ``routes``
        [B, T, L_moe, k] (the experts each token went to: the sampler records them for routing replay),
        ``dropped_tokens`` (expert-parallel with a capacity) and, when ``routes`` [B, T, L_moe, k] are given
        to replay, ``route_diff``/``route_count`` (tokens x layers whose own top-k differs / all of them).
        """
        x = self.embed_tokens(tokens)
        t = tokens.shape[1]
        lora.next_forward()  # LoRA dropout (training losses only): this forward's masks
        if cache is None:
            key_valid = valid
            q_slots = k_slots = jnp.arange(t)
            kv = None
        elif jnp.ndim(index) == 1:  # per-row cache slots: one token per row, row b at slot index[b]
            if t != 1:
                raise ValueError(f"per-row cache indices take one token per row, got {t}")
            key_valid = cache.valid.at[jnp.arange(tokens.shape[0]), index].set(valid[:, 0])
            q_slots, k_slots = index[:, None], jnp.arange(cache.size)
            kv = cache.layer_kv()
        else:
            key_valid = jax.lax.dynamic_update_slice(cache.valid, valid, (0, index))
            q_slots, k_slots = index + jnp.arange(t), jnp.arange(cache.size)
            kv = cache.layer_kv()
        if attend is not None and cache is not None:
            ctx = self._layer_context(key_valid[:, :attend], q_slots, k_slots[:attend], positions)
        else:
            ctx = self._layer_context(key_valid, q_slots, k_slots, positions)
        if segments is not None:
            if cache is not None:
                raise ValueError("segments (packed rows) take no cache")
            same = segments[:, :, None] == segments[:, None, :]
            ctx.update({k: ctx[k] & same for k in ("mask", "window_mask") if k in ctx})
            if self.cfg.linear is not None:  # linear layers restart their convolution and state per sequence
                ctx["segments"] = segments
        stats = []
        off = 0
        ple = jnp.moveaxis(self.per_layer_inputs(tokens, x), 2, 0) if self.cfg.ple_dim else None  # [L, B, T, P]
        # without a cache, the keys/values of the layers later ones share (``cfg.kv_shared_layers``) are kept
        # by kind, in a one-layer cache of the sequence
        stores, shared = kv_stores(self.cfg) if cache is None else {}, {}
        for name, start, first, n, is_moe in runs(self.cfg):
            seg_routes = None
            if routes is not None and is_moe:
                seg_routes = jnp.moveaxis(routes[:, :, off:off + n], 2, 0)  # [n, B, T, k]: scanned over layers
                off += n
            kind = self.cfg.stack_cache_kind(name)  # with cache kinds, the run's layers' own buffers
            picked = kind is not None and kv is not None and isinstance(kv[0], dict)  # (split: per layer already)
            run_kv = (kv[0][kind], kv[1][kind], *kv[2:]) if picked else kv
            read_kv = None
            if first in stores:
                kk, kd, vk, vd = self.cfg.kv_shape_of(kind)
                run_kv = tuple(jnp.zeros((1, tokens.shape[0], h, t, d), self.cfg.jnp_dtype)
                               for h, d in ((kk, kd), (vk, vd)))
            elif cache is None and "shared_" in name:
                read_kv = shared["sliding" if self.cfg.sliding_layers[first] else "full"]
            x, run_kv, st = self._run_layers(getattr(self, name), first, n, x, positions, ctx, run_kv, index,
                                             valid, seg_routes, start,
                                             layer_states=None if layer_states is None else layer_states[name],
                                             stack_name=name, ple=None if ple is None else ple[first:first + n],
                                             read_kv=read_kv,
                                             own_slot=first in stores or read_kv is not None)
            if first in stores:
                shared[stores[first]], run_kv = run_kv, None
            kv = ({**kv[0], kind: run_kv[0]}, {**kv[1], kind: run_kv[1]}, *run_kv[2:]) if picked else run_kv
            if st is not None:
                stats.append(st)
        if cache is not None:
            cache = KVCache(kv[0], kv[1], key_valid, cache.table, *(kv[-2:] if cache.conv is not None else ()))
        h = self.final_norm(x)
        if not return_aux:
            return h, cache
        return h, cache, self._aux(stats)

    def hidden_with_prompt(self, prompt: jax.Array, prompt_positions: jax.Array, prompt_valid: jax.Array,
                           tokens: jax.Array, positions: jax.Array, valid: jax.Array):
        """Final-norm hidden states of N prompts [N, P, D] and of B continuations [B, T, D], each group of
        B / N consecutive rows continuing its prompt (the trainer's GRPO groups; dense models).

        The same values as a prefill of the prompts into a fresh cache, ``hidden(prompt, ..., cache, 0)``,
        then each row's continuation over its prompt's cache without a per-row copy of it
        (``prefix_attention``), in one pass over the layers: each layer runs its prompts, then the continuations
        over the prompt keys/values it just made. Under remat a layer's backward then
        rebuilds its own prompt keys/values instead of reading a stack of every layer's (or, with the cache
        carried through the layers, every layer's copy of the whole cache), and the parameters' gradients are
        accumulated once, not once per pass."""
        if not prompt_pass(self.cfg):
            raise ValueError("hidden_with_prompt: dense attention models only (MoE statistics are per whole row; "
                             "linear-attention layers carry a state, not keys/values, from the prompt; sparse "
                             "attention's indexer keys are not carried)")
        lora.next_forward()  # LoRA dropout (training losses only): this forward's masks
        n, tp = prompt.shape
        t = tokens.shape[1]
        ctx = self._layer_context(jnp.concatenate([jnp.repeat(prompt_valid, tokens.shape[0] // n, 0), valid], 1),
                                  tp + jnp.arange(t), jnp.arange(tp + t), positions)
        pctx = self._layer_context(prompt_valid, jnp.arange(tp), jnp.arange(tp), prompt_positions)
        px, x = self.embed_tokens(prompt), self.embed_tokens(tokens)
        first = {"x": px, "positions": prompt_positions, "valid": prompt_valid, "ctx": pctx}
        ple = pple = None
        if self.cfg.ple_dim:  # [L, rows, T, P]: each token's own, prompts' and continuations' alike
            ple, pple = (jnp.moveaxis(self.per_layer_inputs(a, e), 2, 0) for a, e in ((tokens, x), (prompt, px)))
        # the keys/values of layers later ones share (``cfg.kv_shared_layers``), by kind: (the prompts' one-layer
        # cache [1, N, K, P, D], the rows' [1, B, K, P + T, D] of prompt then continuation)
        stores, shared = kv_stores(self.cfg), {}
        for name, start, first_layer, count, _ in runs(self.cfg):
            share = shared.get("sliding" if self.cfg.sliding_layers[first_layer] else "full") \
                if "shared_" in name else None
            x, first, _ = self._run_layers(getattr(self, name), first_layer, count, x, positions, ctx, None, None,
                                           valid, start=start, prompt=first, stack_name=name,
                                           ple=None if ple is None else ple[first_layer:first_layer + count],
                                           prompt_ple=None if pple is None else pple[first_layer:first_layer + count],
                                           share=share, store=first_layer in stores,
                                           own_slot=share is not None or first_layer in stores)
            if first_layer in stores:
                shared[stores[first_layer]] = first.pop("store")
        return self.final_norm(first["x"]), self.final_norm(x)

    def _layer_context(self, key_valid, q_slots, k_slots, positions) -> dict:
        """Masks and rope tables shared by every layer, computed once per forward. Layers of two types
        (Gemma's sliding and global) get both masks (and both ropes) and pick theirs with a scanned per-layer
        flag, so the stack stays one scan. Layers without rotary embedding (``nope_layers``) pick the
        identity rotation (cos 1, sin 0: the same values, exactly) by a flag of their own."""
        ctx = (self._mask_and_rope_reversed if self.cfg.rope_reverse else self._mask_and_rope)(key_valid, q_slots,
                                                                                            k_slots, positions)
        if self.cfg.nope_layers:
            ctx["nope"] = jnp.asarray([i in self.cfg.nope_layers for i in range(self.cfg.n_layers)])
            if self.cfg.nope_query_scale is not None:  # [B, T] float32, by each token's position
                p, span = self.cfg.nope_query_scale
                ctx["nope_q"] = jnp.exp(p * jnp.log1p((positions.astype(jnp.float32) + 1) / span))
        return ctx

    def _mask_and_rope(self, key_valid, q_slots, k_slots, positions) -> dict:
        cfg = self.cfg
        sliding = cfg.sliding_layers
        dim = cfg.mla.qk_rope_dim if cfg.mla is not None else (cfg.rope_dim or cfg.head_dim)
        # full layers of their own head size (Gemma 4) or rotary dims (Laguna) rotate at it; the sliding ones at
        # head_dim
        full_dim = (cfg.full_rope_dim or cfg.rope_dim or cfg.full_head_dim or dim) if cfg.split_full else dim
        size = k_slots.shape[0]  # a token's position (valid tokens before it) never exceeds its slot
        rope = rope_table(positions, *rope_for(full_dim, float(cfg.rope_theta), freeze(cfg.rope_scaling)), size)
        local = rope
        if cfg.rope_local_theta is not None and any(sliding):
            local = rope_table(positions, *rope_for(dim, float(cfg.rope_local_theta), ()), size)
        elif full_dim != dim and any(sliding):
            local = rope_table(positions, *rope_for(dim, float(cfg.rope_theta), freeze(cfg.rope_scaling)), size)
        if not any(sliding):
            return {"mask": attention_mask(key_valid, q_slots, k_slots), "rope": rope}
        window_mask = attention_mask(key_valid, q_slots, k_slots, cfg.sliding_window)
        if all(sliding):
            return {"mask": window_mask, "rope": local}
        ctx = {"mask": attention_mask(key_valid, q_slots, k_slots), "window_mask": window_mask,
               "sliding": jnp.asarray(sliding), "rope": rope}
        if local is not rope:
            ctx["rope_local"] = local
        return ctx

    def _mask_and_rope_reversed(self, *a) -> dict:
        """``cfg.rope_reverse`` (nanochat): every rope table turning the other way (sin negated)."""
        ctx = self._mask_and_rope(*a)
        for k in ("rope", "rope_local"):
            if k in ctx:
                ctx[k] = (ctx[k][0], -ctx[k][1])
        return ctx

    def layer_states(self) -> dict[str, tuple]:
        """Each stack's parameters as one state per layer (``hidden(..., layer_states=)``).

        Why: a layer that runs unrolled over a stacked [L, ...] parameter reads its slice ``a[i]``, and XLA
        copies that slice out for every matrix product that cannot read a slice in place (cuBLAS); inside
        the decode loop, a copy of all the layer weights every step (on an H200, 1.4 of 5.3 ms at batch 256).
        Sliced once before the loop, the copies cost one pass over the weights per sampling call and hold a
        second copy of the layer weights while it runs.

        Weights every use of which casts them to the compute dtype first (``COMPUTE_CAST``: projections,
        their biases, LoRA factors) are stored cast: float32 master weights under bf16 compute are then read
        as bf16 by every step, not converted again each step, and the copy is half their size. Norm scales,
        routers and sinks, used in float32, keep their dtype. The values every layer computes are the same."""
        dt = self.cfg.jnp_dtype

        def slice_cast(path, a, i):
            names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
            name = next((k for k in reversed(names) if isinstance(k, str) and k != "value"), "")
            cast = (name in COMPUTE_CAST or lora.is_adapter(name)) and \
                jnp.issubdtype(a.dtype, jnp.floating) and a.dtype != dt
            return a[i].astype(dt) if cast else a[i]

        out = {}
        for name, _, n, _ in segments(self.cfg):
            _, state = nnx.split(getattr(self, name))
            out[name] = tuple(jax.tree_util.tree_map_with_path(lambda p, a, i=i: slice_cast(p, a, i), state)
                              for i in range(n))
        return out

    def _run_layers(self, stack, first, n, x, positions, ctx, kv, index, valid, routes=None,
                    start=0, prompt=None, layer_states=None, stack_name: str = "layers", ple=None, read_kv=None,
                    own_slot: bool = False, prompt_ple=None, share=None, store: bool = False):
        """``prompt`` (``hidden_with_prompt``): {x, positions, valid, ctx} of the prompts the rows continue; each
        layer runs them first, into a one-layer cache that is the rows' prefix. Returns it updated as ``kv``.
        With it, ``prompt_ple``: the prompts' per-layer inputs; ``store``: a one-layer run whose keys/values later
        layers share, which runs its rows over a cache of their prompt's keys/values then their own and returns
        (the prompts' cache, that cache) as ``kv["store"]``; ``share``: such a pair, which these layers (sharing
        them) attend over, the prompts over the first, the rows over the second.
        ``ple`` [n, B, T, ple_dim]: the layers' per-layer inputs. ``read_kv``: a one-layer cache of another
        layer's keys/values that these layers (sharing them) attend over, held outside the carry (a pass
        without a cache); ``own_slot``: the layers' cache is a one-layer one (slot 0), not the model's."""
        graphdef, state = nnx.split(stack)
        if start or n != jax.tree.leaves(state)[0].shape[0]:  # a run of part of the stack
            state = jax.tree.map(lambda a: a[start:start + n], state)
        policy = _REMAT[self.cfg.remat]
        # per-layer switches, scanned with the layers; a stack of one kind of layer (``cfg.split_full``: its full
        # layers stack apart, the rest slide) takes its mask and rope statically instead
        kind = ("full" if stack_name.startswith("full_") else "sliding") if self.cfg.split_full else None
        flags = [k for k in ("sliding", "nope") if k in ctx and not (k == "sliding" and kind)]

        def pick(ctx, xs):  # this layer's mask and rope
            mask, rope = ctx["mask"], ctx["rope"]
            if kind == "sliding" and "window_mask" in ctx:
                mask, rope = ctx["window_mask"], ctx.get("rope_local", rope)
            if "sliding" in xs:
                is_sliding = xs["sliding"]
                mask = jnp.where(is_sliding, ctx["window_mask"], ctx["mask"])
                if "rope_local" in ctx:
                    rope = tuple(jnp.where(is_sliding, lo, gl) for lo, gl in zip(ctx["rope_local"], rope))
            if "nope" in xs:  # the identity rotation
                rope = (jnp.where(xs["nope"], 1.0, rope[0]), jnp.where(xs["nope"], 0.0, rope[1]))
                if "nope_q" in ctx:  # and the queries' length scale (``cfg.nope_query_scale``)
                    rope = rope + (jnp.where(xs["nope"], ctx["nope_q"], 1.0),)
            return mask, rope

        def body(carry, xs):
            x, kv = carry
            layer, st = xs["layer"], xs["state"]
            mask, rope = pick(ctx, xs)
            block = nnx.merge(graphdef, st)
            layer_prefix = None
            run_cache, run_index = None if prompt is not None else kv, index
            if prompt is not None:  # kv: the prompts' hidden states
                pmask, prope = pick(prompt["ctx"], xs)
                kk, kd, vk, vd = self.cfg.kv_shape_of(self.cfg.stack_cache_kind(stack_name))
                b, tp = prompt["valid"].shape
                dt = self.cfg.jnp_dtype
                pcache = share[0] if share is not None else (jnp.zeros((1, b, kk, tp, kd), dt),
                                                             jnp.zeros((1, b, vk, tp, vd), dt))
                # LoRA dropout: the prompt pass draws its own masks (a layer index no completion pass uses)
                with lora.dropout_layer(layer + self.cfg.n_layers):
                    kv, cache, _ = block(kv, prompt["positions"], pmask, pcache, 0, 0, prope, prompt["valid"],
                                         ple=xs.get("prompt_ple"), depth=layer)
                if share is not None or store:  # the rows over a cache of [their prompt's | their own] slots
                    rows, t = x.shape[:2]
                    run_index = tp
                    run_cache = share[1] if share is not None else tuple(
                        jnp.concatenate([jnp.repeat(a, rows // b, axis=1),
                                         jnp.zeros((1, rows, a.shape[2], t, a.shape[4]), a.dtype)], axis=3)
                        for a in cache)
                else:
                    layer_prefix = (cache[0][0], cache[1][0])
            elif read_kv is not None:
                run_cache = read_kv
            keep = prompt is not None or read_kv is not None  # the carried kv is not this layer's cache
            with lora.dropout_layer(layer):
                x, new_kv, stats = block(x, positions, mask, run_cache, xs["slot"], run_index, rope, valid,
                                         xs.get("routes"), layer_prefix, ctx.get("segments"), xs.get("ple"), layer)
            if store:  # (a run of this one layer)
                stats = (stats, (cache, new_kv))
            return (x, kv if keep else new_kv), stats

        split = kv is not None and isinstance(kv[0], tuple)  # one cache buffer per layer: always unrolled
        scan = (self.cfg.scan_layers and (x.shape[1] == 1 or n > self.cfg.unroll_max) and not split
                and layer_states is None)
        if policy is not None:
            body = jax.checkpoint(body, policy=policy, prevent_cse=not scan)
        layers = jnp.arange(first, first + n, dtype=jnp.int32)
        slots = jnp.asarray(self.cfg.cache_slots, jnp.int32)[layers]  # each layer's entry in its kind's cache
        xs = {"layer": layers, "state": state, "slot": jnp.zeros_like(slots) if own_slot else slots}
        if ple is not None:
            xs["ple"] = ple
        if prompt_ple is not None:
            xs["prompt_ple"] = prompt_ple
        for k in flags:
            xs[k] = ctx[k][first:first + n]
        if routes is not None:
            xs["routes"] = routes
        if prompt is not None:
            kv = prompt["x"]
        if scan and self.cfg.remat == "nested" and n > 2 and x.shape[1] > 1:  # decode: nothing to differentiate
            (x, kv), stats = _nested_scan(body, (x, kv), xs, n, nested_group(n))
        elif scan:
            (x, kv), stats = jax.lax.scan(body, (x, kv), xs)
        else:
            ys = []
            for i in range(n):
                xs_i = jax.tree.map(lambda a, i=i: a[i], {k: v for k, v in xs.items() if k != "state"})
                xs_i["state"] = (layer_states[start + i] if layer_states is not None
                                 else jax.tree.map(lambda a, i=i: a[i], state))
                if split:  # this layer's own buffers (or those of the layer whose keys/values it shares)
                    ks, vs = list(kv[0]), list(kv[1])
                    j = self.cfg.cached_layers.index(self.cfg.kv_owners[first + i])
                    (x, (ks[j], vs[j])), st = body((x, (ks[j], vs[j])), xs_i)
                    kv = (tuple(ks), tuple(vs))
                else:
                    (x, kv), st = body((x, kv), xs_i)
                ys.append(st)
            stats = None if ys[0] is None else jax.tree.map(lambda *a: jnp.stack(a), *ys)
        stored = None
        if store:  # (stacked over the run's one layer)
            stats, stored = stats
            stored = jax.tree.map(lambda a: a[0], stored)
        if prompt is not None:
            kv = {**prompt, "x": kv} if stored is None else {**prompt, "x": kv, "store": stored}
        return x, kv, stats

    def _aux(self, stats: list) -> dict:
        if not stats:
            return {}
        load = jnp.concatenate([s["load"] for s in stats])
        prob = jnp.concatenate([s["prob"] for s in stats])
        bal = balance_loss(jnp.concatenate([s["balance_load"] for s in stats]), prob)
        out = {"expert_load": load, "router_prob": prob, "balance_loss": bal,
               "aux_loss": bal * self.cfg.moe.aux_loss_coef}
        out["routes"] = jnp.moveaxis(jnp.concatenate([s["experts"] for s in stats]), 0, 2)  # [B, T, L, k]
        if "dropped" in stats[0]:  # expert-parallel layers with a capacity: token copies dropped, all layers
            out["dropped_tokens"] = sum(jnp.sum(s["dropped"]) for s in stats)
        if "route_diff" in stats[0]:
            out["route_diff"] = sum(jnp.sum(s["route_diff"]) for s in stats)
            out["route_count"] = sum(jnp.sum(s["route_count"]) for s in stats)
        return out

    def logits(self, h: jax.Array) -> jax.Array:
        """float32 logits from hidden states (any leading shape)."""
        if self.cfg.batch_invariant:  # row blocks (layers/invariant.py); the tied head's [D, V] is a transpose
            w = self.embed[...].T if self.lm_head is None else self.lm_head[...]
            out = invariant.matmul(h, w.astype(h.dtype), preferred_element_type=jnp.float32)
        elif self.lm_head is None:  # tied: contract the embedding's own dimension (no transposed [D, V] copy)
            out = head_matmul(h, self.embed[...].astype(h.dtype), "...d,vd->...v")
        else:
            out = head_matmul(h, self.lm_head[...].astype(h.dtype), "...d,dv->...v")
        if self.cfg.final_softcap and self.cfg.batch_invariant:
            # the barrier gives the softcap a fusion of its own in every program: fused into the softmax's
            # reductions, XLA contracted its multiply-adds into FMAs in one program and not in the other
            c = self.cfg.final_softcap
            out = jax.lax.optimization_barrier(invariant.tanh(out / c) * c)
        elif self.cfg.final_softcap:
            out = jnp.tanh(out / self.cfg.final_softcap) * self.cfg.final_softcap
        if self.cfg.logits_scaling != 1.0:  # Granite
            out = out / self.cfg.logits_scaling
        if self.cfg.logits_multiplier != 1.0:  # Falcon-H1
            out = out * self.cfg.logits_multiplier
        return out

    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None, valid: jax.Array | None = None):
        """Full-sequence logits [B, T, V]; positions default to 0..T-1 and every token valid."""
        b, t = tokens.shape
        if valid is None:
            valid = jnp.ones((b, t), bool)
        if positions is None:
            positions = positions_from_valid(valid)
        h, _ = self.hidden(tokens, positions, valid)
        return self.logits(h)


# Layer parameters whose every use casts them to the compute dtype first (attention, MLA, MLP and expert
# projections and their biases): ``Transformer.layer_states`` may store them cast. A name missing here is
# only read in its stored dtype (correct, slower); a name here that some layer uses uncast would change it.
COMPUTE_CAST = frozenset({"q", "k", "v", "o", "q_bias", "k_bias", "v_bias", "o_bias", "q_a", "q_b", "kv_a", "kv_b",
                          "gate", "up", "down", "gate_b", "up_b", "down_b", "shared_gate",
                          "q_gate", "h_gate", "z", "b", "a",  # the attention output gates; Gated DeltaNet's z, b, a
                          "idx_q", "idx_k"})  # the sparse-attention indexer's projections (not its float32 weights)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def head_matmul(h: jax.Array, w: jax.Array, spec: str) -> jax.Array:
    """The lm head: float32 logits from ``h`` and ``w`` of the compute dtype (float32 accumulation).

    Its gradient takes the logits' float32 cotangent in the compute dtype: left float32, both backward
    products of a bf16 model ran as float32 (tf32) matrix products, ~11% of a Qwen2.5-1.5B train step on an
    H200 for the one layer whose forward ran in bf16. A float32 model is unchanged (the cast is a no-op)."""
    return jnp.einsum(spec, h, w, preferred_element_type=jnp.float32)


def _head_fwd(h, w, spec):
    return head_matmul(h, w, spec), (h, w)


def _head_bwd(spec, res, g):
    h, w = res
    if jnp.dtype(h.dtype).itemsize >= 4:  # float32 (or wider) models: the exact transpose
        return jax.vjp(lambda a, b: jnp.einsum(spec, a, b, preferred_element_type=jnp.float32), h, w)[1](g)
    # products in h's dtype (float32 accumulation on accelerators)
    return jax.vjp(lambda a, b: jnp.einsum(spec, a, b), h, w)[1](g.astype(h.dtype))


head_matmul.defvjp(_head_fwd, _head_bwd)


def _nested_scan(body, carry, xs, n: int, g: int):
    """``lax.scan(body, carry, xs)`` over n layers (``body`` already remat'd per layer) as a scan over groups of
    ``g`` layers, each group remat'd as a whole (a trailing n mod g layers: one more group of their own).

    The forward keeps only each group's input; the backward reruns one group's forward, keeping its g layer
    inputs, and differentiates its layers one at a time from those: ceil(n / g) + g layer inputs alive instead
    of n, for one more forward of the layers. The same layer computations in the same order, so the same
    values as ``full``."""
    full, rest = n - n % g, n % g
    group = jax.checkpoint(lambda c, xg: jax.lax.scan(body, c, xg), policy=jax.checkpoint_policies.nothing_saveable)
    head = jax.tree.map(lambda a: a[:full].reshape((full // g, g) + a.shape[1:]), xs)
    carry, ys = jax.lax.scan(group, carry, head)
    ys = jax.tree.map(lambda a: a.reshape((full,) + a.shape[2:]), ys)
    if rest:
        carry, ys_rest = group(carry, jax.tree.map(lambda a: a[full:], xs))
        ys = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), ys, ys_rest)
    return carry, ys


def positions_from_valid(valid: jax.Array) -> jax.Array:
    """Positions that skip left padding: the first valid token of each row is position 0."""
    return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1, 0)


# ---------------------------------------------------------------------- functional handle


@dataclasses.dataclass(frozen=True, eq=False)
class ModelDef:
    """A model as pure data: the NNX graph definition plus a template state.

    ``params`` are plain nested dicts of arrays (``nnx.to_pure_dict``), which optax, Orbax and the sharding
    rules all handle without knowing about NNX. ``bind(params)`` rebuilds the module inside a traced function.
    """

    cfg: TransformerConfig
    graphdef: Any
    template: Any  # nnx.State of abstract Params (carries the ``axes`` metadata)

    def bind(self, params: dict) -> Transformer:
        state = jax.tree.map(lambda x: x, self.template)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state)

    def param_axes(self) -> dict:
        """Logical axes per parameter (a pure dict shaped like ``params``); stacked layers get 'layers'."""
        def axes_of(v):
            meta = v.get_metadata()
            ax = tuple(meta.get("axes", ()))
            nd = len(v.value.shape)
            if len(ax) < nd:
                ax = ("layers",) * (nd - len(ax)) + ax
            return ax

        state = self.template
        flat = nnx.to_flat_state(state)
        out: dict = {}
        for path, var in flat:
            node = out
            for p in path[:-1]:
                node = node.setdefault(p, {})
            node[path[-1]] = axes_of(var)
        return out

    def abstract_params(self) -> dict:
        return nnx.to_pure_dict(self.template)


def create(cfg: TransformerConfig, seed: int = 0, *, abstract: bool = False,
           shardings: Any = None) -> tuple[ModelDef, dict | None]:
    """Build a model; returns (ModelDef, params). ``abstract=True`` allocates nothing (params=None).

    Fresh weights are drawn in one jitted program whose outputs land on ``shardings`` (a params-shaped tree
    of shardings; None: the default device): each device draws only the slices it holds (JAX's partitionable
    random bits do not depend on the layout), so a 70B model initialised over a pod never exists whole on one
    device or host, and one program replaces a few hundred eager ops. The weights are those the op-by-op
    construction gives, bit for bit under XLA's default flags (``layers.init.drawn``), on any layout."""
    abs_model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(seed)))
    graphdef, template = nnx.split(abs_model, nnx.Param)
    mdef = ModelDef(cfg, graphdef, template)
    if abstract:
        return mdef, None

    def draw() -> dict:
        return nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed)), nnx.Param))

    return mdef, jax.jit(draw, out_shardings=shardings)()
