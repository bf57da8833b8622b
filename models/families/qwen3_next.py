"""Qwen3-Next (Qwen3-Next-80B-A3B Instruct / Thinking): the hybrid layers Qwen3.5 inherited (``qwen3_5``: Gated
DeltaNet and gated attention, three to one, zero-centred norms) with a routed MLP of softmax top-k experts
(``norm_topk_prob``) and a sigmoid-gated shared expert, dense layers as in Qwen3-MoE (``mlp_only_layers``,
``decoder_sparse_step``).

Its linear layers fuse their projections by key head: ``in_proj_qkvz`` holds, for each key head, its q and k
rows and then the v and z rows of the value heads that read it; ``in_proj_ba`` likewise its value heads' b, then
their a. They are read into the same parameters as Qwen3.5's (``Piece`` groups), so one layer serves both."""

from __future__ import annotations

import dataclasses

from ..config import TransformerConfig
from ..transformer import segments
from . import qwen3_5
from .base import (
    Piece,
    Tensor,
    expert_tensors,
    mlp_tensors,
    outer_tensors,
    qwen_moe_dense_to_hf,
    unsupported_cfg,
)
from .qwen2_moe import shared_expert_moe

NAME = "qwen3_next"
MODEL_TYPES = ("qwen3_next",)
ARCHITECTURE = "Qwen3NextForCausalLM"
ignored = qwen3_5.ignored


def from_hf(hf: dict) -> TransformerConfig:
    moe = shared_expert_moe(hf, bool(hf.get("norm_topk_prob", True)))
    cfg = qwen3_5.from_hf(hf)
    return dataclasses.replace(cfg, family=NAME, moe=moe)


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    bad = (m is None or m.score != "softmax" or m.n_group > 1 or m.scaling != 1.0 or m.score_bias or m.router_bias
           or m.expert_bias or m.n_shared > 1 or (m.n_shared > 0) != m.shared_gate or m.first_dense)
    unsupported_cfg(cfg, NAME, moe=bad)
    out = qwen3_5.to_hf(cfg, moe_ok=True)
    out.update({"model_type": NAME, "architectures": [ARCHITECTURE], "num_experts": m.n_experts,
                "num_experts_per_tok": m.top_k, "moe_intermediate_size": m.ffn_dim, "norm_topk_prob": m.norm_topk,
                "shared_expert_intermediate_size": (m.shared_ffn or m.ffn_dim) if m.n_shared else 0,
                "router_aux_loss_coef": m.aux_loss_coef, **qwen_moe_dense_to_hf(cfg)})
    return out


def linear_tensors(seg: str, cfg: TransformerConfig) -> list[Tensor]:
    lin = cfg.linear
    pre = "model.layers.{i}.linear_attn"
    r = lin.v_heads // lin.k_heads
    qkvz = (lin.k_dim, lin.k_dim, r * lin.v_dim, r * lin.v_dim)
    out = [t for t in qwen3_5.linear_tensors(seg, cfg, pre) if "in_proj" not in t.hf]
    out += [Tensor((seg, "attn", n), f"{pre}.in_proj_qkvz.weight", "t1", piece=Piece(0, j, qkvz, groups=lin.k_heads))
            for j, n in enumerate("qkvz")]
    out += [Tensor((seg, "attn", n), f"{pre}.in_proj_ba.weight", "t1", piece=Piece(0, j, (r, r), groups=lin.k_heads))
            for j, n in enumerate("ba")]
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = outer_tensors(cfg)
    pre = "model.layers.{i}.mlp"
    for seg, _, _, moe in segments(cfg):
        out += [Tensor((seg, "attn_norm", "scale"), "model.layers.{i}.input_layernorm.weight"),
                Tensor((seg, "mlp_norm", "scale"), "model.layers.{i}.post_attention_layernorm.weight")]
        out += linear_tensors(seg, cfg) if seg.startswith("linear") else qwen3_5.attention_tensors(seg, cfg)
        if not moe:
            out += mlp_tensors((seg, "mlp"), pre)
            continue
        out += expert_tensors(seg, pre)
        if cfg.moe.n_shared:
            out += mlp_tensors((seg, "mlp", "shared"), f"{pre}.shared_expert")
            out.append(Tensor((seg, "mlp", "shared_gate"), f"{pre}.shared_expert_gate.weight", "t1"))
    return out
