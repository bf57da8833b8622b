"""dots.llm1 (``model_type`` dots1: rednote's dots.llm1 base and instruct): Qwen3's attention (per-head q/k
RMSNorms before the rotary, optional biases on all four projections, sliding layers from ``max_window_layers``
on or as ``layer_types`` names them) over DeepSeek-V3's MoE layers (sigmoid scores chosen with the per-expert
selection bias, grouped top-k, ``routed_scaling_factor``, shared experts) after ``first_k_dense_replace`` dense
layers (none by default)."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from . import deepseek_v3
from .base import (
    Tensor,
    common_from_hf,
    common_to_hf,
    llama_like,
    refuse,
    unsupported_cfg,
    whole_heads,
    window_from_hf,
    window_to_hf,
)

NAME = "dots1"
MODEL_TYPES = ("dots1",)
ARCHITECTURE = "Dots1ForCausalLM"
ignored = deepseek_v3.ignored


def from_hf(hf: dict) -> TransformerConfig:
    hf = {"norm_topk_prob": False, **{k: v for k, v in hf.items() if v is not None}}  # (the reference's default)
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    whole_heads(hf, hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"])
    # the reference slides from max_window_layers on whenever sliding_window is set (use_sliding_window unread)
    window = window_from_hf({k: v for k, v in hf.items() if k != "use_sliding_window"})
    bias = bool(hf.get("attention_bias", False))
    return TransformerConfig(**common_from_hf(hf, NAME, qk_norm=True, qkv_bias=bias, out_bias=bias,
                                              moe=deepseek_v3.moe_from_hf(hf), **window))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, qk_norm=not cfg.qk_norm, qk_norm_whole=cfg.qk_norm_whole,
                    qkv_bias=cfg.qkv_bias != cfg.out_bias, mla=cfg.mla is not None,
                    rope_dim=bool(cfg.rope_dim and cfg.rope_dim != cfg.head_dim),
                    moe=deepseek_v3.moe_unsupported(cfg.moe))
    window = window_to_hf(cfg)
    window.pop("use_sliding_window", None)
    return {**common_to_hf(cfg, NAME, ARCHITECTURE), **deepseek_v3.moe_to_hf(cfg.moe),
            "attention_bias": cfg.qkv_bias, **({"sliding_window": None} | window)}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    return llama_like(cfg, segs) + [t for seg, _, _, moe in segs if moe for t in deepseek_v3.moe_tensors(seg, cfg)]
