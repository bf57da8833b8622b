"""Parameter creation with logical axes attached, so sharding never lives in layer code."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], fan_in: int, dtype=jnp.float32,
          *, scale: float = 1.0) -> nnx.Param:
    """A weight drawn from a truncated normal with std ``scale / sqrt(fan_in)``."""
    std = scale / (fan_in**0.5)
    w = jax.random.truncated_normal(rngs.params(), -2.0, 2.0, shape, jnp.float32) * std
    return nnx.Param(w.astype(dtype), axes=axes)


def zeros(shape: tuple[int, ...], axes: tuple[str, ...], dtype=jnp.float32) -> nnx.Param:
    return nnx.Param(jnp.zeros(shape, dtype), axes=axes)
