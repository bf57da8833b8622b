"""Sarvam-30B and Param2-Thinking (``model_type`` sarvam_moe, param2moe: Sarvam AI's and BharatGen's reasoning
MoEs, which transformers runs as GLM-4.5): grouped-query attention with per-head q/k norms (``use_qk_norm``),
optional q/k/v biases (``use_qkv_bias``) and rotary on whole heads, over DeepSeekMoE layers (sigmoid scores
chosen with the per-expert selection bias, grouped top-k, ``routed_scaling_factor``, shared experts) after
``first_k_dense_replace`` dense layers. Their checkpoints keep the original (Ling-style) names, as transformers
writes them back: ``word_embeddings``, ``attention.query_key_value`` (each token's queries, keys and values in
one tensor), ``attention.dense``, ``query_layernorm`` / ``key_layernorm``, the selection bias as
``mlp.gate.expert_bias``; their config.json names the experts ``num_experts`` / ``num_shared_experts``. The
rope base when config.json names none: 8e6 (Sarvam), 5e5 (Param2)."""

from __future__ import annotations

import dataclasses

from ..config import TransformerConfig
from ..transformer import segments
from . import glm4_moe
from .base import Piece, Tensor, aliased, expert_tensors, mlp_tensors, with_defaults

NAME = "sarvam_moe"
MODEL_TYPES = ("sarvam_moe", "param2moe")
ARCHITECTURE = "Glm4MoeForCausalLM"  # (the class transformers runs both with)
ignored = glm4_moe.ignored
THETA = {"sarvam_moe": 8_000_000.0, "param2moe": 500_000.0}
ALIASES = {"num_experts": "n_routed_experts", "num_shared_experts": "n_shared_experts",
           "use_qkv_bias": "attention_bias"}  # (the released config.json's names)


def from_hf(hf: dict) -> TransformerConfig:
    kind = hf.get("model_type") if hf.get("model_type") in THETA else NAME
    hf = aliased(hf, ALIASES)
    hf = with_defaults(hf, {"partial_rotary_factor": 1.0, "first_k_dense_replace": 1}, THETA[kind])
    cfg = glm4_moe.from_hf(hf)
    return dataclasses.replace(cfg, family=kind)


def to_hf(cfg: TransformerConfig) -> dict:
    out = glm4_moe.to_hf(dataclasses.replace(cfg, family=glm4_moe.NAME))
    return {**out, "model_type": cfg.family, "architectures": [ARCHITECTURE]}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    pre = "model.layers.{i}"
    out = [Tensor(("embed",), "model.word_embeddings.weight"), Tensor(("final_norm", "scale"), "model.norm.weight")]
    if not cfg.tie_embeddings:
        out.append(Tensor(("lm_head",), "lm_head.weight", "t1"))
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    for seg, _, _, moe in segments(cfg):
        out += [Tensor((seg, "attn_norm", "scale"), f"{pre}.input_layernorm.weight"),
                Tensor((seg, "mlp_norm", "scale"), f"{pre}.post_attention_layernorm.weight"),
                Tensor((seg, "attn", "o"), f"{pre}.attention.dense.weight", "t2")]
        qkv = f"{pre}.attention.query_key_value"
        out += [Tensor((seg, "attn", n), f"{qkv}.weight", "t1", piece=Piece(0, j, (q, kv, kv)))
                for j, n in enumerate("qkv")]
        if cfg.qkv_bias:
            out += [Tensor((seg, "attn", f"{n}_bias"), f"{qkv}.bias", "flat", piece=Piece(0, j, (q, kv, kv)))
                    for j, n in enumerate("qkv")]
        if cfg.qk_norm:
            out += [Tensor((seg, "attn", f"{n}_norm", "scale"), f"{pre}.attention.{w}_layernorm.weight")
                    for n, w in (("q", "query"), ("k", "key"))]
        if not moe:
            out += mlp_tensors((seg, "mlp"), f"{pre}.mlp")
            continue
        out += expert_tensors(seg, f"{pre}.mlp")
        out.append(Tensor((seg, "mlp", "score_bias"), f"{pre}.mlp.gate.expert_bias"))
        if cfg.moe.n_shared:
            out += mlp_tensors((seg, "mlp", "shared"), f"{pre}.mlp.shared_experts")
    return out


__all__ = ["ARCHITECTURE", "MODEL_TYPES", "NAME", "from_hf", "ignored", "tensors", "to_hf"]
