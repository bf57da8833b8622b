"""Qwen3.5-MoE (Qwen3.5-35B-A3B, -122B-A10B, -397B-A17B): Qwen3.5's layers (``qwen3_5``: Gated DeltaNet and
gated attention, three to one) with a routed MLP in every layer: softmax top-k over ``num_experts`` whose chosen
weights are always renormalised, plus one shared expert of ``shared_expert_intermediate_size`` scaled by a
learned sigmoid gate (as Qwen2-MoE's)."""

from __future__ import annotations

import dataclasses

from ..config import TransformerConfig
from ..transformer import segments
from . import qwen3_5
from .base import Tensor, expert_tensors, mlp_tensors, need, unsupported_cfg
from .qwen2_moe import shared_expert_moe

NAME = "qwen3_5_moe"
MODEL_TYPES = ("qwen3_5_moe_text",)
ARCHITECTURE = "Qwen3_5MoeForCausalLM"
ignored = qwen3_5.ignored


def from_hf(hf: dict) -> TransformerConfig:
    shared = int(need(hf, "shared_expert_intermediate_size"))
    # every layer routes, and the router always renormalises (the reference reads no switch for either)
    moe = shared_expert_moe({k: v for k, v in hf.items() if k not in ("mlp_only_layers", "decoder_sparse_step")},
                            norm_topk=True)
    dense = qwen3_5.from_hf({**hf, "intermediate_size": hf.get("intermediate_size") or shared})
    return dataclasses.replace(dense, family=NAME, moe=moe)


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    bad = (m is None or m.score != "softmax" or not m.norm_topk or m.n_group > 1 or m.scaling != 1.0
           or m.score_bias or m.router_bias or m.expert_bias or m.n_shared != 1 or not m.shared_gate
           or m.dense_layers or m.first_dense)
    unsupported_cfg(cfg, NAME, moe=bad)
    out = qwen3_5.to_hf(cfg, moe_ok=True)
    out.update({"model_type": "qwen3_5_moe_text", "architectures": [ARCHITECTURE], "num_experts": m.n_experts,
                "num_experts_per_tok": m.top_k, "moe_intermediate_size": m.ffn_dim,
                "shared_expert_intermediate_size": m.shared_ffn or m.ffn_dim, "router_aux_loss_coef": m.aux_loss_coef})
    out.pop("intermediate_size", None)
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = qwen3_5.layer_tensors(cfg, dense_mlp=False)
    pre = "model.layers.{i}.mlp"
    for s, _, _, moe in segments(cfg):
        out += expert_tensors(s, pre) + mlp_tensors((s, "mlp", "shared"), f"{pre}.shared_expert")
        out.append(Tensor((s, "mlp", "shared_gate"), f"{pre}.shared_expert_gate.weight", "t1"))
    return out
