"""LFM2's gated short convolution: a layer whose only memory is its last K - 1 inputs (K = 3 in the releases).

    B, C, x = in_proj(h);   y = C * conv(B * x);   out = out_proj(y)

with a depthwise causal convolution over the gated ``B * x`` (no activation). It keeps no recurrent state, so it
reuses the linear-attention layers' machinery as a degenerate case (``LinearAttnConfig`` kind ``shortconv``: one
"value head" of ``d_model`` channels, a zero-size state): the compaction of a row's valid tokens (pads change
nothing: the sampler's log-probs equal the trainer's by construction), the convolution helper and its cache entry
``KVCache.conv`` (the last K - 1 inputs per row), packed-row restarts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from reasoning_rl.sharding import constrain

from .gated_deltanet import _take, causal_conv, compact
from .init import param


class ShortConv(nnx.Module):
    """Parameters (the checkpoint's in_proj cut per part, so tensor parallelism splits channels): B/C/x [D, D],
    conv [K, D], out [D, D]. Not a LoRA target (the attention layers' q/k/v/o are)."""

    def __init__(self, d_model: int, conv: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32, dtype=jnp.float32,
                 out_scale: float = 1.0):
        self.kernel, self.dtype = conv, dtype
        for n in ("B", "C", "x"):
            setattr(self, n, param(rngs, (d_model, d_model), ("embed", "mlp"), d_model, param_dtype))
        self.conv = param(rngs, (conv, d_model), (None, "mlp"), conv, param_dtype)
        self.out = param(rngs, (d_model, d_model), ("mlp", "embed"), d_model, param_dtype, scale=out_scale)

    def __call__(self, x: jax.Array, valid: jax.Array, cache=None, segments: jax.Array | None = None):
        """As ``GatedDeltaNet.__call__``: x [B, T, D], valid [B, T], ``cache`` (conv [B, K-1, D], state: left as
        it is) or None, ``segments`` (packed rows, no cache). Returns (out, the cache entry or None)."""
        if segments is not None and cache is not None:
            raise ValueError("segments (packed rows) take no cache")
        dt = self.dtype
        b_, c_, x_ = (jnp.einsum("btd,de->bte", x, getattr(self, n)[...].astype(dt)) for n in ("B", "C", "x"))
        order, inverse, count = compact(valid)
        seg = None if segments is None else _take(segments, order)
        conv, new_conv = causal_conv(_take(b_ * x_, order), self.conv[...], count,
                                     None if cache is None else cache[0], seg, silu=False)
        y = c_ * _take(conv, inverse)
        out = constrain(jnp.einsum("btd,de->bte", y, self.out[...].astype(dt)), ("batch", "seq", "act_embed"))
        return out, (None if cache is None else (new_conv.astype(cache[0].dtype), cache[1]))
