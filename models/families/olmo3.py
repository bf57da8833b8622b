"""OLMo-3 (``model_type`` olmo3, the Olmo-3 Think and Instruct models): OLMo-2's layers (norms on the attention
and MLP outputs only, q/k RMSNorm over the whole projection) with sliding-window layers, three of every four
unless ``layer_types`` says otherwise. Sliding layers rotate unscaled; a ``rope_scaling`` (YaRN in the long-
context models) applies to the full layers only, as in the reference."""

from __future__ import annotations

from ..config import TransformerConfig
from . import olmo2
from .base import (
    ConfigError,
    common_from_hf,
    common_to_hf,
    every_nth_full,
    layered_rope_from_hf,
    layered_rope_to_hf,
    refuse,
    unsupported_cfg,
    window_from_hf,
)

NAME = "olmo3"
MODEL_TYPES = ("olmo3",)
ARCHITECTURE = "Olmo3ForCausalLM"
THETA = 500000.0  # the reference's default base
tensors = olmo2.tensors


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "attention_bias", lambda v: not v, "attention biases")
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    n = hf.get("num_hidden_layers")
    hf = {"rms_norm_eps": 1e-5, "sliding_window": 4096, "rope_theta": THETA, **hf}
    if not hf.get("layer_types") and isinstance(n, int):
        hf["layer_types"] = every_nth_full(n, 4)
    if hf.get("layer_types") is not None and len(hf["layer_types"]) != n:
        raise ConfigError(f"config.json: layer_types has {len(hf['layer_types'])} entries for {n} layers")
    theta, scaling, local_theta = layered_rope_from_hf(hf, None)
    window = window_from_hf(hf)
    return TransformerConfig(**common_from_hf(
        hf, NAME, rope_theta=theta, rope_scaling=scaling, qk_norm=True, qk_norm_whole=True, pre_norm=False,
        sandwich_norm=True, rope_local_theta=local_theta if window else None, **window))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, qk_norm=not cfg.qk_norm, qk_norm_whole=not cfg.qk_norm_whole,
                    pre_norm=cfg.pre_norm, sandwich_norm=not cfg.sandwich_norm, moe=cfg.moe is not None,
                    mla=cfg.mla is not None)
    out = common_to_hf(cfg, "olmo3", ARCHITECTURE)
    del out["rope_theta"], out["rope_scaling"]
    # every layer's kind is written (the reference would otherwise assume three sliding layers in four)
    return {**out, "attention_bias": False, "sliding_window": cfg.sliding_window or 4096,
            "layer_types": ["sliding_attention" if s else "full_attention" for s in cfg.sliding_layers],
            **layered_rope_to_hf(cfg)}
