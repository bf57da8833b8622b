"""Code World Model (``model_type`` cwm: Meta's CWM, a 32B coding and reasoning model trained with RL on
execution traces): Llama's layers, three sliding-window layers to a full one (layer 0 full, then every fourth,
unless ``layer_types`` says otherwise), no biases, and the reference's Llama 3 rope at base 1e6 stretched 16x from
8192 positions when config.json names none."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from .base import (
    Tensor,
    common_from_hf,
    common_to_hf,
    llama_like,
    need,
    refuse,
    unsupported_cfg,
    whole_heads,
    window_from_hf,
    window_to_hf,
)

NAME = "cwm"
MODEL_TYPES = ("cwm",)
ARCHITECTURE = "CwmForCausalLM"
DEFAULT_ROPE = {"rope_type": "llama3", "rope_theta": 1_000_000.0, "factor": 16.0, "high_freq_factor": 4.0,
                "low_freq_factor": 1.0, "original_max_position_embeddings": 8192}


def from_hf(hf: dict) -> TransformerConfig:
    hf = {k: v for k, v in hf.items() if v is not None}
    if "rope_parameters" not in hf and "rope_theta" not in hf and "rope_scaling" not in hf:
        hf["rope_parameters"] = DEFAULT_ROPE
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    refuse(hf, "mlp_bias", lambda v: not v, "MLP projections without biases")
    whole_heads(hf, hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"])
    n = need(hf, "num_hidden_layers")
    types = hf.get("layer_types") or ["full_attention" if i % 4 == 0 else "sliding_attention" for i in range(n)]
    # without a window every layer attends fully (the reference's sliding mask of no window)
    window = window_from_hf({**hf, "layer_types": types}) if hf.get("sliding_window") else {}
    return TransformerConfig(**common_from_hf(hf, NAME, **window))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias or cfg.out_bias, qk_norm=cfg.qk_norm, moe=cfg.moe is not None,
                    mla=cfg.mla is not None, rope_dim=bool(cfg.rope_dim and cfg.rope_dim != cfg.head_dim))
    window = window_to_hf(cfg)
    window.pop("use_sliding_window", None)
    types = ["full_attention"] * cfg.n_layers  # (no window: every layer full, named so)
    return {**common_to_hf(cfg, NAME, ARCHITECTURE), "mlp_bias": False, "sliding_window": None,
            "layer_types": types, **window}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    return llama_like(cfg, segments(cfg))
