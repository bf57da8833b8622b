"""Grouped-query attention over a fixed-shape KV cache.

One code path serves training (no cache: keys are the sequence itself), prefill and decode (keys are the
cache after this call's tokens were written). Masks are expressed over *cache slots*: with left-padded
prompts every row writes token ``t`` of a call into slot ``index + t``, so causality and sliding windows are
slot comparisons and padding is a per-slot validity bit.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from reasoning_rl.sharding import constrain, current

from ..lora import adapt
from . import invariant, kernels
from .init import param, zeros
from .multiplier import times
from .norm import RMSNorm
from .rope import apply_rope, rope_parameters, rope_table

NEG_INF = invariant.NEG_INF


def freeze(d: dict | None) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (d or {}).items()))


@functools.lru_cache(maxsize=64)
def rope_for(head_dim: int, theta: float, scaling: tuple):
    """(inv_freq, cos/sin factor), cached per (dim, theta, frozen scaling dict)."""
    return rope_parameters(head_dim, theta, dict(scaling) if scaling else None)


def attention_mask(key_valid: jax.Array, q_slots: jax.Array, k_slots: jax.Array, window: jax.Array | int = 0):
    """[B, T, S] boolean mask: key is valid, not in the future, and (if window > 0) within the window.

    ``q_slots`` is [T] (every row's queries sit at the same slots) or [B, T] (per-row slots: the in-flight
    sampler, where each batch slot decodes its own row at its own cache index)."""
    q = q_slots if q_slots.ndim == 2 else q_slots[None]  # [B or 1, T]
    causal = k_slots[None, None, :] <= q[:, :, None]  # [B or 1, T, S]
    mask = key_valid[:, None, :] & causal
    if isinstance(window, int) and window == 0:
        return mask
    win = jnp.asarray(window)
    in_win = (q[:, :, None] - k_slots[None, None, :]) < jnp.where(win > 0, win, jnp.iinfo(jnp.int32).max)
    return mask & in_win


def _softmax(scores: jax.Array, sink: jax.Array | None) -> jax.Array:
    """Softmax over the last axis; with ``sink`` (broadcastable to ``scores[..., :1]``) a learned logit joins
    the normaliser without a value (gpt-oss attention sinks: a head may put weight on "nothing")."""
    if sink is None:
        return jax.nn.softmax(scores, axis=-1)
    sink = sink.astype(jnp.float32)
    top = jax.lax.stop_gradient(jnp.maximum(scores.max(-1, keepdims=True), sink))
    e = jnp.exp(scores - top)
    return e / (e.sum(-1, keepdims=True) + jnp.exp(sink - top))


def _sink_for(sinks: jax.Array | None, kv: int, *trail: int) -> jax.Array | None:
    """Per-head sinks [H] as [K, G, 1...] to broadcast against grouped scores [.., K, G, ...]."""
    return None if sinks is None else sinks.reshape(kv, -1, *(1,) * len(trail))


Q_CHUNK = 512  # queries per block when a sequence is long (see ``dot_attention``)
CAUSAL_BLOCK = 64  # queries per block of causal attention within a sequence (see ``causal_blocks``)


def dot_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float,
                  softcap: float | None = None, heads_first: bool = False, causal: bool = False,
                  sinks: jax.Array | None = None) -> jax.Array:
    """q [B,T,H,D], k/v [B,S,K,D] (or [B,K,S,D] with ``heads_first``), mask [B,T,S] -> [B,T,H,D]; softmax in
    float32.

    Sequences of at least two ``Q_CHUNK`` blocks are computed block by block of queries under
    ``jax.checkpoint``: the [B, H, T, S] scores never exist whole, forward or backward (at 8k tokens they
    would be gigabytes per layer); each query row sees exactly the same keys and ops as unblocked.
    ``causal``: the keys are the queries' own sequence (S == T, sequence layout) under a causal mask, so
    shorter sequences run in causal blocks (see ``causal_blocks``). ``sinks`` [H]: per-head sink logits."""
    t = q.shape[1]
    if t >= 2 * Q_CHUNK:
        return _blocked_attention(q, k, v, mask, scale, softcap, heads_first, sinks)
    if causal and not heads_first and t >= 2 * CAUSAL_BLOCK:
        return causal_blocks(lambda qb, kb, vb, mb: _dot_attention(qb, kb, vb, mb, scale, softcap, sinks=sinks),
                             q, k, v, mask)
    return _dot_attention(q, k, v, mask, scale, softcap, heads_first, sinks)


def causal_blocks(fn, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, prefix: int = 0) -> jax.Array:
    """``fn(q_block, k, v, mask_block)`` over blocks of ``CAUSAL_BLOCK`` queries, each given only the own keys
    up to its last query (k/v [B, T, K, D], the queries' own; mask [B, T, prefix + T]). Exact when a key after
    a query's slot is always masked (causal attention within the sequence): the keys a block skips are ones
    it would mask. The score, softmax and value work over the own keys shrinks by a quarter at two blocks
    and towards half with more (the W1 update ~5% faster; a whole-row forward and backward at 512 tokens
    ~28%). Sequences of two ``Q_CHUNK`` and more keep ``lax.map``'s checkpointed blocks over all keys
    instead: blocks of different shapes are not sequenced, and XLA kept several blocks' scores alive at
    once (an 8k-token step's temporaries 7.6 -> 17.4 GiB)."""
    t = q.shape[1]
    outs = []
    for lo in range(0, t, CAUSAL_BLOCK):
        hi = min(t, lo + CAUSAL_BLOCK)
        outs.append(fn(q[:, lo:hi], k[:, :hi], v[:, :hi], mask[:, lo:hi, :prefix + hi]))
    return jnp.concatenate(outs, axis=1)


def _blocked_attention(q, k, v, mask, scale, softcap, heads_first, sinks=None):
    return _by_query_blocks(lambda qc, mc: _dot_attention(qc, k, v, mc, scale, softcap, heads_first, sinks), q, mask)


def _by_query_blocks(fn, q: jax.Array, mask: jax.Array) -> jax.Array:
    """``fn(q_block, mask_block)`` over blocks of ``Q_CHUNK`` queries, each under ``jax.checkpoint``."""
    b, t, h, d = q.shape
    pad = -t % Q_CHUNK
    qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    mp = jnp.pad(mask, ((0, 0), (0, pad), (0, 0)))
    n = (t + pad) // Q_CHUNK
    qb = qp.reshape(b, n, Q_CHUNK, h, d).swapaxes(0, 1)
    mb = mp.reshape(b, n, Q_CHUNK, mp.shape[-1]).swapaxes(0, 1)
    block = jax.checkpoint(fn)
    out = jax.lax.map(lambda a: block(*a), (qb, mb))  # [n, B, C, H, Dv]
    return out.swapaxes(0, 1).reshape(b, t + pad, h, -1)[:, :t]


def prefix_attention(q: jax.Array, k: jax.Array, v: jax.Array, kp: jax.Array, vp: jax.Array, mask: jax.Array,
                     scale: float, softcap: float | None = None, sinks: jax.Array | None = None) -> jax.Array:
    """Attention of continuations over a prefix shared by groups of rows plus their own keys.

    q [B,T,H,D] and k/v [B,T,K,D] are the continuations' own; kp/vp [N,K,P,D] (heads-first, as a cache
    holds them) the prefix of each of N groups of ``B / N`` consecutive rows; mask [B,T,P+T] over prefix slots
    then own slots. One softmax runs over both key sets, so this is exactly attention over
    ``[prefix | own]`` keys, but the prefix is read once per group instead of being copied to every row,
    and the training step carries no cache (the W1 update ~5% faster than fanning a prompt cache out to the
    rows). Long continuations run in blocks of queries (see ``dot_attention``), shorter ones in causal
    blocks (``causal_blocks``: the own keys are causal)."""
    t = q.shape[1]
    if t >= 2 * Q_CHUNK:
        return _by_query_blocks(lambda qc, mc: _prefix_attention(qc, k, v, kp, vp, mc, scale, softcap, sinks),
                                q, mask)
    if t >= 2 * CAUSAL_BLOCK:
        return causal_blocks(lambda qb, kb, vb, mb: _prefix_attention(qb, kb, vb, kp, vp, mb, scale, softcap, sinks),
                             q, k, v, mask, prefix=kp.shape[2])
    return _prefix_attention(q, k, v, kp, vp, mask, scale, softcap, sinks)


def _bmm(a: jax.Array, b: jax.Array, b_contract: int) -> jax.Array:
    """[N, M, C] x [N, C, X] (``b_contract=1``) or [N, X, C] (2) -> [N, M, X] in float32."""
    return jax.lax.dot_general(a, b, (((2,), (b_contract,)), ((0,), (0,))), preferred_element_type=jnp.float32)


def _prefix_attention(q, k, v, kp, vp, mask, scale, softcap, sinks=None):
    b, t, h, d = q.shape
    s = k.shape[1]  # own keys (T, or all of them when the queries are a block)
    n, kh, p, _ = kp.shape
    r, g, dv = b // n, h // kh, v.shape[-1]
    # One layout, [N, K, r, T, G, .], for both score blocks: every product is a 3-D batched matmul without
    # transposes of scores, and the two blocks share their softmax max and sum elementwise.
    qh = q.reshape(n, r, t, kh, g, d).transpose(0, 3, 1, 2, 4, 5)
    kc, vc = (a.reshape(n, r, s, kh, -1).transpose(0, 3, 1, 2, 4) for a in (k, v))  # [N, K, r, S, .]
    sp = _bmm(qh.reshape(n * kh, r * t * g, d), kp.reshape(n * kh, p, d), 2).reshape(n, kh, r, t, g, p) * scale
    sc = _bmm(qh.reshape(n * kh * r, t * g, d), kc.reshape(n * kh * r, s, d), 2).reshape(n, kh, r, t, g, s) * scale
    if softcap:
        sp, sc = (jnp.tanh(a / softcap) * softcap for a in (sp, sc))
    m = mask.reshape(n, 1, r, t, 1, p + s)
    sp = jnp.where(m[..., :p], sp, NEG_INF)
    sc = jnp.where(m[..., p:], sc, NEG_INF)
    top = jnp.maximum(sp.max(-1, keepdims=True), sc.max(-1, keepdims=True))
    sink = None if sinks is None else sinks.astype(jnp.float32).reshape(1, kh, 1, 1, g, 1)
    if sink is not None:
        top = jnp.maximum(top, sink)
    top = jax.lax.stop_gradient(top)
    ep, ec = jnp.exp(sp - top), jnp.exp(sc - top)
    den = ep.sum(-1, keepdims=True) + ec.sum(-1, keepdims=True)
    if sink is not None:
        den = den + jnp.exp(sink - top)
    op = _bmm(ep.astype(v.dtype).reshape(n * kh, r * t * g, p), vp.reshape(n * kh, p, dv), 1)
    oc = _bmm(ec.astype(v.dtype).reshape(n * kh * r, t * g, s), vc.reshape(n * kh * r, s, dv), 1)
    out = (op.reshape(n, kh, r, t, g, dv) + oc.reshape(n, kh, r, t, g, dv)) / den
    return out.transpose(0, 2, 3, 1, 4, 5).reshape(b, t, h, dv).astype(v.dtype)


def _dot_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float,
                   softcap: float | None = None, heads_first: bool = False, sinks: jax.Array | None = None
                   ) -> jax.Array:
    b, t, h, d = q.shape
    kv = k.shape[1 if heads_first else 2]
    if t == 1 and heads_first:
        return _decode_attention(q, k, v, mask, scale, softcap, sinks)
    qg = q.reshape(b, t, kv, h // kv, d)
    kspec = "bksd" if heads_first else "bskd"
    scores = jnp.einsum(f"btkgd,{kspec}->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    if softcap:
        scores = jnp.tanh(scores / softcap) * softcap
    scores = jnp.where(mask[:, None, None, :, :], scores, NEG_INF)
    probs = _softmax(scores, _sink_for(sinks, kv, 0, 0)).astype(v.dtype)
    out = jnp.einsum(f"bkgts,{kspec}->btkgd", probs, v)
    return out.reshape(b, t, h, v.shape[-1])


def _decode_attention(q, k, v, mask, scale, softcap, sinks=None):
    """One query per row over a heads-first cache [B, K, S, D].

    The scores product is written with the cache as the left operand and the tiny per-row query as the right
    one: XLA:CPU's GEMMs then stream the cache once instead of repacking it for every (row, KV head) pair,
    which made the decode step several times slower. The [B, K, S, G] scores are then turned to [B, K, G, S]
    (a small transpose) so the softmax reduces over the minor axis (~15% of a W1 decode step on CPU)."""
    b, _, h, d = q.shape
    kv = k.shape[1]
    qg = q.reshape(b, kv, h // kv, d)
    scores = jnp.einsum("bksd,bkgd->bksg", k, qg, preferred_element_type=jnp.float32) * scale
    scores = jnp.swapaxes(scores, 2, 3)  # [B, K, G, S]
    if softcap:
        scores = jnp.tanh(scores / softcap) * softcap
    scores = jnp.where(mask[:, 0][:, None, None, :], scores, NEG_INF)
    probs = _softmax(scores, _sink_for(sinks, kv, 0)).astype(v.dtype)
    out = jnp.einsum("bkgs,bksd->bkgd", probs, v)
    return out.reshape(b, 1, h, v.shape[-1])


def _proj_in(x: jax.Array, w: jax.Array, batch_invariant: bool = False) -> jax.Array:
    """[B, T, D] x [D, H, K] -> [B, T, H, K] as one 2-D matmul (XLA:CPU's backward is much faster in 2-D)."""
    b, t, d = x.shape
    return invariant.matmul_for(batch_invariant)(x.reshape(b * t, d), w.reshape(d, -1)).reshape(b, t, *w.shape[1:])


def _proj_out(y: jax.Array, w: jax.Array, batch_invariant: bool = False) -> jax.Array:
    """[B, T, H, K] x [H, K, D] -> [B, T, D] as one 2-D matmul."""
    b, t = y.shape[:2]
    return invariant.matmul_for(batch_invariant)(y.reshape(b * t, -1), w.reshape(-1, w.shape[-1])).reshape(b, t, -1)


def write_cache(k: jax.Array, v: jax.Array, cache, layer, index, dtype, heads_first: bool = False,
                size: int | None = None):
    """Write this call's k/v ([B,T,K,D]) into slots ``index..`` of ``layer``; return what to attend over.
    ``index`` is a scalar (every row writes the same slots) or [B] with T == 1 (row ``b`` writes slot
    ``index[b]``). ``size``: return only the first ``size`` slots (keys beyond are masked anyway), so a
    decode step early in a long budget reads a short prefix of the cache, not all of it.

    The cache is stored heads-first, [L, B, K, S, D] (or one [B, K, S, D] buffer per layer), which is the
    layout the decode dots read without a transpose; ``heads_first=False`` returns [B, S, K, D] views for
    callers that want the sequence layout. ``k``/``v`` None: write nothing, read the layer's slots (a layer
    sharing another's keys/values)."""
    if cache is None:
        return k, v, None
    if len(cache) == 3:
        return _write_paged(k, v, cache, layer, index, dtype, heads_first, size)
    k_all, v_all = cache
    # a stacked cache [L, B, K, S, D] is indexed at ``layer``; a split one (``KVCache.split_layers``) hands
    # each layer its own [B, K, S, D] buffer, written in place and read whole (no slice to copy out)
    lead = () if k_all.ndim == 4 else (layer,)
    if k is None:
        pass
    elif jnp.ndim(index) == 1:  # per-row slots (one decode token per row): a scatter, in place in the loop
        at = (*lead, jnp.arange(k.shape[0]), slice(None), index, slice(None))
        k_all = k_all.at[at].set(k[:, 0].astype(k_all.dtype))
        v_all = v_all.at[at].set(v[:, 0].astype(v_all.dtype))
    else:
        new = [jnp.swapaxes(x, 1, 2)[(None,) * len(lead)] for x in (k, v)]  # [(1,) B, K, T, D]
        k_all, v_all = (jax.lax.dynamic_update_slice(buf, x.astype(buf.dtype), (*lead, 0, 0, index, 0))
                        for buf, x in zip((k_all, v_all), new))
    kl, vl = k_all[lead], v_all[lead]
    if size is not None and size < kl.shape[2]:  # attend over the first ``size`` slots only (bucketed window)
        kl, vl = (jax.lax.dynamic_slice_in_dim(a, 0, size, axis=2) for a in (kl, vl))
    kl, vl = kl.astype(dtype), vl.astype(dtype)
    if not heads_first:
        kl, vl = jnp.swapaxes(kl, 1, 2), jnp.swapaxes(vl, 1, 2)
    return kl, vl, (k_all, v_all)


def _write_paged(k, v, cache, layer, index, dtype, heads_first, size):
    """Paged cache (page pools [L, pages, K, P, D], table [B, n]): scatter this call's tokens to their
    rows' pages, then gather the pages of the first ``size`` slots back into a [B, K, S, D] view.

    Rows sharing a page (a group's prompt) only ever read it: the sampler gives each row its own copy of the
    page it writes into (copy-on-write at fork time), so shared pages are never scattered to."""
    k_pool, v_pool, table = cache
    b = table.shape[0]
    ps = k_pool.shape[3]
    if k is not None:
        t = k.shape[1]
        slots = (index[:, None] if jnp.ndim(index) == 1 else index + jnp.arange(t)[None]) + jnp.zeros((b, t),
                                                                                                     jnp.int32)
        page = jnp.take_along_axis(table, slots // ps, axis=1)  # [B, T] pool pages
        off = slots % ps
        k_pool = k_pool.at[layer, page, :, off, :].set(k.astype(k_pool.dtype))
        v_pool = v_pool.at[layer, page, :, off, :].set(v.astype(v_pool.dtype))
    size = table.shape[1] * ps if size is None else size
    n = -(-size // ps)

    def view(pool):
        pages = pool[layer, table[:, :n]]  # [B, n, K, P, D]: one gather, no copy of the layer's pool
        out = jnp.moveaxis(pages, 1, 2).reshape(b, pages.shape[2], n * ps, -1)[:, :, :size].astype(dtype)
        return out if heads_first else jnp.swapaxes(out, 1, 2)

    return view(k_pool), view(v_pool), (k_pool, v_pool, table)


def _scaled(q: jax.Array, scale: jax.Array | None) -> jax.Array:
    """Queries [B, T, H, D] times a per-token ``scale`` [B, T] (in float32, rounded once), or as they are."""
    if scale is None:
        return q
    return (q.astype(jnp.float32) * scale[..., None, None]).astype(q.dtype)


# the attention output gates' functions (``TransformerConfig.gate_act``), on float32 gate logits
GATE_ACTS = {"sigmoid": jax.nn.sigmoid, "softplus": jax.nn.softplus}


class Attention(nnx.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, *, rngs: nnx.Rngs,
                 rope_theta: float = 10000.0, rope_scaling: dict | None = None, qkv_bias: bool = False,
                 qk_norm: bool = False, norm_eps: float = 1e-6, norm_offset: float = 0.0,
                 query_scale: float | None = None, param_dtype=jnp.float32, dtype=jnp.float32,
                 out_scale: float = 1.0, softcap: float | None = None, qk_norm_whole: bool = False,
                 sinks: bool = False, out_bias: bool = False, rope_dim: int = 0, impl: str = "auto",
                 invariant: bool = False, rope_interleave: bool = False, qk_norm_after_rope: bool = False,
                 gate: bool = False, length_scale: tuple[float, int] | None = None, key_multiplier: float = 1.0,
                 v_dim: int = 0, value_scale: float = 1.0, k_eq_v: bool = False, v_norm: bool = False,
                 kv_reuse: bool = False, norm_weight: bool = True, head_gate: bool = False,
                 gate_act: str = "sigmoid", gate_bias: bool = False, clip_qkv: float = 0.0):
        """``qk_norm_whole``: q/k RMSNorm over all heads' projection at once (OLMo-2) instead of per head.
        ``sinks``: a learned per-head logit in every softmax (gpt-oss). ``out_bias``: o-projection bias.
        ``rope_dim``: rotate only the leading ``rope_dim`` dims of each head (0: all); ``rope_interleave``:
        rotate adjacent pairs (ERNIE 4.5; q and k come out alike permuted, scores unchanged);
        ``qk_norm_after_rope``: the q/k norms see the rotated heads (Hunyuan). ``gate``: the attention output is
        scaled by ``sigmoid(x W_gate)`` [H, D] before the o-projection (Qwen3.5, Qwen3-Next). ``length_scale``
        (beta, L): rotated queries times ``1 + beta * log(1 + floor(position / L))`` (Ministral 3).
        ``key_multiplier``: keys times it after their projection (Falcon-H1's muP; cached so). ``v_dim``: the
        value heads' size (0: ``head_dim``); ``value_scale``: values times it after their projection, cached so
        (MiMo-V2-Flash). ``k_eq_v``: no value projection, the values are the keys' projection before their norm
        and rotary; ``v_norm``: values RMS-normalised per head without a scale (both Gemma 4). ``kv_reuse``: no
        key/value projections: the layer attends over the keys/values already in its cache slot, another layer's
        (Gemma 4 E2B/E4B's shared layers; it always runs with a cache, and writes nothing). ``norm_weight`` off:
        q/k norms without a weight (nanochat). ``head_gate``: each head's output scaled by one scalar,
        ``sigmoid(x W_head_gate)`` [H], before the o-projection (LFM3). ``gate_act``: both gates' function, sigmoid
        or softplus (Laguna's); ``gate_bias``: a learned per-head bias added to the gate's logits (Beam).
        ``clip_qkv``: the q, k and v projections (with their biases) clamped to [-clip_qkv, clip_qkv] (OLMo; 0:
        none). A ``rope`` table of three (``__call__``) carries a per-token scale of the queries after their
        rotary (the layers without rotary of ``TransformerConfig.nope_query_scale``). ``impl``: attention
        kernels (``kernels.IMPLS``; each call routed by ``kernels.route``). ``invariant``: batch-invariant
        arithmetic (``invariant``; no kernels)."""
        self.invariant = invariant
        if gate_act not in GATE_ACTS:
            raise ValueError(f"gate_act: {gate_act!r} is not one of {', '.join(GATE_ACTS)}")
        self.gate_act = gate_act
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.v_dim = vd = v_dim or head_dim
        self.value_scale = float(value_scale)
        if k_eq_v and (vd != head_dim or qkv_bias):
            raise ValueError("k_eq_v: values that are the keys' projection are as wide as keys, without biases")
        self.k_eq_v, self.v_norm_eps = k_eq_v, (norm_eps if v_norm else None)
        self.kv_reuse = kv_reuse
        self.impl = impl
        self.dtype = dtype
        self.scale = query_scale if query_scale is not None else head_dim**-0.5
        self.softcap = softcap
        self.qk_norm_whole = qk_norm_whole
        self.rope_interleave = rope_interleave
        self.qk_norm_after_rope = qk_norm_after_rope
        self.length_scale = None if length_scale is None else (float(length_scale[0]), int(length_scale[1]))
        self.key_multiplier = float(key_multiplier)
        self.clip_qkv = float(clip_qkv)
        # Kept as hashable static data (an array attribute would become NNX state).
        self.rope = (rope_dim or head_dim, float(rope_theta), freeze(rope_scaling))
        self.q = param(rngs, (d_model, n_heads, head_dim), ("embed", "heads", "head_dim"), d_model, param_dtype)
        self.k = (None if kv_reuse else
                  param(rngs, (d_model, n_kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), d_model,
                        param_dtype))
        self.v = (None if k_eq_v or kv_reuse else
                  param(rngs, (d_model, n_kv_heads, vd), ("embed", "kv_heads", "head_dim"), d_model, param_dtype))
        self.o = param(rngs, (n_heads, vd, d_model), ("heads", "head_dim", "embed"), n_heads * vd,
                       param_dtype, scale=out_scale)
        # (not "gate": LoRA's ``gate`` target names the MLP's)
        self.q_gate = (param(rngs, (d_model, n_heads, vd), ("embed", "heads", "head_dim"), d_model,
                             param_dtype) if gate else None)
        self.h_gate = param(rngs, (d_model, n_heads), ("embed", "heads"), d_model, param_dtype) if head_gate else None
        if gate_bias and not (gate or head_gate):
            raise ValueError("gate_bias: a bias of the attention output gate, which this layer does not have")
        self.gate_bias = zeros((n_heads,), ("heads",), param_dtype) if gate_bias else None
        if kv_reuse and (qkv_bias or qk_norm_whole or qk_norm_after_rope or key_multiplier != 1.0 or k_eq_v):
            raise ValueError("kv_reuse: a layer sharing another's keys/values takes no key/value switches (biases, "
                             "whole-projection or after-rope norms, key multiplier, k_eq_v)")
        if qkv_bias:
            self.q_bias = zeros((n_heads, head_dim), ("heads", "head_dim"), param_dtype)
            self.k_bias = zeros((n_kv_heads, head_dim), ("kv_heads", "head_dim"), param_dtype)
            self.v_bias = zeros((n_kv_heads, vd), ("kv_heads", "head_dim"), param_dtype)
        else:
            self.q_bias = self.k_bias = self.v_bias = None
        if qk_norm:
            qd, kd = (n_heads * head_dim, n_kv_heads * head_dim) if qk_norm_whole else (head_dim, head_dim)
            norm = functools.partial(RMSNorm, eps=norm_eps, offset=norm_offset, param_dtype=param_dtype,
                                     invariant=invariant, weight=norm_weight)
            self.q_norm = norm(qd)
            self.k_norm = None if kv_reuse else norm(kd)
        else:
            self.q_norm = self.k_norm = None
        self.sinks = nnx.Param(jnp.zeros((n_heads,), jnp.float32), axes=("heads",)) if sinks else None
        self.o_bias = zeros((d_model,), ("embed",), param_dtype) if out_bias else None

    def _route(self, kind: str, q: jax.Array, mask: jax.Array) -> kernels.Route:
        if self.impl == "xla" or self.v_dim != self.head_dim:  # (the kernels take values as wide as keys)
            return kernels.Route("xla")
        ctx = current()
        return kernels.route(self.impl, kind, dtype=q.dtype, head_dim=self.head_dim, softcap=self.softcap,
                             sinks=self.sinks is not None, q_len=q.shape[1], k_len=mask.shape[-1],
                             sharded=ctx is not None and ctx.mesh.size > 1)

    def _invariant_attention(self, q, k, v, mask, cache, layer, index, prefix, sinks):
        """``__call__``'s attention in batch-invariant arithmetic: every path (no cache, a cache, a shared
        prefix) hands ``invariant.attention`` its keys in slot order from slot 0."""
        if prefix is not None:  # [prefix of the row's group | own keys]
            r = q.shape[0] // prefix[0].shape[0]
            kp, vp = (jnp.repeat(jnp.swapaxes(a, 1, 2), r, axis=0).astype(self.dtype) for a in prefix)
            k, v = jnp.concatenate([kp, k], axis=1), jnp.concatenate([vp, v], axis=1)
        else:
            k, v, cache = write_cache(k, v, cache, layer, index, self.dtype, False, mask.shape[-1])
        return invariant.attention(q, k, v, mask, self.scale, self.softcap, sinks), cache

    def project_qkv(self, x: jax.Array, positions: jax.Array, rope=None):
        """``rope``: the forward's (cos, sin) table for ``positions`` (``rope_table``); computed here from this
        layer's own frequencies when not given."""
        dt = self.dtype
        table = rope if rope is not None else rope_table(positions, *rope_for(*self.rope))
        table, q_scale = (table[:2], table[2]) if len(table) == 3 else (table, None)
        if self.kv_reuse:  # queries only: the keys/values are another layer's, in the cache
            return _scaled(self._project_q(x, positions, table), q_scale), None, None
        q, k = (adapt(self, n, x, _proj_in(x, getattr(self, n)[...].astype(dt), self.invariant)) for n in "qk")
        v = k if self.k_eq_v else adapt(self, "v", x, _proj_in(x, self.v[...].astype(dt), self.invariant))
        if self.q_bias is not None:
            q = q + self.q_bias[...].astype(dt)
            k = k + self.k_bias[...].astype(dt)
            v = v + self.v_bias[...].astype(dt)
        if self.clip_qkv:
            q, k, v = (jnp.clip(a, -self.clip_qkv, self.clip_qkv) for a in (q, k, v))
        k = times(k, self.key_multiplier)
        v = times(v, self.value_scale)
        if self.v_norm_eps is not None:  # (float32, as the reference's norms)
            vf = v.astype(jnp.float32)
            v = (vf * jax.lax.rsqrt(jnp.mean(vf * vf, axis=-1, keepdims=True) + self.v_norm_eps)).astype(v.dtype)
        if self.qk_norm_after_rope:
            q, k = (apply_rope(a, table, interleave=self.rope_interleave) for a in (q, k))
        if self.q_norm is not None and self.qk_norm_whole:
            q, k = (n(a.reshape(*a.shape[:2], -1)).reshape(a.shape) for n, a in ((self.q_norm, q), (self.k_norm, k)))
        elif self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if not self.qk_norm_after_rope:
            q, k = (apply_rope(a, table, interleave=self.rope_interleave) for a in (q, k))
        q = _scaled(self._length_scaled(q, positions), q_scale)
        q = constrain(q, ("batch", "seq", "act_heads", None))
        k = constrain(k, ("batch", "seq", "act_kv_heads", None))
        v = constrain(v, ("batch", "seq", "act_kv_heads", None))
        return q, k, v

    def _project_q(self, x, positions, table):
        """The queries of a layer sharing another's keys/values (per-head norm, then rotary, as ``project_qkv``)."""
        q = adapt(self, "q", x, _proj_in(x, self.q[...].astype(self.dtype), self.invariant))
        if self.q_bias is not None:
            q = q + self.q_bias[...].astype(self.dtype)
        if self.clip_qkv:
            q = jnp.clip(q, -self.clip_qkv, self.clip_qkv)
        if self.q_norm is not None:
            q = self.q_norm(q)
        q = self._length_scaled(apply_rope(q, table, interleave=self.rope_interleave), positions)
        return constrain(q, ("batch", "seq", "act_heads", None))

    def _length_scaled(self, q, positions):
        if self.length_scale is None:
            return q
        beta, span = self.length_scale  # by absolute position: the same for a token however a row is split
        s = 1.0 + beta * jnp.log1p(jnp.floor(positions.astype(jnp.float32) / span))
        return q * s[..., None, None].astype(q.dtype)

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array, cache=None, layer=None, index=None,
                 rope=None, prefix=None):
        """Without ``cache``: attend within ``x``. With ``cache=(k_all, v_all)`` ([L,B,K,S,D] each), write this
        call's keys/values at slots ``index..index+T`` of layer ``layer`` and attend over that layer's cache.
        With ``prefix=(k, v)`` ([N,K,P,D], this layer's cache of N shared prefixes): attend over the prefix
        of the row's group, then within ``x`` (see ``prefix_attention``). Returns (out, cache)."""
        q, k, v = self.project_qkv(x, positions, rope)
        if self.kv_reuse and (cache is None or prefix is not None):
            raise ValueError("a layer sharing another layer's keys/values attends over a cache holding them (not "
                             "without one, nor over a shared prefix)")
        sinks = None if self.sinks is None else self.sinks[...]
        if self.invariant:
            out, cache = self._invariant_attention(q, k, v, mask, cache, layer, index, prefix, sinks)
        elif prefix is not None:
            kp, vp = (a.astype(self.dtype) for a in prefix)
            r = self._route("prefix", q, mask)
            if r.path == "cudnn":
                out = kernels.cudnn_prefix_attention(q, k, v, kp, vp, mask, self.scale, r.emulated)
            else:
                out = prefix_attention(q, k, v, kp, vp, mask, self.scale, self.softcap, sinks)
        else:
            heads_first = cache is not None
            paged = cache is not None and len(cache) == 3
            k, v, cache = write_cache(k, v, cache, layer, index, self.dtype, heads_first, mask.shape[-1])
            kind = "train" if not heads_first else ("prefill" if q.shape[1] > 1 else
                                                    "paged_decode" if paged else "decode")
            r = self._route(kind, q, mask)
            if r.path == "cudnn":
                out = kernels.cudnn_attention(q, k, v, mask, self.scale, heads_first, r.emulated)
            elif r.path == "pallas":
                out = kernels.pallas_decode(q, k, v, mask, self.scale, interpret=r.emulated)
            else:  # without a cache the keys are the sequence itself, causal: causal blocks apply
                out = dot_attention(q, k, v, mask, self.scale, self.softcap, heads_first, causal=not heads_first,
                                    sinks=sinks)
        bias = 0.0 if self.gate_bias is None else self.gate_bias[...].astype(self.dtype)[:, None]  # [H, 1]
        if self.q_gate is not None:
            gate = _proj_in(x, self.q_gate[...].astype(self.dtype), self.invariant) + bias
            out = (out.astype(jnp.float32) * GATE_ACTS[self.gate_act](gate.astype(jnp.float32))).astype(out.dtype)
        if self.h_gate is not None:  # one scalar per head: [B, T, H] over the heads' values
            b, t, d = x.shape
            gate = invariant.matmul_for(self.invariant)(x.reshape(b * t, d), self.h_gate[...].astype(self.dtype))
            gate = GATE_ACTS[self.gate_act]((gate.reshape(b, t, -1, 1) + bias).astype(jnp.float32))
            out = (out.astype(jnp.float32) * gate).astype(out.dtype)
        out = adapt(self, "o", out, _proj_out(out, self.o[...].astype(self.dtype), self.invariant))
        if self.o_bias is not None:
            out = out + self.o_bias[...].astype(self.dtype)
        return out, cache
