"""Llama 3 / 3.1 / 3.2 (and Mistral, which is Llama with an optional uniform sliding window; Ministral-8B-2410,
``model_type`` ministral, the same with the sliding layers named per layer by ``layer_types``). A Llama config's
``attention_bias`` puts biases on all four attention projections (some Llama-architecture checkpoints have
them). InternLM3 (``model_type`` internlm3: InternLM3-8B-Instruct, with its deep-thinking mode) is Llama as
transformers runs it: its released ``qkv_bias`` / ``bias`` switches are ``attention_bias`` / ``mlp_bias``, its head
size 128 unless the config says otherwise. IQuest-Coder-V1 (``model_type`` iquestcoder) is Llama as well."""

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

NAME = "llama"
MODEL_TYPES = ("llama", "mistral", "ministral", "internlm3", "iquestcoder")
ARCHITECTURE = "LlamaForCausalLM"


def from_hf(hf: dict) -> TransformerConfig:
    if hf.get("model_type") == "internlm3":  # (its config class's attribute names and default head size)
        hf = {"head_dim": 128, "attention_bias": hf.get("qkv_bias", False), "mlp_bias": hf.get("bias", False), **hf}
    if hf.get("model_type") == "iquestcoder":  # (options its original code has and no release enables)
        refuse(hf, "clip_qkv", lambda v: False, "no IQuest-Coder release clips q/k/v")
        refuse(hf, "use_sliding_window", lambda v: not v, "no IQuest-Coder release slides")
    refuse(hf, "mlp_bias", lambda v: not v, "MLP biases")
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    name = hf["model_type"] if hf.get("model_type") in ("mistral", "ministral") else NAME
    bias = bool(hf.get("attention_bias", False)) and name == NAME  # Llama's: q, k, v and o projections
    return TransformerConfig(**common_from_hf(hf, name, qkv_bias=bias, out_bias=bias, **window_from_hf(hf)))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias != cfg.out_bias or (cfg.qkv_bias and cfg.sliding_window > 0),
                    qk_norm=cfg.qk_norm, moe=cfg.moe is not None, mla=cfg.mla is not None,
                    layer_types=len(set(cfg.sliding_layers)) > 1 and cfg.family != "ministral")
    if cfg.family == "ministral":  # the sliding layers named per layer
        window = {"sliding_window": None, **window_to_hf(cfg)}
        window.pop("use_sliding_window", None)
        return {**common_to_hf(cfg, "ministral", "MinistralForCausalLM"), **window}
    if cfg.sliding_window:
        return {**common_to_hf(cfg, "mistral", "MistralForCausalLM"), "sliding_window": cfg.sliding_window}
    return {**common_to_hf(cfg, "llama", ARCHITECTURE), "attention_bias": cfg.qkv_bias, "mlp_bias": False}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    return llama_like(cfg, segments(cfg))
