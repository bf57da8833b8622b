"""Parameter creation with logical axes attached, so sharding never lives in layer code."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def drawn(x: jax.Array) -> jax.Array:
    """A random draw kept apart from what is computed from it (a scale, a log). Under ``jit`` XLA may fold a
    scale into the draw's own constant factor: a last-bit change in a quarter of the weights, by fusion flags
    and backend. Kept apart, a model drawn in one program (``create``) holds the weights the op-by-op
    construction gives, so a seeded run starts from the same model however its init is compiled."""
    return jax.lax.optimization_barrier(x)


def param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], fan_in: int, dtype=jnp.float32,
          *, scale: float = 1.0) -> nnx.Param:
    """A weight drawn from a truncated normal with std ``scale / sqrt(fan_in)``."""
    std = scale / (fan_in**0.5)
    w = drawn(jax.random.truncated_normal(rngs.params(), -2.0, 2.0, shape, jnp.float32)) * std
    return nnx.Param(w.astype(dtype), axes=axes)


def zeros(shape: tuple[int, ...], axes: tuple[str, ...], dtype=jnp.float32) -> nnx.Param:
    return nnx.Param(jnp.zeros(shape, dtype), axes=axes)
