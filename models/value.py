"""A value head over the decoder's final-norm hidden states: PPO's critic is this head on a backbone (its own
copy of the policy's, or another model with the same tokenizer).

The critic's params are ``{"backbone": <decoder params>, "head": {"kernel": [D, 1], "bias": [1]}}``, so the
backbone shards, checkpoints and exports exactly like a policy, and the head is what an HF
``*ForTokenClassification`` model with one label calls ``score``. The head starts at zero: a fresh critic
predicts V = 0 everywhere, and its first advantages are the plain returns.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HEAD_AXES = {"kernel": ("embed", None), "bias": (None,)}


def init_value_head(d_model: int, dtype=jnp.float32) -> dict:
    return {"kernel": jnp.zeros((d_model, 1), dtype), "bias": jnp.zeros((1,), dtype)}


def abstract_value_head(d_model: int, dtype=jnp.float32) -> dict:
    return jax.eval_shape(lambda: init_value_head(d_model, dtype))


def apply_value_head(head: dict, h: jax.Array) -> jax.Array:
    """Values [...] (float32) from hidden states [..., D]."""
    out = jnp.einsum("...d,do->...o", h, head["kernel"].astype(h.dtype), preferred_element_type=jnp.float32)
    return out[..., 0] + head["bias"][0].astype(jnp.float32)


def critic_axes(backbone_axes: dict) -> dict:
    """Logical axes of a critic's params (for the sharding rules)."""
    return {"backbone": backbone_axes, "head": dict(HEAD_AXES)}
