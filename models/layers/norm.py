"""RMSNorm, computed in float32 whatever the compute dtype (the variance of bf16 activations is noisy)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .invariant import fixed_order_sum


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, *, eps: float = 1e-6, offset: float = 0.0, param_dtype=jnp.float32,
                 invariant: bool = False, center: bool = False, weight: bool = True, bias: bool = False):
        # ``offset``: Gemma stores ``w`` and scales by ``1 + w``; everybody else stores the scale itself.
        # ``center``: subtract the mean first, a LayerNorm without a bias (Cohere's). ``weight`` off: no scale at
        # all (nanochat's norms). ``bias``: a learned bias added last (with ``center``, a LayerNorm: Jais-2's)
        self.eps = eps
        self.offset = offset
        self.center = center
        self.invariant = invariant  # the mean in a fixed summation order (models/layers/invariant.py)
        init = jnp.zeros if offset else jnp.ones
        self.scale = nnx.Param(init((dim,), param_dtype), axes=("norm",)) if weight else None
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), axes=("norm",)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        xf = x.astype(jnp.float32)
        if self.center:
            if self.invariant:
                raise ValueError("a centred norm (norm_center) has no batch-invariant form here")
            xf = xf - jnp.mean(xf, axis=-1, keepdims=True)
        if self.invariant:
            ms = (fixed_order_sum(xf * xf) / xf.shape[-1])[..., None]
        else:
            ms = jnp.mean(xf * xf, axis=-1, keepdims=True)
        xf = xf * jax.lax.rsqrt(ms + self.eps)
        if self.scale is not None:
            xf = xf * (self.offset + self.scale[...].astype(jnp.float32))
        if self.bias is not None:
            xf = xf + self.bias[...].astype(jnp.float32)
        return xf.astype(dtype)
