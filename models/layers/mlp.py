"""Gated feed-forward block (SwiGLU, GeGLU with the tanh-approximated GELU for Gemma, or gpt-oss's clamped
SwiGLU), with optional biases."""

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


GLUS = (*ACTIVATIONS, "clamped_swiglu")


def activation_fn(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: unsupported value {name!r} (supported: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def glu_fn(name: str, alpha: float = 1.702, limit: float = 7.0):
    """``f(gate, up)`` -> the gated hidden activation. ``clamped_swiglu`` (gpt-oss): the gate clipped above at
    ``limit``, the up projection to [-limit, limit], and ``(up + 1) * gate * sigmoid(alpha * gate)``."""
    if name == "clamped_swiglu":
        def clamped(g, u):
            g = jnp.minimum(g, limit)
            u = jnp.clip(u, -limit, limit)
            return (u + 1) * (g * jax.nn.sigmoid(g * alpha))
        return clamped
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: unsupported value {name!r} (supported: {', '.join(GLUS)})")
    act = ACTIVATIONS[name]
    return lambda g, u: act(g) * u


class MLP(nnx.Module):
    def __init__(self, d_model: int, ffn_dim: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32, dtype=jnp.float32,
                 out_scale: float = 1.0, activation: str = "silu", glu_args: tuple[float, float] = (1.702, 7.0)):
        glu_fn(activation, *glu_args)
        self.dtype = dtype
        self.activation = activation
        self.glu_args = tuple(glu_args)
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
        h = glu_fn(self.activation, *self.glu_args)(g, u)
        h = constrain(h.reshape(*lead, h.shape[-1]), ("batch", "seq", "act_mlp")).reshape(h.shape)
        return adapt(self, "down", h, h @ self.down[...].astype(dt)).reshape(*lead, -1)
