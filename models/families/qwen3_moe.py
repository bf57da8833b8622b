"""Qwen3-MoE: Qwen3 attention (q/k norm) with softmax top-k routing over experts, ``norm_topk_prob``, and a
Switch-style balancing loss weighted by ``router_aux_loss_coef``. Layers in ``mlp_only_layers`` (and, with
``decoder_sparse_step`` > 1, those between the sparse ones) have a dense MLP of ``intermediate_size``."""

from __future__ import annotations

from ..config import MoEConfig, TransformerConfig
from ..transformer import segments
from .base import (
    Tensor,
    common_from_hf,
    common_to_hf,
    expert_tensors,
    llama_like,
    need,
    qwen_moe_dense_layers,
    qwen_moe_dense_to_hf,
    refuse,
    unsupported_cfg,
    window_from_hf,
    window_to_hf,
)

NAME = "qwen3_moe"
MODEL_TYPES = ("qwen3_moe",)
ARCHITECTURE = "Qwen3MoeForCausalLM"


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "attention_bias", lambda v: not v, "attention biases include o_proj")
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    n_experts = hf.get("num_experts") or need(hf, "num_local_experts")
    moe = MoEConfig(n_experts=n_experts, top_k=need(hf, "num_experts_per_tok"),
                    ffn_dim=need(hf, "moe_intermediate_size"), score="softmax",
                    norm_topk=bool(hf.get("norm_topk_prob", False)),
                    aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)), dense_layers=qwen_moe_dense_layers(hf))
    return TransformerConfig(**common_from_hf(hf, NAME, qk_norm=True, moe=moe, **window_from_hf(hf)))


def moe_unsupported(m) -> bool:
    """MoE features outside the Qwen MoE formats (shared experts are Qwen2-MoE's, checked there)."""
    return (m is None or m.score != "softmax" or m.n_group > 1 or m.scaling != 1.0 or m.score_bias
            or m.router_bias or m.expert_bias)


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, qk_norm=not cfg.qk_norm, mla=cfg.mla is not None,
                    moe=moe_unsupported(m) or m.n_shared > 0 or m.shared_ffn > 0)
    return {**common_to_hf(cfg, "qwen3_moe", ARCHITECTURE), "attention_bias": False, "num_experts": m.n_experts,
            "num_experts_per_tok": m.top_k, "moe_intermediate_size": m.ffn_dim, "norm_topk_prob": m.norm_topk,
            "router_aux_loss_coef": m.aux_loss_coef, **qwen_moe_dense_to_hf(cfg), **window_to_hf(cfg)}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    return llama_like(cfg, segs) + [t for s, _, _, moe in segs if moe for t in expert_tensors(s, "model.layers.{i}.mlp")]
