"""GLM-4.7-Flash (``model_type`` glm4_moe_lite): DeepSeek-V3's layers (multi-head latent attention with the
rotary key, DeepSeekMoE with sigmoid grouped top-k, the selection bias and shared experts) under GLM's own
config: which layers are dense is ``mlp_layer_types`` ("dense" / "sparse" per layer; by default the first
layer only), and the multi-token-prediction layer stored after the last one is not used."""

from __future__ import annotations

import dataclasses

from ..config import TransformerConfig
from . import deepseek_v3
from .base import ConfigError, Tensor, need, rotary_dims, unsupported_cfg

NAME = "glm4_moe_lite"
MODEL_TYPES = ("glm4_moe_lite",)
ARCHITECTURE = "Glm4MoeLiteForCausalLM"
ignored = deepseek_v3.ignored


def _dense_layers(hf: dict) -> tuple[int, tuple[int, ...]]:
    """(leading dense layers, the dense layers after the first MoE one) from ``mlp_layer_types``."""
    n = need(hf, "num_hidden_layers")
    types = hf.get("mlp_layer_types") or ["dense"] + ["sparse"] * (n - 1)
    if not isinstance(types, list) or len(types) != n or any(t not in ("dense", "sparse") for t in types):
        raise ConfigError(f"config.json: mlp_layer_types must name 'dense' or 'sparse' for each of the {n} layers")
    if "sparse" not in types:
        raise ConfigError("config.json: mlp_layer_types has no 'sparse' layer (a dense model)")
    first = types.index("sparse")
    return first, tuple(i for i in range(first, n) if types[i] == "dense")


def from_hf(hf: dict) -> TransformerConfig:
    if rotary_dims(hf, need(hf, "qk_rope_head_dim")):  # the latent attention rotates its whole rotary key
        raise ConfigError("config.json: partial_rotary_factor is not supported (only 1.0 with MLA)")
    first, later = _dense_layers(hf)
    cfg = deepseek_v3.from_hf({"rms_norm_eps": 1e-5, **hf, "first_k_dense_replace": first})
    return dataclasses.replace(cfg, family=NAME, moe=dataclasses.replace(cfg.moe, dense_layers=later))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, mla=cfg.mla is None)
    m = cfg.moe
    out = deepseek_v3.to_hf(dataclasses.replace(cfg, family=deepseek_v3.NAME,
                                                moe=None if m is None else dataclasses.replace(m, dense_layers=())))
    del out["first_k_dense_replace"]
    out.update(model_type=NAME, architectures=[ARCHITECTURE],
               mlp_layer_types=["sparse" if m.is_moe(i) else "dense" for i in range(cfg.n_layers)])
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    return deepseek_v3.tensors(cfg)
