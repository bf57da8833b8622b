"""Rotary position embeddings, with the frequency scalings that published checkpoints use.

Frequencies are computed on the host once per (dim, theta, scaling) and baked into the program as constants.
Two layouts exist on disk: rotate-half (Llama, Qwen, Gemma: pairs are (x_i, x_{i+D/2})) and interleaved
(DeepSeek: pairs are (x_{2i}, x_{2i+1})). Both are supported so weights load unpermuted.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

SUPPORTED = ("default", "linear", "llama3", "yarn", "longrope", "ntk_alpha", "proportional")


def rope_kind(scaling: dict | None) -> str:
    if not scaling:
        return "default"
    return scaling.get("rope_type", scaling.get("type", "default"))


class LongRope(tuple):
    """longrope's inverse frequencies: (sets [2, D/2] short then long, first position of the long set)."""

    def __new__(cls, sets: np.ndarray, threshold: int):
        return super().__new__(cls, (sets, threshold))


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_parameters(head_dim: int, theta: float, scaling: dict | None = None) -> tuple[np.ndarray, float]:
    """(inverse frequencies [head_dim/2] float32, factor applied to cos/sin).

    longrope (Phi-3/Phi-4) has two sets, [2, head_dim/2]: ``short_factor`` for positions below
    ``original_max_position_embeddings`` and ``long_factor`` from there on (``rope_table`` picks per position:
    what the reference's generation does token by token, so cached keys never change and the sampler's
    log-probs equal the trainer's however a sequence is split into forwards)."""
    # float32 throughout, as the reference implementation computes them (keeps logits parity tight).
    kind = rope_kind(scaling)
    if kind == "ntk_alpha":  # NTK-aware with a fixed alpha (Hunyuan's "dynamic" + alpha): a larger base, static
        theta = theta * float(scaling["alpha"]) ** (head_dim / (head_dim - 2))
    exps = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    pos_freqs = np.float32(theta) ** exps
    inv = (np.float32(1.0) / pos_freqs).astype(np.float32)
    if kind in ("default", "ntk_alpha"):
        return inv, 1.0
    if kind == "linear":
        return (inv / np.float32(scaling["factor"])).astype(np.float32), 1.0
    if kind == "proportional":  # Gemma 4's full layers: the leading angles of the whole head turn, the rest stay
        angles = int(float(scaling.get("partial_rotary_factor", 1.0)) * head_dim // 2)  # (the reference's rounding)
        inv = np.where(np.arange(inv.shape[0]) < angles, inv, np.float32(0.0))
        return (inv / np.float32(scaling.get("factor", 1.0))).astype(np.float32), 1.0
    if kind == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling["original_max_position_embeddings"])
        low_wl, high_wl = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        is_mid = ~(wavelen < high_wl) & ~(wavelen > low_wl)
        return np.where(is_mid, mid, scaled).astype(np.float32), 1.0
    if kind == "yarn":
        factor = float(scaling["factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        attn = scaling.get("attention_factor")
        mscale, mscale_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if attn is None:
            if mscale and mscale_all:
                attn = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all)
            else:
                attn = _yarn_mscale(factor)
        beta_fast = scaling.get("beta_fast") or 32
        beta_slow = scaling.get("beta_slow") or 1

        def corr_dim(rot):
            return (head_dim * math.log(old_ctx / (rot * 2 * math.pi))) / (2 * math.log(theta))

        lo, hi = corr_dim(beta_fast), corr_dim(beta_slow)
        if scaling.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, head_dim - 1)
        if lo == hi:
            hi += 0.001
        ramp = np.clip((np.arange(head_dim // 2, dtype=np.float32) - lo) / (hi - lo), 0, 1).astype(np.float32)
        extrap = 1 - ramp
        interp = np.float32(1.0) / (np.float32(factor) * pos_freqs)
        return (interp * (1 - extrap) + inv * extrap).astype(np.float32), float(attn)
    if kind == "longrope":
        old_ctx = float(scaling["original_max_position_embeddings"])
        factor = float(scaling.get("factor") or 1.0)
        attn = scaling.get("attention_factor")
        if attn is None:
            attn = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(old_ctx))
        sets = [np.float32(1.0) / (np.asarray(scaling[k], np.float32) * pos_freqs)
                for k in ("short_factor", "long_factor")]
        if any(a.shape != inv.shape for a in sets):
            raise ValueError(f"rope_scaling: longrope factors need {inv.shape[0]} entries (rotary dims / 2)")
        return LongRope(np.stack(sets).astype(np.float32), int(old_ctx)), float(attn)
    raise ValueError(f"rope_scaling.rope_type: unsupported value {kind!r} (supported: {', '.join(SUPPORTED)})")


def yarn_softmax_scale(scaling: dict | None) -> float:
    """DeepSeek multiplies the softmax scale by mscale(factor, mscale_all_dim)**2 under yarn."""
    if rope_kind(scaling) == "default" or not scaling.get("mscale_all_dim"):
        return 1.0
    m = _yarn_mscale(float(scaling["factor"]), float(scaling["mscale_all_dim"]))
    return m * m


def inv_frequencies(head_dim: int, theta: float, scaling: dict | None = None) -> np.ndarray:
    """Inverse frequencies only (kept for callers that do not need the cos/sin factor)."""
    return rope_parameters(head_dim, theta, scaling)[0]


def rope_table(positions: jax.Array, inv_freq, attn_scale: float = 1.0, size: int | None = None
               ) -> tuple[jax.Array, jax.Array]:
    """(cos, sin) [B, T, 1, D/2] float32 for ``positions`` [B, T].

    With ``size`` (positions must then lie in ``[0, size)``) and more positions than ``size``, cos/sin are
    computed for the ``size`` positions only and gathered. A forward computes the table once and hands it to
    every layer; computed per position inside the layers, XLA fuses the sin/cos into every rotation and its
    gradient and evaluates them once per head and layer, which made rope a tenth of a W1 train step on CPU
    (the gather it fuses instead is cheap). A decode step (one position a row, a long cache) computes its
    few positions directly rather than a table over the whole cache."""
    if size is None or size >= positions.size:
        if isinstance(inv_freq, LongRope):
            sets, threshold = inv_freq
            inv = jnp.where((positions >= threshold)[..., None], jnp.asarray(sets[1]), jnp.asarray(sets[0]))
        else:
            inv = jnp.asarray(inv_freq)
        freqs = positions[..., None].astype(jnp.float32) * inv  # [B, T, D/2]
        return (jnp.cos(freqs) * attn_scale)[:, :, None, :], (jnp.sin(freqs) * attn_scale)[:, :, None, :]
    cos, sin = rope_table(jnp.arange(size)[None], inv_freq, attn_scale)
    return cos[0, positions], sin[0, positions]


def apply_rope(x: jax.Array, table: tuple[jax.Array, jax.Array], *, interleave: bool = False) -> jax.Array:
    """x: [B, T, H, D] rotated by ``table`` (``rope_table``). Interleaved input comes out in rotate-half order
    (as the reference does), which is harmless because q and k are permuted alike. A table for fewer dims than
    ``x`` has (partial rotary, Phi-4-mini) rotates the leading dims and passes the rest through."""
    cos, sin = table
    rot = 2 * cos.shape[-1]
    if rot < x.shape[-1]:
        return jnp.concatenate([apply_rope(x[..., :rot], table, interleave=interleave), x[..., rot:]], axis=-1)
    xf = x.astype(jnp.float32)
    if interleave:
        x1, x2 = xf[..., 0::2], xf[..., 1::2]
    else:
        x1, x2 = jnp.split(xf, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)
