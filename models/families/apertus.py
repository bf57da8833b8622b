"""Apertus (``model_type`` apertus: the Swiss AI Initiative's fully open Apertus-8B and -70B): Llama's attention
with per-head q/k RMSNorms before the rotary (optional biases on all four projections), an ungated MLP
``down(xielu(up x))`` whose xIELU activation has learned scalars of its own in every layer (``mlp.act_fn``:
``alpha_p`` and ``alpha_n`` trained, ``beta`` and ``eps`` stored beside them and held), norms named
``attention_layernorm`` / ``feedforward_layernorm``; Llama 3 rope at base 12e6 stretched 8x from 8192 positions
when config.json names none (the reference's default)."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from .base import (
    Tensor,
    common_from_hf,
    common_to_hf,
    gqa_tensors,
    outer_tensors,
    refuse,
    unsupported_cfg,
    whole_heads,
)

NAME = "apertus"
MODEL_TYPES = ("apertus",)
ARCHITECTURE = "ApertusForCausalLM"
ACTIVATIONS = ("xielu", "relu2")  # the MLP activations its format writes (ungated both)
DEFAULT_ROPE = {"rope_type": "llama3", "rope_theta": 12_000_000.0, "factor": 8.0,
                "original_max_position_embeddings": 8192, "low_freq_factor": 1.0, "high_freq_factor": 4.0}


def from_hf(hf: dict) -> TransformerConfig:
    hf = {"hidden_act": "xielu", "rms_norm_eps": 1e-5, **{k: v for k, v in hf.items() if v is not None}}
    if "rope_parameters" not in hf and "rope_theta" not in hf and "rope_scaling" not in hf:
        hf["rope_parameters"] = DEFAULT_ROPE
    refuse(hf, "hidden_act", lambda v: v in ACTIVATIONS, f"an ungated MLP of {' or '.join(ACTIVATIONS)}")
    refuse(hf, "mlp_bias", lambda v: not v, "MLP projections without biases")
    whole_heads(hf, hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"])
    bias = bool(hf.get("attention_bias", False))
    return TransformerConfig(**common_from_hf(hf, NAME, qk_norm=True, qkv_bias=bias, out_bias=bias,
                                              activation=hf["hidden_act"]))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, qk_norm=not cfg.qk_norm, qk_norm_whole=cfg.qk_norm_whole,
                    qkv_bias=cfg.qkv_bias != cfg.out_bias, moe=cfg.moe is not None, mla=cfg.mla is not None,
                    sliding_window=cfg.sliding_window > 0, rope_dim=bool(cfg.rope_dim and cfg.rope_dim != cfg.head_dim))
    return {**common_to_hf(cfg, NAME, ARCHITECTURE), "hidden_act": cfg.activation, "attention_bias": cfg.qkv_bias,
            "mlp_bias": False}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = outer_tensors(cfg)
    pre = "model.layers.{i}"
    for seg, *_ in segments(cfg):
        out += [Tensor((seg, "attn_norm", "scale"), f"{pre}.attention_layernorm.weight"),
                Tensor((seg, "mlp_norm", "scale"), f"{pre}.feedforward_layernorm.weight"),
                Tensor((seg, "mlp", "up"), f"{pre}.mlp.up_proj.weight", "t1"),
                Tensor((seg, "mlp", "down"), f"{pre}.mlp.down_proj.weight", "t1")]
        out += gqa_tensors(seg, cfg, f"{pre}.self_attn")
        if cfg.activation == "xielu":
            out += [Tensor((seg, "mlp", f"act_{n}"), f"{pre}.mlp.act_fn.{n}", "same" if n.startswith("alpha") else
                           "scalar") for n in ("alpha_p", "alpha_n", "beta", "eps")]
    return out
