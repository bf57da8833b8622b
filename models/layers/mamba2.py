"""Mamba-2 layers (Granite 4.0-H; the state-space mixer of the hybrid models): a recurrent state instead of a KV
cache, kept like Gated DeltaNet's.

Per row and head h (of H, each reading state group h // (H / G)), with the causal depthwise convolution (kernel
K, SiLU) over the x, B and C projections and ``dt_t = softplus(dt_proj(x) + dt_bias)`` clamped to ``dt_limit``:

    S <- exp(-exp(A_log) dt_t) S + B_t (dt_t x_t)^T;   y_t = S^T C_t + D x_t

(S [N, P]: state size by head size), then ``y * SiLU(z)`` RMS-normalised over each group's heads (or, for
Falcon-H1, normalised before the gate or not at all: ``NORMS``) and projected back. This is the gated delta
rule's recurrence without the delta correction (key B, value dt x, query C, decay dt A), so it runs on the
same two forms (``gated_deltanet.chunked_delta_rule`` / ``recurrent_delta_rule`` with ``delta=False``), the
same compaction of each row's valid tokens (a row's numbers depend on its valid tokens alone: the sampler's
log-probs equal the trainer's by construction) and the same cache entries: the last K - 1 convolution inputs
and the state [H, N, P] per row (``LinearAttnConfig``: k_heads G, k_dim N, v_heads H, v_dim P)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from reasoning_rl.sharding import constrain

from ..lora import adapt
from .gated_deltanet import _take, causal_conv, chunked_delta_rule, compact, recurrent_delta_rule
from .init import param

# where the output's RMSNorm sits: after the SiLU(z) gate (Mamba-2), before it (Falcon-H1's
# mamba_norm_before_gate), or no norm at all (Falcon-H1 without mamba_rms_norm)
NORMS = ("gated", "before_gate", "none")

class Mamba2(nnx.Module):
    """One Mamba-2 mixer. Parameters (the checkpoint's fused in_proj and conv1d cut per part, so tensor
    parallelism splits heads): z/x [D, H, P], B/C [D, G, N], dt [D, H], conv_x [K, H, P], conv_B/conv_C [K, G, N]
    (and their biases), dt_bias/A_log/D [H], norm [H, P], o [H, P, D]. LoRA target o adapts the output
    projection, as in the attention layers."""

    def __init__(self, d_model: int, groups: int, heads: int, state: int, head_dim: int, conv: int, *,
                 rngs: nnx.Rngs, conv_bias: bool = True, dt_limit: tuple[float, float] = (0.0, float("inf")),
                 norm_eps: float = 1e-6, param_dtype=jnp.float32, dtype=jnp.float32, out_scale: float = 1.0,
                 norm: str = "gated", multipliers: tuple[float, ...] = (1.0,) * 5):
        if heads % groups:
            raise ValueError(f"mamba2: {heads} heads are not a multiple of {groups} groups")
        if norm not in NORMS:
            raise ValueError(f"mamba2: norm {norm!r} is not one of {', '.join(NORMS)}")
        if len(multipliers) != 5:
            raise ValueError(f"mamba2: multipliers are the z, x, B, C and dt projections' five, got {multipliers}")
        self.norm_kind = norm
        self.multipliers = tuple(float(m) for m in multipliers)  # z, x, B, C, dt
        self.groups, self.heads, self.state, self.head_dim, self.kernel = groups, heads, state, head_dim, conv
        self.dt_limit, self.eps, self.dtype = tuple(float(v) for v in dt_limit), norm_eps, dtype
        hd, gd = ("embed", "heads", "head_dim"), ("embed", "kv_heads", "head_dim")
        self.z = param(rngs, (d_model, heads, head_dim), hd, d_model, param_dtype)
        self.x = param(rngs, (d_model, heads, head_dim), hd, d_model, param_dtype)
        self.B = param(rngs, (d_model, groups, state), gd, d_model, param_dtype)
        self.C = param(rngs, (d_model, groups, state), gd, d_model, param_dtype)
        self.dt = param(rngs, (d_model, heads), ("embed", "heads"), d_model, param_dtype)
        self.conv_x = param(rngs, (conv, heads, head_dim), (None, "heads", "head_dim"), conv, param_dtype)
        self.conv_B = param(rngs, (conv, groups, state), (None, "kv_heads", "head_dim"), conv, param_dtype)
        self.conv_C = param(rngs, (conv, groups, state), (None, "kv_heads", "head_dim"), conv, param_dtype)
        if conv_bias:
            self.conv_x_bias = nnx.Param(jnp.zeros((heads, head_dim), param_dtype), axes=("heads", "head_dim"))
            self.conv_B_bias = nnx.Param(jnp.zeros((groups, state), param_dtype), axes=("kv_heads", "head_dim"))
            self.conv_C_bias = nnx.Param(jnp.zeros((groups, state), param_dtype), axes=("kv_heads", "head_dim"))
        self.conv_bias = conv_bias
        self.dt_bias = nnx.Param(jnp.ones((heads,), param_dtype), axes=("heads",))
        # A = 1..H, as the reference initialises it (decay rates spread over the heads)
        self.A_log = nnx.Param(jnp.log(jnp.arange(1, heads + 1, dtype=jnp.float32)).astype(param_dtype),
                               axes=("heads",))
        self.D = nnx.Param(jnp.ones((heads,), param_dtype), axes=("heads",))
        self.norm = (nnx.Param(jnp.ones((heads, head_dim), param_dtype), axes=("heads", "head_dim"))
                     if norm != "none" else None)
        self.o = param(rngs, (heads, head_dim, d_model), ("heads", "head_dim", "embed"), heads * head_dim,
                       param_dtype, scale=out_scale)

    def __call__(self, x: jax.Array, valid: jax.Array, cache=None, segments: jax.Array | None = None):
        """As ``GatedDeltaNet.__call__``: x [B, T, D], valid [B, T], ``cache`` (conv [B, K-1, C], state
        [B, H, N, P]) or None, ``segments`` (packed rows, no cache). Returns (out, the cache entry or None)."""
        if segments is not None and cache is not None:
            raise ValueError("segments (packed rows) take no cache")
        dt = self.dtype
        b, t, _ = x.shape
        h, p, g, n = self.heads, self.head_dim, self.groups, self.state
        w = {k: getattr(self, k)[...].astype(dt) for k in ("z", "x", "B", "C", "dt")}

        def proj(k, spec="btd,dhk->bthk"):  # times its muP multiplier (Falcon-H1) in float32, rounded once
            y, m = jnp.einsum(spec, x, w[k]), self.multipliers[("z", "x", "B", "C", "dt").index(k)]
            return y if m == 1.0 else (y.astype(jnp.float32) * m).astype(y.dtype)

        parts = [proj(k).reshape(b, t, -1) for k in ("x", "B", "C")]
        kernel = jnp.concatenate([getattr(self, f"conv_{k}")[...].reshape(self.kernel, -1) for k in "xBC"], -1)
        bias = (jnp.concatenate([getattr(self, f"conv_{k}_bias")[...].reshape(-1) for k in "xBC"])
                if self.conv_bias else None)
        order, inverse, count = compact(valid)
        seg = None if segments is None else _take(segments, order)
        mixed = _take(jnp.concatenate(parts, axis=-1), order)
        conv, new_conv = causal_conv(mixed, kernel, count, None if cache is None else cache[0], seg, bias)

        xc, bc, cc = jnp.split(conv.astype(jnp.float32), [h * p, h * p + g * n], axis=-1)
        xh = xc.reshape(b, t, h, p)
        r = h // g
        key = jnp.repeat(bc.reshape(b, t, g, n), r, axis=2)
        query = jnp.repeat(cc.reshape(b, t, g, n), r, axis=2)
        live = jnp.arange(t)[None] < count[:, None]  # compacted: the first ``count`` are valid
        step = _take(proj("dt", "btd,dh->bth"), order).astype(jnp.float32)
        step = jnp.clip(jax.nn.softplus(step + self.dt_bias[...].astype(jnp.float32)), *self.dt_limit)
        step = jnp.where(live[..., None], step, 0.0)  # an invalid token leaves the state as it was
        decay = -jnp.exp(self.A_log[...].astype(jnp.float32)) * step
        s0 = (jnp.zeros((b, h, n, p), jnp.float32) if cache is None else cache[1].astype(jnp.float32))
        rule = recurrent_delta_rule if t < 8 else chunked_delta_rule
        # value dt x, decay dt A: both zero at an invalid token, so no per-token gate (beta) is needed
        y, state = rule(query, key, xh * step[..., None], decay, jnp.ones_like(step), s0, seg=seg, delta=False)
        y = y + self.D[...].astype(jnp.float32)[:, None] * xh
        y = _take(y, inverse)  # back in sequence order [B, T, H, P]

        gate = jax.nn.silu(proj("z").astype(jnp.float32))
        if self.norm_kind == "none":
            out = (y * gate).astype(dt)
        else:  # RMS-normalised over each group's heads: the gated y ("gated"), or y then gated ("before_gate")
            if self.norm_kind == "gated":
                y = y * gate
            y = y.reshape(b, t, g, r * p)
            y = (y * jax.lax.rsqrt(jnp.mean(y * y, axis=-1, keepdims=True) + self.eps)).reshape(b, t, h, p)
            if self.norm_kind == "gated":
                out = self.norm[...].astype(dt) * y.astype(dt)
            else:  # the reference scales by the weight in float32, then gates, then rounds
                out = (self.norm[...].astype(jnp.float32) * y * gate).astype(dt)
        out = adapt(self, "o", out, jnp.einsum("bthk,hkd->btd", out, self.o[...].astype(dt)))
        out = constrain(out, ("batch", "seq", "act_embed"))
        return out, (None if cache is None else (new_conv.astype(cache[0].dtype), state))
