"""Seed-OSS (``model_type`` seed_oss, ByteDance's Seed-OSS-36B reasoning models): the Llama layout with
biases on the q/k/v projections (``attention_bias``, on by default) and optionally on the output projection
(``attention_out_bias``). The checkpoint's ``attention_dropout`` / ``residual_dropout`` are training-time
dropout, which these layers never apply (nor does an RL trainer want it: it would make the trainer's log-probs
differ from the sampler's)."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from .base import Tensor, common_from_hf, common_to_hf, llama_like, refuse, unsupported_cfg

NAME = "seed_oss"
MODEL_TYPES = ("seed_oss",)
ARCHITECTURE = "SeedOssForCausalLM"


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "mlp_bias", lambda v: not v, "MLP biases")
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    hf = {"head_dim": 128, **hf}  # the reference's default, not hidden_size / heads
    return TransformerConfig(**common_from_hf(hf, NAME, qkv_bias=bool(hf.get("attention_bias", True)),
                                              out_bias=bool(hf.get("attention_out_bias", False))))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, qk_norm=cfg.qk_norm, moe=cfg.moe is not None, mla=cfg.mla is not None,
                    sliding_window=cfg.sliding_window > 0)
    return {**common_to_hf(cfg, "seed_oss", ARCHITECTURE), "attention_bias": cfg.qkv_bias,
            "attention_out_bias": cfg.out_bias, "mlp_bias": False}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    return llama_like(cfg, segments(cfg))
