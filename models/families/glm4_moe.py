"""GLM-4.5 / 4.6 / 4.7 (``model_type`` glm4_moe, GLM-4.5-Air included): grouped-query attention with q/k/v
biases (``attention_bias``), optional per-head q/k RMSNorm (``use_qk_norm``) and partial rotary (the leading
half of each head by default), over DeepSeekMoE layers (sigmoid scores, grouped top-k with the per-expert
selection bias, ``routed_scaling_factor``, shared experts) after ``first_k_dense_replace`` dense layers. As in
DeepSeek-V3, balance is aux-loss-free and the multi-token-prediction layers stored after the last layer are
not used."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from .base import (
    Tensor,
    common_from_hf,
    common_to_hf,
    llama_like,
    refuse,
    rotary_dims,
    unsupported_cfg,
)
from .deepseek_v3 import ignored, moe_from_hf, moe_tensors, moe_to_hf, moe_unsupported

NAME = "glm4_moe"
MODEL_TYPES = ("glm4_moe",)
ARCHITECTURE = "Glm4MoeForCausalLM"

__all__ = ["ARCHITECTURE", "MODEL_TYPES", "NAME", "from_hf", "ignored", "tensors", "to_hf"]


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    common = common_from_hf(hf, NAME, qkv_bias=bool(hf.get("attention_bias", False)),
                            qk_norm=bool(hf.get("use_qk_norm", False)), moe=moe_from_hf(hf, first_dense_default=1))
    # the reference's default is half the head (its config adds partial_rotary_factor=0.5 when absent)
    return TransformerConfig(**common, rope_dim=rotary_dims(hf, common["head_dim"], default=0.5))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, mla=cfg.mla is not None, moe=moe_unsupported(cfg.moe),
                    sliding_window=cfg.sliding_window > 0)
    return {**common_to_hf(cfg, "glm4_moe", ARCHITECTURE), **moe_to_hf(cfg.moe), "attention_bias": cfg.qkv_bias,
            "use_qk_norm": cfg.qk_norm, "partial_rotary_factor": (cfg.rope_dim or cfg.head_dim) / cfg.head_dim,
            "num_nextn_predict_layers": 0}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    return llama_like(cfg, segs) + [t for seg, _, _, moe in segs if moe for t in moe_tensors(seg, cfg)]
