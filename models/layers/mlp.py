"""Feed-forward block: gated (SwiGLU, GeGLU with the tanh-approximated GELU for Gemma, or gpt-oss's clamped
SwiGLU) or, for a ``PLAIN`` activation, ungated: ``down(act(up x))`` with no gate projection (Nemotron-H's
squared ReLU, Apertus's xIELU: an activation with learned scalars of its own in each layer)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from reasoning_rl.sharding import constrain

from ..lora import adapt
from . import invariant
from .init import param, zeros
from .multiplier import times

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


# ungated activations: the block has no gate projection (the MLP's and the experts' ``gate`` is None); xIELU's
# function takes its scalars too (``xielu``), so only the dense MLP, which holds them, runs it
PLAIN = {"relu2": lambda x: jnp.square(jax.nn.relu(x)), "xielu": None}

# xIELU's scalars as the reference initialises them: alpha_p, alpha_n (learned, stored through the inverse of the
# softplus that reads them; alpha_n above beta), beta and eps (fixed, stored beside them)
XIELU_INIT = {"alpha_p": 0.8, "alpha_n": 0.8, "beta": 0.5, "eps": -1e-6}


def xielu(x: jax.Array, alpha_p, alpha_n, beta, eps, batch_invariant: bool = False) -> jax.Array:
    """xIELU (Apertus): ``a_p x^2 + beta x`` above zero, ``(expm1(min(x, eps)) - x) a_n + beta x`` below, with
    ``a_p = softplus(alpha_p)`` and ``a_n = beta + softplus(alpha_n)``; the scalars [1] in the input's dtype."""
    ap, an = jax.nn.softplus(alpha_p), beta + jax.nn.softplus(alpha_n)
    m = jnp.minimum(x, eps)
    em1 = (invariant.exp(m.astype(jnp.float32)) - 1).astype(x.dtype) if batch_invariant else jnp.expm1(m)
    return jnp.where(x > 0, ap * x * x + beta * x, (em1 - x) * an + beta * x)
GLUS = (*ACTIVATIONS, "clamped_swiglu", *PLAIN)


def gated(name: str) -> bool:
    """Has the block of activation ``name`` a gate projection?"""
    return name not in PLAIN


