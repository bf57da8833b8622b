"""Multi-head latent attention (DeepSeek-V2/V3).

Queries go through an optional low-rank bottleneck (q_a -> RMSNorm -> q_b). Keys and values are compressed
into one latent per token (kv_a -> RMSNorm) plus a single rotary key shared by every head; kv_b expands the
latent into per-head no-rope keys and values. The cache stores only the latent and the rotary key (KVCache k:
[L, B, S, 1, kv_lora_rank], v: [L, B, S, 1, qk_rope_dim]), which is MLA's point. With DeepSeek Sparse Attention
(``mc.index_topk``: DeepSeek-V3.2) a lightning indexer (``models/layers/dsa``) restricts each query to its best
keys, and v also holds the indexer's key of each token. Training and sampling run the
same expansion over whatever keys are present, so their log-probs agree by construction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from reasoning_rl.sharding import constrain

from ..config import MLAConfig
from ..lora import adapt
from . import dsa
from .attention import dot_attention, freeze, prefix_attention, rope_for, write_cache
from .init import param
from .norm import RMSNorm
from .rope import apply_rope, rope_table, yarn_softmax_scale

LATENT_NORM_EPS = 1e-6  # the reference builds both latent norms with the default eps, not rms_norm_eps


class MLA(nnx.Module):
    def __init__(self, d_model: int, n_heads: int, mc: MLAConfig, *, rngs: nnx.Rngs, rope_theta: float = 10000.0,
                 rope_scaling: dict | None = None, param_dtype=jnp.float32, dtype=jnp.float32,
                 out_scale: float = 1.0, length_scale: tuple[float, int] | None = None):
        """``length_scale`` (beta, L): queries times ``1 + beta * log(1 + floor(position / L))`` (Mistral 4, as
        ``Attention``'s)."""
        self.n_heads, self.mc, self.dtype = n_heads, mc, dtype
        self.length_scale = None if length_scale is None else (float(length_scale[0]), int(length_scale[1]))
        qk_dim = mc.qk_nope_dim + mc.qk_rope_dim
        self.scale = qk_dim**-0.5 * yarn_softmax_scale(rope_scaling)
        self.rope = (mc.qk_rope_dim, float(rope_theta), freeze(rope_scaling))
        if mc.q_lora_rank:
            self.q_a = param(rngs, (d_model, mc.q_lora_rank), ("embed", "q_lora"), d_model, param_dtype)
            self.q_norm = RMSNorm(mc.q_lora_rank, eps=LATENT_NORM_EPS, param_dtype=param_dtype)
            self.q_b = param(rngs, (mc.q_lora_rank, n_heads, qk_dim), ("q_lora", "heads", "head_dim"),
                             mc.q_lora_rank, param_dtype)
            self.q = None
        else:
            self.q_a = self.q_norm = self.q_b = None
            self.q = param(rngs, (d_model, n_heads, qk_dim), ("embed", "heads", "head_dim"), d_model, param_dtype)
        self.kv_a = param(rngs, (d_model, mc.kv_lora_rank + mc.qk_rope_dim), ("embed", "kv_lora"), d_model,
                          param_dtype)
        self.kv_norm = RMSNorm(mc.kv_lora_rank, eps=LATENT_NORM_EPS, param_dtype=param_dtype)
        self.kv_b = param(rngs, (mc.kv_lora_rank, n_heads, mc.qk_nope_dim + mc.v_dim), ("kv_lora", "heads", "head_dim"),
                          mc.kv_lora_rank, param_dtype)
        self.o = param(rngs, (n_heads, mc.v_dim, d_model), ("heads", "head_dim", "embed"), n_heads * mc.v_dim,
                       param_dtype, scale=out_scale)
        self.indexer = bool(mc.index_topk)
        if self.indexer:  # DSA's lightning indexer: queries from the query latent, one key per token, head weights
            if not mc.q_lora_rank:
                raise ValueError("mla.index_topk: the sparse-attention indexer reads the query latent (q_lora_rank)")
            hi, di = mc.index_heads, mc.index_dim
            self.idx_q = param(rngs, (mc.q_lora_rank, hi, di), ("q_lora", "heads", "head_dim"), mc.q_lora_rank,
                               param_dtype)
            self.idx_k = param(rngs, (d_model, di), ("embed", "head_dim"), d_model, param_dtype)
            self.idx_k_norm = nnx.Param(jnp.ones((di,), param_dtype), axes=("norm",))
            self.idx_k_bias = nnx.Param(jnp.zeros((di,), param_dtype), axes=("norm",))
            self.idx_w = param(rngs, (d_model, hi), ("embed", "heads"), d_model, param_dtype)

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array, cache=None, layer=None, index=None,
                 rope=None, prefix=None):
        """Same contract as :class:`Attention`; ``cache`` and ``prefix`` hold (latents, rotary keys)."""
        mc, dt = self.mc, self.dtype
        if self.q is None:
            q = adapt(self, "q_a", x, jnp.einsum("btd,dr->btr", x, self.q_a[...].astype(dt)))
            qn = self.q_norm(q)
            q = adapt(self, "q_b", qn, jnp.einsum("btr,rhk->bthk", qn, self.q_b[...].astype(dt)))
        else:
            q = adapt(self, "q", x, jnp.einsum("btd,dhk->bthk", x, self.q[...].astype(dt)))
        q_nope, q_rot = q[..., :mc.qk_nope_dim], q[..., mc.qk_nope_dim:]
        kv = adapt(self, "kv_a", x, jnp.einsum("btd,dr->btr", x, self.kv_a[...].astype(dt)))
        latent = self.kv_norm(kv[..., :mc.kv_lora_rank])[:, :, None, :]  # [B, T, 1, R]
        k_rot = kv[..., mc.kv_lora_rank:][:, :, None, :]  # [B, T, 1, rope]
        table = rope if rope is not None else rope_table(positions, *rope_for(*self.rope))
        q_rot = apply_rope(q_rot, table, interleave=mc.rope_interleave)
        k_rot = apply_rope(k_rot, table, interleave=mc.rope_interleave)
        q = jnp.concatenate([q_nope, q_rot], axis=-1)
        if self.length_scale is not None:  # by absolute position: the same for a token however a row is split
            beta, span = self.length_scale
            s = 1.0 + beta * jnp.log1p(jnp.floor(positions.astype(jnp.float32) / span))
            q = q * s[..., None, None].astype(q.dtype)
        q = constrain(q, ("batch", "seq", "act_heads", None))
        if self.indexer:  # its key rides in the cache beside the rotary key
            qi, ki, wi = self._index(x, qn, table)
            k_rot = jnp.concatenate([k_rot, ki[:, :, None, :].astype(k_rot.dtype)], axis=-1)
        if prefix is not None and self.indexer:
            raise ValueError("mla: sparse attention takes no shared prefix (the prefix holds no indexer keys)")
        if prefix is not None:  # the groups' prefix latents, expanded once per group (heads-first)
            kp, vp = self._expand(*(jnp.swapaxes(a, 1, 2).astype(dt) for a in prefix))
            k, v = self._expand(latent, k_rot)
            out = prefix_attention(q, k, v, jnp.swapaxes(kp, 1, 2), jnp.swapaxes(vp, 1, 2), mask, self.scale)
        else:
            causal = cache is None  # within the sequence: causal blocks apply
            latent, k_rot, cache = write_cache(latent, k_rot, cache, layer, index, dt, size=mask.shape[-1])
            if self.indexer:  # each query's best keys, of those the mask allows
                mask = dsa.select(qi, k_rot[:, :, 0, mc.qk_rope_dim:], wi, mask, mc.index_topk)
                k_rot = k_rot[..., :mc.qk_rope_dim]
            k, v = self._expand(latent, k_rot)
            out = dot_attention(q, k, v, mask, self.scale, causal=causal)
        return adapt(self, "o", out, jnp.einsum("bthk,hkd->btd", out, self.o[...].astype(dt))), cache

    def _index(self, x: jax.Array, q_latent: jax.Array, table) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The indexer's queries [B, T, Hi, Di], keys [B, T, Di] (LayerNorm-ed, in the compute dtype, as cached)
        and head weights [B, T, Hi] (float32, over sqrt(Hi)); queries and keys rotated on their leading rotary
        dims by the attention's own table."""
        mc, dt = self.mc, self.dtype
        qi = jnp.einsum("btr,rhk->bthk", q_latent, self.idx_q[...].astype(dt))
        ki = dsa.layer_norm(jnp.einsum("btd,dk->btk", x, self.idx_k[...].astype(dt)), self.idx_k_norm[...],
                            self.idx_k_bias[...])
        qi = apply_rope(qi, table, interleave=mc.index_rope_interleave)
        ki = apply_rope(ki[:, :, None, :], table, interleave=mc.index_rope_interleave)[:, :, 0]
        wi = jnp.einsum("btd,dh->bth", x.astype(jnp.float32), self.idx_w[...].astype(jnp.float32))
        return qi, ki.astype(dt), wi * mc.index_heads ** -0.5

    def _expand(self, latent: jax.Array, k_rot: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Per-head keys and values [B, S, H, .] from latents [B, S, 1, R] and rotary keys [B, S, 1, rope]."""
        mc = self.mc
        kvh = adapt(self, "kv_b", latent[:, :, 0],
                    jnp.einsum("bsr,rhk->bshk", latent[:, :, 0], self.kv_b[...].astype(self.dtype)))
        k_nope, v = kvh[..., :mc.qk_nope_dim], kvh[..., mc.qk_nope_dim:]
        k = jnp.concatenate([k_nope, jnp.broadcast_to(k_rot, (*k_nope.shape[:3], mc.qk_rope_dim))], axis=-1)
        return constrain(k, ("batch", "seq", "act_heads", None)), constrain(v, ("batch", "seq", "act_heads", None))
