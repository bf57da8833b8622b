"""Solar Open (``model_type`` solar_open: Upstage's Solar-Open-100B reasoning model): Llama's attention
(optional q/k/v biases, none on the output projection, whole heads rotary) with GLM-4.5's MoE in every
layer: sigmoid scores chosen with the per-expert selection bias, optional grouped top-k, renormalised,
``routed_scaling_factor``, shared experts. The format has no dense layers (no ``first_k_dense_replace``; a
stored ``intermediate_size`` is unused, as in the reference)."""

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
    whole_heads,
    with_defaults,
)
from .deepseek_v3 import ignored, moe_from_hf, moe_tensors, moe_to_hf, moe_unsupported

NAME = "solar_open"
MODEL_TYPES = ("solar_open",)
ARCHITECTURE = "SolarOpenForCausalLM"
DEFAULT_THETA = 1_000_000.0  # the reference's rope base when config.json names none

__all__ = ["ARCHITECTURE", "MODEL_TYPES", "NAME", "from_hf", "ignored", "tensors", "to_hf"]

# the reference config's defaults for the fields a config.json may leave out (SolarOpenConfig)
DEFAULTS = {"n_routed_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 1280, "n_shared_experts": 1,
            "head_dim": 128, "rms_norm_eps": 1e-5}


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(hf, DEFAULTS, DEFAULT_THETA)
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    whole_heads(hf, hf["head_dim"])
    # every layer routes (the format has no dense layers); the dense width is never used
    moe = moe_from_hf({**hf, "first_k_dense_replace": 0})
    hf = {"intermediate_size": hf["moe_intermediate_size"], **hf}
    return TransformerConfig(**common_from_hf(hf, NAME, qkv_bias=bool(hf.get("attention_bias", False)), moe=moe))


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    unsupported_cfg(cfg, NAME, qk_norm=cfg.qk_norm, out_bias=cfg.out_bias, mla=cfg.mla is not None,
                    sliding_window=cfg.sliding_window > 0, rope_dim=cfg.rope_dim > 0,
                    moe=moe_unsupported(m) or m.first_dense > 0)
    out = {**common_to_hf(cfg, NAME, ARCHITECTURE), **moe_to_hf(m), "attention_bias": cfg.qkv_bias}
    del out["first_k_dense_replace"]
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    return llama_like(cfg, segs) + [t for seg, _, _, moe in segs if moe for t in moe_tensors(seg, cfg)]
