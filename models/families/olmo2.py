"""OLMo-2: no norm before attention or MLP, an RMSNorm on each one's output instead (``post_attention_layernorm``,
``post_feedforward_layernorm``), and q/k RMSNorm over the whole projection (all heads at once)."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from .base import (
    Tensor,
    common_from_hf,
    common_to_hf,
    gqa_tensors,
    mlp_tensors,
    outer_tensors,
    refuse,
    unsupported_cfg,
)

NAME = "olmo2"
MODEL_TYPES = ("olmo2",)
ARCHITECTURE = "Olmo2ForCausalLM"


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "attention_bias", lambda v: not v, "attention biases")
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    refuse(hf, "clip_qkv", lambda v: v is None, "clipped q/k/v")
    hf = {"rms_norm_eps": 1e-5, **hf}
    return TransformerConfig(**common_from_hf(hf, NAME, qk_norm=True, qk_norm_whole=True, pre_norm=False,
                                              sandwich_norm=True))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, qk_norm=not cfg.qk_norm, qk_norm_whole=not cfg.qk_norm_whole,
                    pre_norm=cfg.pre_norm, sandwich_norm=not cfg.sandwich_norm, moe=cfg.moe is not None,
                    mla=cfg.mla is not None, sliding_window=any(cfg.sliding_layers))
    return {**common_to_hf(cfg, "olmo2", ARCHITECTURE), "attention_bias": False}


def post_norm_tensors(seg: str) -> list[Tensor]:
    """OLMo-2's two norms, on the attention's and the MLP's outputs (none before them)."""
    pre = "model.layers.{i}"
    return [Tensor((seg, "post_attn_norm", "scale"), f"{pre}.post_attention_layernorm.weight"),
            Tensor((seg, "post_mlp_norm", "scale"), f"{pre}.post_feedforward_layernorm.weight")]


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = outer_tensors(cfg)
    for seg, *_ in segments(cfg):
        out += post_norm_tensors(seg) + gqa_tensors(seg, cfg) + mlp_tensors((seg, "mlp"), "model.layers.{i}.mlp")
    return out
