"""Qwen2 / Qwen2.5: Llama layout with biases on the q/k/v projections (always present in the checkpoint)."""

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

NAME = "qwen2"
MODEL_TYPES = ("qwen2",)
ARCHITECTURE = "Qwen2ForCausalLM"


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    return TransformerConfig(**common_from_hf(hf, NAME, qkv_bias=True, **window_from_hf(hf)))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, qk_norm=cfg.qk_norm, moe=cfg.moe is not None, mla=cfg.mla is not None)
    return {**common_to_hf(cfg, "qwen2", ARCHITECTURE), **window_to_hf(cfg)}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    # A hand-built "qwen2" config without biases still saves as Qwen2: its biases are written as zeros.
    return llama_like(cfg, segments(cfg), bias_always=True)
