"""Kyutai Helium (``model_type`` helium: Helium-1-2B and Helium-1-preview-2B, multilingual): the Llama layout with
rotary on adjacent pairs ((x0, x1), (x2, x3), ...: ERNIE 4.5's), optional biases on the q, k and v projections
only (``attention_bias``; the output projection has none and maps hidden -> hidden, so the heads must span
hidden_size exactly). The reference config class fills a head size of 128, 20 key/value heads, an RMSNorm epsilon
of 1e-8, 4096 positions and the rope base 1e5 when config.json leaves them out."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from .base import (
    ConfigError,
    Tensor,
    common_from_hf,
    common_to_hf,
    llama_like,
    need,
    refuse,
    unsupported_cfg,
    whole_heads,
    with_defaults,
)

NAME = "helium"
MODEL_TYPES = ("helium",)
ARCHITECTURE = "HeliumForCausalLM"
# the reference config's defaults for what a config.json may leave out (HeliumConfig)
DEFAULTS = {"head_dim": 128, "num_key_value_heads": 20, "hidden_act": "silu", "rms_norm_eps": 1e-8,
            "max_position_embeddings": 4096, "tie_word_embeddings": False, "attention_bias": False,
            "mlp_bias": False}
DEFAULT_THETA = 100_000.0


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(hf, DEFAULTS, DEFAULT_THETA)
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    refuse(hf, "mlp_bias", lambda v: not v, "MLP projections without biases")
    heads, d = need(hf, "num_attention_heads"), need(hf, "hidden_size")
    whole_heads(hf, hf["head_dim"])
    if heads * hf["head_dim"] != d:
        raise ConfigError(f"config.json: num_attention_heads={heads} x head_dim={hf['head_dim']} must equal "
                          f"hidden_size={d} (the reference's o_proj maps hidden_size -> hidden_size)")
    return TransformerConfig(**common_from_hf(hf, NAME, qkv_bias=bool(hf["attention_bias"]), rope_interleave=True))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, head_dim=cfg.n_heads * cfg.head_dim != cfg.d_model, out_bias=cfg.out_bias,
                    qk_norm=cfg.qk_norm, moe=cfg.moe is not None, mla=cfg.mla is not None,
                    linear=cfg.linear is not None, sliding_window=cfg.sliding_window > 0,
                    nope_layers=bool(cfg.nope_layers), rope_dim=bool(cfg.rope_dim and cfg.rope_dim != cfg.head_dim),
                    rope_interleave=not cfg.rope_interleave, sandwich_norm=cfg.sandwich_norm,
                    pre_norm=not cfg.pre_norm, norm_offset=cfg.norm_offset != 0.0, embed_scale=cfg.embed_scale,
                    embed_multiplier=cfg.embed_multiplier != 1.0, residual_multiplier=cfg.residual_multiplier != 1.0,
                    logits_scaling=cfg.logits_scaling != 1.0, query_scale=cfg.query_scale is not None,
                    attn_softcap=cfg.attn_softcap is not None, final_softcap=cfg.final_softcap is not None,
                    attn_gate=cfg.attn_gate, attn_sinks=cfg.attn_sinks,
                    query_length_scale=cfg.query_length_scale is not None)
    return {**common_to_hf(cfg, NAME, ARCHITECTURE), "attention_bias": cfg.qkv_bias, "mlp_bias": False}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    return llama_like(cfg, segments(cfg))
