"""Llama 3 / 3.1 / 3.2 (and Mistral, which is Llama with an optional uniform sliding window). A Llama config's
``attention_bias`` puts biases on all four attention projections (some Llama-architecture checkpoints have
them). InternLM3 (``model_type`` internlm3: InternLM3-8B-Instruct, with its deep-thinking mode) is Llama as
transformers runs it: its released ``qkv_bias`` / ``bias`` switches are ``attention_bias`` / ``mlp_bias``, its head
size 128 unless the config says otherwise."""

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
)

NAME = "llama"
MODEL_TYPES = ("llama", "mistral", "internlm3")
ARCHITECTURE = "LlamaForCausalLM"


def from_hf(hf: dict) -> TransformerConfig:
    if hf.get("model_type") == "internlm3":  # (its config class's attribute names and default head size)
        hf = {"head_dim": 128, "attention_bias": hf.get("qkv_bias", False), "mlp_bias": hf.get("bias", False), **hf}
    refuse(hf, "mlp_bias", lambda v: not v, "MLP biases")
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    name = "mistral" if hf.get("model_type") == "mistral" else NAME
    bias = bool(hf.get("attention_bias", False)) and name == NAME  # Llama's: q, k, v and o projections
    return TransformerConfig(**common_from_hf(hf, name, qkv_bias=bias, out_bias=bias, **window_from_hf(hf)))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias != cfg.out_bias or (cfg.qkv_bias and cfg.sliding_window > 0),
                    qk_norm=cfg.qk_norm, moe=cfg.moe is not None, mla=cfg.mla is not None,
                    layer_types=len(set(cfg.sliding_layers)) > 1)
    if cfg.sliding_window:
        return {**common_to_hf(cfg, "mistral", "MistralForCausalLM"), "sliding_window": cfg.sliding_window}
    return {**common_to_hf(cfg, "llama", ARCHITECTURE), "attention_bias": cfg.qkv_bias, "mlp_bias": False}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    return llama_like(cfg, segments(cfg))