def activation_fn(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: unsupported value {name!r} (supported: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


# the same activations through ``invariant``'s exponential (batch-invariant mode), computed in float32
INVARIANT_ACTIVATIONS = {
    "silu": lambda x: (x.astype(jnp.float32) * invariant.sigmoid(x)).astype(x.dtype),
    "gelu_tanh": lambda x: _gelu_tanh(x.astype(jnp.float32), invariant.tanh).astype(x.dtype),
}


def _gelu_tanh(x, tanh):
    return 0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


def glu_fn(name: str, alpha: float = 1.702, limit: float = 7.0, batch_invariant: bool = False):
    """``f(gate, up)`` -> the gated hidden activation. ``clamped_swiglu`` (gpt-oss): the gate clipped above at
    ``limit``, the up projection to [-limit, limit], and ``(up + 1) * gate * sigmoid(alpha * gate)``.
    ``batch_invariant``: exponentials through ``invariant.exp`` (the same bits in every program). An ungated
    activation (``PLAIN``) ignores ``gate`` (None: the block has no gate projection)."""
    if name == "xielu":
        raise ValueError("activation xielu: the dense MLP only (its learned scalars are the layer's own), not experts")
    if name in PLAIN:
        act = PLAIN[name]  # (no exponential: the same bits in every program already)
        return lambda g, u: act(u)
    if name == "clamped_swiglu":
        sigmoid = (lambda a: invariant.sigmoid(a).astype(a.dtype)) if batch_invariant else jax.nn.sigmoid

        def clamped(g, u):
            g = jnp.minimum(g, limit)
            u = jnp.clip(u, -limit, limit)
            return (u + 1) * (g * sigmoid(g * alpha))
        return clamped
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: unsupported value {name!r} (supported: {', '.join(GLUS)})")
    act = (INVARIANT_ACTIVATIONS if batch_invariant else ACTIVATIONS)[name]
    return lambda g, u: act(g) * u


class MLP(nnx.Module):
    def __init__(self, d_model: int, ffn_dim: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32, dtype=jnp.float32,
                 out_scale: float = 1.0, activation: str = "silu", glu_args: tuple[float, float] = (1.702, 7.0),
                 invariant: bool = False, multipliers: tuple[float, float] = (1.0, 1.0), bias: bool = False):
        """``multipliers`` (Falcon-H1's muP): the gate projection times the first before the activation, the
        output times the second, each in float32 and rounded once. ``bias``: every projection has one (Jais-2)."""
        if activation != "xielu":  # (validated here; xIELU's function needs the scalars made below)
            glu_fn(activation, *glu_args)
        self.multipliers = (float(multipliers[0]), float(multipliers[1]))
        self.invariant = invariant  # batch-invariant products (layers/invariant.py)
        self.dtype = dtype
        self.activation = activation
        self.glu_args = tuple(glu_args)
        self.gate = param(rngs, (d_model, ffn_dim), ("embed", "mlp"), d_model, param_dtype) if gated(activation) \
            else None
        self.up = param(rngs, (d_model, ffn_dim), ("embed", "mlp"), d_model, param_dtype)
        self.down = param(rngs, (ffn_dim, d_model), ("mlp", "embed"), ffn_dim, param_dtype, scale=out_scale)
        if bias:
            self.gate_bias = zeros((ffn_dim,), ("mlp",), param_dtype) if self.gate is not None else None
            self.up_bias = zeros((ffn_dim,), ("mlp",), param_dtype)
            self.down_bias = zeros((d_model,), ("embed",), param_dtype)
        else:
            self.gate_bias = self.up_bias = self.down_bias = None
        if activation == "xielu":  # its scalars, as stored (beta and eps held, not trained: steps.NO_DECAY)
            a = XIELU_INIT
            stored = {"act_alpha_p": math.log(math.expm1(a["alpha_p"])),
                      "act_alpha_n": math.log(math.expm1(a["alpha_n"] - a["beta"])),
                      "act_beta": a["beta"], "act_eps": a["eps"]}
            for name, value in stored.items():
                setattr(self, name, nnx.Param(jnp.full((1,), value, param_dtype), axes=(None,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = self.dtype
        # 2-D matmuls: XLA:CPU lays out the backward of [B*T, D] products far better than of [B, T, D] ones
        # (about 2x less time in the MLP's gradient); on accelerators the reshape is free.
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        mm = invariant.matmul_for(self.invariant)
        g = None if self.gate is None else adapt(self, "gate", x2, mm(x2, self.gate[...].astype(dt)))
        if self.gate_bias is not None:
            g = g + self.gate_bias[...].astype(dt)
        g = None if g is None else times(g, self.multipliers[0])
        u = adapt(self, "up", x2, mm(x2, self.up[...].astype(dt)))
        if self.up_bias is not None:
            u = u + self.up_bias[...].astype(dt)
        if self.activation == "xielu":
            held = (jax.lax.stop_gradient(getattr(self, n)[...]) for n in ("act_beta", "act_eps"))
            h = xielu(u, self.act_alpha_p[...].astype(u.dtype), self.act_alpha_n[...].astype(u.dtype),
                      *(a.astype(u.dtype) for a in held), batch_invariant=self.invariant)
        else:
            h = glu_fn(self.activation, *self.glu_args, batch_invariant=self.invariant)(g, u)
        h = constrain(h.reshape(*lead, h.shape[-1]), ("batch", "seq", "act_mlp")).reshape(h.shape)
        out = adapt(self, "down", h, mm(h, self.down[...].astype(dt)))
        if self.down_bias is not None:
            out = out + self.down_bias[...].astype(dt)
        return times(out, self.multipliers[1]).reshape(*lead, -1)

