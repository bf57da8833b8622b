"""Arcee AFM (``model_type`` arcee: Arcee's AFM-4.5B and AFM-4.5B-Base): Llama's layers with an ungated MLP
``down(relu(up x) ** 2)`` (squared ReLU, no gate projection); ``attention_bias`` puts biases on all four attention
projections, as Llama's. The reference config class fills squared ReLU, an RMSNorm epsilon of 1e-5, 4096
positions and the plain rope at base 1e4 when config.json leaves them out."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from .base import (
    Tensor,
    common_from_hf,
    common_to_hf,
    llama_like,
    mlp_tensors,
    refuse,
    unsupported_cfg,
    whole_heads,
    with_defaults,
)

NAME = "arcee"
MODEL_TYPES = ("arcee",)
ARCHITECTURE = "ArceeForCausalLM"
ACTIVATIONS = ("relu2",)  # the MLP activation its format writes (ungated)
# the reference config's defaults for what a config.json may leave out (ArceeConfig; its head size and key/value
# heads default to hidden / heads and the query heads, as common_from_hf reads them)
DEFAULTS = {"hidden_act": "relu2", "rms_norm_eps": 1e-5, "max_position_embeddings": 4096,
            "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False}


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(hf, DEFAULTS, 10_000.0)
    refuse(hf, "hidden_act", lambda v: v in ACTIVATIONS, "an ungated MLP of squared ReLU only")
    refuse(hf, "mlp_bias", lambda v: not v, "MLP projections without biases")
    whole_heads(hf, hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"])
    bias = bool(hf["attention_bias"])  # Llama's: q, k, v and o projections
    return TransformerConfig(**common_from_hf(hf, NAME, qkv_bias=bias, out_bias=bias, activation=hf["hidden_act"]))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias != cfg.out_bias, qk_norm=cfg.qk_norm, moe=cfg.moe is not None,
                    mla=cfg.mla is not None, linear=cfg.linear is not None, sliding_window=cfg.sliding_window > 0,
                    nope_layers=bool(cfg.nope_layers), rope_dim=bool(cfg.rope_dim and cfg.rope_dim != cfg.head_dim),
                    rope_interleave=cfg.rope_interleave, sandwich_norm=cfg.sandwich_norm, pre_norm=not cfg.pre_norm,
                    norm_offset=cfg.norm_offset != 0.0, embed_scale=cfg.embed_scale,
                    embed_multiplier=cfg.embed_multiplier != 1.0, residual_multiplier=cfg.residual_multiplier != 1.0,
                    logits_scaling=cfg.logits_scaling != 1.0, query_scale=cfg.query_scale is not None,
                    attn_softcap=cfg.attn_softcap is not None, final_softcap=cfg.final_softcap is not None,
                    attn_gate=cfg.attn_gate, attn_sinks=cfg.attn_sinks,
                    query_length_scale=cfg.query_length_scale is not None)
    return {**common_to_hf(cfg, NAME, ARCHITECTURE), "hidden_act": cfg.activation, "attention_bias": cfg.qkv_bias,
            "mlp_bias": False}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    out = llama_like(cfg, segs, dense_mlp=False)
    for seg, *_ in segs:  # (no gate projection)
        out += [t for t in mlp_tensors((seg, "mlp"), "model.layers.{i}.mlp") if t.path[-1] != "gate"]
    return out
