"""DeepSeek Sparse Attention (DeepSeek-V3.2): a lightning indexer picks, for each query, the ``index_topk`` keys
its attention may see.

Per query t and key s the indexer scores ``sum_h w[t, h] * relu(q[t, h] . k[s] / sqrt(D))`` with its own small
projections (``q`` from the query latent, one key ``k`` per token, LayerNorm-ed; both rotated on their leading
rotary dims; the head weights ``w`` from the token, over sqrt(H)), all in float32. A query attends to the keys
whose score is among its ``index_topk`` highest (every valid key while it has fewer), a subset of the causal
mask: the selection is a boolean mask ANDed into it, so the attention itself is MLA's unchanged. The selection is
not differentiated (the reference computes it without gradients), and a key tied with the ``index_topk``-th score
is kept (a threshold on the k-th score: the same set however the scores' order is computed, so the trainer's
selection equals the sampler's).

The indexer keys are cached beside MLA's rotary keys (``KVCache.v``'s last ``index_dim`` entries), so every cache
layout (contiguous, paged, fanned out, refilled) carries them unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# queries scored per block (long sequences): the [block, heads, keys] float32 scores are the indexer's working
# set, kept under WORKING floats a row (at 64 heads and 32k keys, 32 queries a block: 256 MiB)
BLOCK = 128
WORKING = 1 << 26


def layer_norm(x: jax.Array, weight: jax.Array, bias: jax.Array, eps: float = 1e-6) -> jax.Array:
    """LayerNorm over the last axis in float32 (the indexer's key norm: ``nn.LayerNorm``, with a bias)."""
    xf = x.astype(jnp.float32)
    mu = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mu), axis=-1, keepdims=True)
    out = (xf - mu) * jax.lax.rsqrt(var + eps) * weight.astype(jnp.float32) + bias.astype(jnp.float32)
    return out.astype(x.dtype)


def select(q: jax.Array, k: jax.Array, w: jax.Array, mask: jax.Array, topk: int) -> jax.Array:
    """The keys each query may attend to: q [B, T, H, D] and w [B, T, H] (the head weights, already over
    sqrt(H)), k [B, S, D], mask [B, T, S] (the causal, padding and packing mask) -> [B, T, S] bool, a subset of
    ``mask`` holding each query's ``topk`` best-scored keys."""
    q, k, w = (jax.lax.stop_gradient(a.astype(jnp.float32)) for a in (q, k, w))
    scale = q.shape[-1] ** -0.5
    kk = min(topk, mask.shape[-1])

    def block(qb, wb, mb):
        s = jax.nn.relu(jnp.einsum("bthd,bsd->bths", qb, k) * scale)
        s = jnp.einsum("bths,bth->bts", s, wb)
        s = jnp.where(mb, s, -jnp.inf)
        kth = jax.lax.top_k(s, kk)[0][..., -1:]
        return mb & (s >= kth)

    t = q.shape[1]
    size = max(8, min(BLOCK, WORKING // (q.shape[2] * mask.shape[-1])))
    if t <= size:
        return block(q, w, mask)
    pad = -t % size
    n = (t + pad) // size
    qp, wp, mp = (jnp.pad(a, ((0, 0), (0, pad)) + ((0, 0),) * (a.ndim - 2)) for a in (q, w, mask))
    cut = [a.reshape(a.shape[0], n, size, *a.shape[2:]).swapaxes(0, 1) for a in (qp, wp, mp)]
    out = jax.lax.map(lambda a: block(*a), tuple(cut))  # [n, B, size, S]
    return out.swapaxes(0, 1).reshape(q.shape[0], t + pad, -1)[:, :t]
