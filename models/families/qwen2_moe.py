"""Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): Qwen2 attention (q/k/v biases), softmax top-k routing and a
shared expert of ``shared_expert_intermediate_size`` whose output is scaled by a learned sigmoid gate; dense
layers as in Qwen3-MoE (``mlp_only_layers``, ``decoder_sparse_step``)."""

from __future__ import annotations

from ..config import MoEConfig, TransformerConfig
from ..transformer import segments
from .base import (
    Tensor,
    common_from_hf,
    common_to_hf,
    expert_tensors,
    llama_like,
    mlp_tensors,
    need,
    qwen_moe_dense_layers,
    qwen_moe_dense_to_hf,
    refuse,
    unsupported_cfg,
    window_from_hf,
    window_to_hf,
)
from .qwen3_moe import moe_unsupported

NAME = "qwen2_moe"
MODEL_TYPES = ("qwen2_moe",)
ARCHITECTURE = "Qwen2MoeForCausalLM"


def shared_expert_moe(hf: dict, norm_topk: bool) -> MoEConfig:
    """Softmax top-k routing plus one shared expert of ``shared_expert_intermediate_size`` scaled by a learned
    sigmoid gate, dense layers by ``mlp_only_layers`` / ``decoder_sparse_step`` (Qwen2-MoE, Qwen3-Next,
    Qwen3.5-MoE)."""
    shared = int(hf.get("shared_expert_intermediate_size") or 0)
    return MoEConfig(n_experts=need(hf, "num_experts"), top_k=need(hf, "num_experts_per_tok"),
                     ffn_dim=need(hf, "moe_intermediate_size"), score="softmax", norm_topk=norm_topk,
                     aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)), dense_layers=qwen_moe_dense_layers(hf),
                     n_shared=1 if shared else 0, shared_ffn=shared, shared_gate=bool(shared))


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    moe = shared_expert_moe(hf, bool(hf.get("norm_topk_prob", False)))
    return TransformerConfig(**common_from_hf(hf, NAME, qkv_bias=bool(hf.get("qkv_bias", True)), moe=moe,
                                              **window_from_hf(hf)))


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    unsupported_cfg(cfg, NAME, qk_norm=cfg.qk_norm, mla=cfg.mla is not None,
                    moe=moe_unsupported(m) or m.n_shared > 1 or (m.n_shared > 0) != m.shared_gate)
    return {**common_to_hf(cfg, "qwen2_moe", ARCHITECTURE), "qkv_bias": cfg.qkv_bias, "num_experts": m.n_experts,
            "num_experts_per_tok": m.top_k, "moe_intermediate_size": m.ffn_dim, "norm_topk_prob": m.norm_topk,
            "shared_expert_intermediate_size": (m.shared_ffn or m.ffn_dim) if m.n_shared else 0,
            "router_aux_loss_coef": m.aux_loss_coef, **qwen_moe_dense_to_hf(cfg), **window_to_hf(cfg)}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    out = llama_like(cfg, segs)
    pre = "model.layers.{i}.mlp"
    for s, _, _, moe in segs:
        if moe:
            out += expert_tensors(s, pre)
            if cfg.moe.n_shared:
                out += mlp_tensors((s, "mlp", "shared"), f"{pre}.shared_expert")
                out.append(Tensor((s, "mlp", "shared_gate"), f"{pre}.shared_expert_gate.weight", "t1"))
    return out
