"""Mixtral: Mistral attention with softmax top-k routing (weights always renormalised) and a Switch-style
balancing loss weighted by ``router_aux_loss_coef``. Experts live under ``block_sparse_moe`` as w1 (gate),
w3 (up) and w2 (down)."""

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
    refuse,
    unsupported_cfg,
    window_from_hf,
)

NAME = "mixtral"
MODEL_TYPES = ("mixtral",)
ARCHITECTURE = "MixtralForCausalLM"


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    moe = MoEConfig(n_experts=need(hf, "num_local_experts"), top_k=need(hf, "num_experts_per_tok"),
                    ffn_dim=need(hf, "intermediate_size"), score="softmax", norm_topk=True,
                    aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.02)))
    return TransformerConfig(**common_from_hf(hf, NAME, moe=moe, **window_from_hf(hf)))


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, mla=cfg.mla is not None,
                    moe=m is None or m.score != "softmax" or not m.norm_topk or m.n_shared > 0 or m.first_dense > 0
                    or m.n_group > 1 or m.scaling != 1.0 or m.score_bias,
                    layer_types=len(set(cfg.sliding_layers)) > 1)
    out = {**common_to_hf(cfg, "mixtral", ARCHITECTURE), "num_local_experts": m.n_experts,
           "num_experts_per_tok": m.top_k, "router_aux_loss_coef": m.aux_loss_coef,
           "sliding_window": cfg.sliding_window or None}
    out["intermediate_size"] = m.ffn_dim
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    out = llama_like(cfg, segs)
    for s, *_ in segs:
        out += expert_tensors(s, "model.layers.{i}.block_sparse_moe", names=("w1", "w3", "w2"))
    return out
