"""Phi-3 / Phi-4 (``model_type`` phi3): Llama arithmetic with q/k/v fused into one ``qkv_proj`` and gate/up
into one ``gate_up_proj`` (rows one part after the other), long-rope scaling (short factors below
``original_max_position_embeddings``, long ones from there) and, for Phi-4-mini, partial rotary."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from .base import (
    ConfigError,
    Piece,
    Tensor,
    common_from_hf,
    common_to_hf,
    gate_up_tensors,
    outer_tensors,
    refuse,
    rotary_dims,
    unsupported_cfg,
    window_from_hf,
)

NAME = "phi3"
MODEL_TYPES = ("phi3",)
ARCHITECTURE = "Phi3ForCausalLM"


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "attention_bias", lambda v: not v, "attention biases")
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    common = common_from_hf(hf, NAME, **window_from_hf(hf))
    if common["rope_scaling"] and common["rope_scaling"]["rope_type"] != "longrope":
        raise ConfigError(f"config.json: rope_scaling.rope_type={common['rope_scaling']['rope_type']!r} is not "
                          "supported for phi3 (longrope)")
    return TransformerConfig(**common, rope_dim=rotary_dims(hf, common["head_dim"]))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, moe=cfg.moe is not None,
                    mla=cfg.mla is not None, layer_types=len(set(cfg.sliding_layers)) > 1)
    out = common_to_hf(cfg, "phi3", ARCHITECTURE)
    out["sliding_window"] = cfg.sliding_window or None
    out.update(pad_token_id=None, bos_token_id=None, eos_token_id=None)  # not Phi-3's vocabulary's ids
    if cfg.rope_dim:
        out["partial_rotary_factor"] = cfg.rope_dim / cfg.head_dim
    if cfg.rope_scaling and cfg.rope_scaling.get("original_max_position_embeddings"):
        out["original_max_position_embeddings"] = cfg.rope_scaling["original_max_position_embeddings"]
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = outer_tensors(cfg)
    pre = "model.layers.{i}"
    qkv = (cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim)
    for seg, *_ in segments(cfg):
        out += [Tensor((seg, "attn_norm", "scale"), f"{pre}.input_layernorm.weight"),
                Tensor((seg, "mlp_norm", "scale"), f"{pre}.post_attention_layernorm.weight"),
                Tensor((seg, "attn", "o"), f"{pre}.self_attn.o_proj.weight", "t2"),
                Tensor((seg, "mlp", "down"), f"{pre}.mlp.down_proj.weight", "t1")]
        out += [Tensor((seg, "attn", n), f"{pre}.self_attn.qkv_proj.weight", "t1", piece=Piece(0, k, qkv))
                for k, n in enumerate("qkv")]
        out += gate_up_tensors(seg, cfg, f"{pre}.mlp")
    return out
