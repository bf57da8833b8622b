"""Gated feed-forward block (SwiGLU, or GeGLU with the tanh-approximated GELU for Gemma)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from reasoning_rl.sharding import constrain

from ..lora import adapt
from .init import param

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


def activation_fn(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: unsupported value {name!r} (supported: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


class MLP(nnx.Module):
    def __init__(self, d_model: int, ffn_dim: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32, dtype=jnp.float32,
                 out_scale: float = 1.0, activation: str = "silu"):
        activation_fn(activation)
        self.dtype = dtype
        self.activation = activation
        self.gate = param(rngs, (d_model, ffn_dim), ("embed", "mlp"), d_model, param_dtype)
        self.up = param(rngs, (d_model, ffn_dim), ("embed", "mlp"), d_model, param_dtype)
        self.down = param(rngs, (ffn_dim, d_model), ("mlp", "embed"), ffn_dim, param_dtype, scale=out_scale)

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = self.dtype
        # 2-D matmuls: XLA:CPU lays out the backward of [B*T, D] products far better than of [B, T, D] ones
        # (about 2x less time in the MLP's gradient); on accelerators the reshape is free.
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        g = adapt(self, "gate", x2, x2 @ self.gate[...].astype(dt))
        u = adapt(self, "up", x2, x2 @ self.up[...].astype(dt))
        h = activation_fn(self.activation)(g) * u
        h = constrain(h.reshape(*lead, h.shape[-1]), ("batch", "seq", "act_mlp")).reshape(h.shape)
        return adapt(self, "down", h, h @ self.down[...].astype(dt)).reshape(*lead, -1)
