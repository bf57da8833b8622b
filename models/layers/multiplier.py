"""The muP parametrisations' scalar multipliers (Granite's, Falcon-H1's): an activation times a constant."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def times(a: jax.Array, m: float) -> jax.Array:
    """``a * m`` in float32, rounded once to ``a``'s dtype, as the references multiply a tensor by a Python
    float; ``a`` itself for 1 (a model without the multiplier computes exactly what it did)."""
    return a if m == 1.0 else (a.astype(jnp.float32) * m).astype(a.dtype)
