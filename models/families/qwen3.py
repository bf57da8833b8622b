"""Qwen3 (dense): Llama layout with RMSNorm on each head's queries and keys, no biases."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from .base import (
    Tensor,
    common_from_hf,
    common_to_hf,
    llama_like,
    refuse,
    unsupported_cfg,
    window_from_hf,
    window_to_hf,
)

NAME = "qwen3"
MODEL_TYPES = ("qwen3",)
ARCHITECTURE = "Qwen3ForCausalLM"


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "attention_bias", lambda v: not v, "Qwen3 attention biases include o_proj")
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    return TransformerConfig(**common_from_hf(hf, NAME, qk_norm=True, **window_from_hf(hf)))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, qk_norm=not cfg.qk_norm, moe=cfg.moe is not None,
                    mla=cfg.mla is not None)
    return {**common_to_hf(cfg, "qwen3", ARCHITECTURE), "attention_bias": False, **window_to_hf(cfg)}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    return llama_like(cfg, segments(cfg))
