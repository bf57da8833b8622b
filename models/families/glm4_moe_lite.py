"""GLM-4.7-Flash (``model_type`` glm4_moe_lite): DeepSeek-V3's layers (multi-head latent attention with the
rotary key, DeepSeekMoE with sigmoid grouped top-k, the selection bias and shared experts) under GLM's own
config: which layers are dense is ``mlp_layer_types`` ("dense" / "sparse" per layer; by default the first
layer only), and the multi-token-prediction layer stored after the last one is not used."""

from __future__ import annotations

import dataclasses

from ..config import TransformerConfig
from . import deepseek_v3
from .base import (
    ConfigError,
    Tensor,
    mlp_layer_types_from_hf,
    mlp_layer_types_to_hf,
    need,
    rotary_dims,
    unsupported_cfg,
)

NAME = "glm4_moe_lite"
MODEL_TYPES = ("glm4_moe_lite",)
ARCHITECTURE = "Glm4MoeLiteForCausalLM"
ignored = deepseek_v3.ignored


def from_hf(hf: dict) -> TransformerConfig:
    if rotary_dims(hf, need(hf, "qk_rope_head_dim")):  # the latent attention rotates its whole rotary key
        raise ConfigError("config.json: partial_rotary_factor is not supported (only 1.0 with MLA)")
    first, later = mlp_layer_types_from_hf(hf)
    cfg = deepseek_v3.from_hf({"rms_norm_eps": 1e-5, **hf, "first_k_dense_replace": first})
    return dataclasses.replace(cfg, family=NAME, moe=dataclasses.replace(cfg.moe, dense_layers=later))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, mla=cfg.mla is None)
    m = cfg.moe
    out = deepseek_v3.to_hf(dataclasses.replace(cfg, family=deepseek_v3.NAME,
                                                moe=None if m is None else dataclasses.replace(m, dense_layers=())))
    del out["first_k_dense_replace"]
    out.update(model_type=NAME, architectures=[ARCHITECTURE], mlp_layer_types=mlp_layer_types_to_hf(cfg))
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    return deepseek_v3.tensors(cfg)
