"""DeepSeek-V3: multi-head latent attention, and DeepSeekMoE (sigmoid scores, grouped top-k with the
per-expert selection bias, routed_scaling_factor, shared experts) after ``first_k_dense_replace`` dense layers.
The routing is aux-loss-free: balance comes from updating ``score_bias`` with the reported expert load, so
``aux_loss_coef`` is 0. Multi-token-prediction layers stored after the last layer are not used (ignored)."""

from __future__ import annotations

import re

from ..config import MLAConfig, MoEConfig, TransformerConfig
from ..transformer import segments
from .base import (
    Tensor,
    common_from_hf,
    common_to_hf,
    expert_tensors,
    llama_like,
    mlp_tensors,
    need,
    refuse,
    unsupported_cfg,
)

NAME = "deepseek_v3"
MODEL_TYPES = ("deepseek_v3", "kimi_k2")  # Kimi K2 / K2-Thinking: DeepSeek-V3's layers under their own type
ARCHITECTURE = "DeepseekV3ForCausalLM"


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "attention_bias", lambda v: not v, "MLA projection biases")
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    refuse(hf, "scoring_func", lambda v: v == "sigmoid", "only sigmoid routing scores")
    refuse(hf, "topk_method", lambda v: v == "noaux_tc", "only noaux_tc grouped top-k")
    refuse(hf, "moe_layer_freq", lambda v: v == 1, "MoE only every n-th layer")
    return TransformerConfig(**common_from_hf(hf, NAME, **mla_from_hf(hf), moe=moe_from_hf(hf)))


def mla_from_hf(hf: dict) -> dict:
    """The latent attention's fields as config.json spells them (DeepSeek-V3 and the families running its layers):
    every head its own key/value, the head size the query/key width."""
    mla = MLAConfig(q_lora_rank=hf.get("q_lora_rank") or 0, kv_lora_rank=need(hf, "kv_lora_rank"),
                    qk_nope_dim=need(hf, "qk_nope_head_dim"), qk_rope_dim=need(hf, "qk_rope_head_dim"),
                    v_dim=need(hf, "v_head_dim"), rope_interleave=bool(hf.get("rope_interleave", True)))
    return {"n_kv_heads": need(hf, "num_attention_heads"), "head_dim": mla.qk_nope_dim + mla.qk_rope_dim, "mla": mla}


def mla_to_hf(a: MLAConfig) -> dict:
    return {"q_lora_rank": a.q_lora_rank or None, "kv_lora_rank": a.kv_lora_rank, "qk_nope_head_dim": a.qk_nope_dim,
            "qk_rope_head_dim": a.qk_rope_dim, "v_head_dim": a.v_dim, "rope_interleave": a.rope_interleave}


def moe_from_hf(hf: dict, first_dense_default: int = 0) -> MoEConfig:
    """DeepSeekMoE as config.json spells it (DeepSeek-V3, GLM-4.5)."""
    return MoEConfig(n_experts=need(hf, "n_routed_experts"), top_k=need(hf, "num_experts_per_tok"),
                     ffn_dim=need(hf, "moe_intermediate_size"), n_shared=int(hf.get("n_shared_experts") or 0),
                     first_dense=int(hf.get("first_k_dense_replace", first_dense_default) or 0), score="sigmoid",
                     norm_topk=bool(hf.get("norm_topk_prob", True)),
                     scaling=float(hf.get("routed_scaling_factor", 1.0)), n_group=int(hf.get("n_group") or 1),
                     topk_group=int(hf.get("topk_group") or 1), score_bias=True, aux_loss_coef=0.0)


def moe_to_hf(m: MoEConfig) -> dict:
    return {"n_routed_experts": m.n_experts, "num_experts_per_tok": m.top_k, "moe_intermediate_size": m.ffn_dim,
            "n_shared_experts": m.n_shared, "first_k_dense_replace": m.first_dense, "norm_topk_prob": m.norm_topk,
            "routed_scaling_factor": m.scaling, "n_group": m.n_group, "topk_group": m.topk_group}


def moe_unsupported(m: MoEConfig | None) -> bool:
    """Routing DeepSeekMoE's checkpoint fields cannot express."""
    return (m is None or m.score != "sigmoid" or not m.score_bias or m.group_score != "top2" or m.dense_layers != ()
            or m.shared_ffn > 0 or m.shared_gate or m.router_bias or m.expert_bias)


def moe_tensors(seg: str, cfg: TransformerConfig, pre: str = "model.layers.{i}") -> list[Tensor]:
    """A MoE layer's router, its selection bias (DeepSeek-V3's; V2 has none), routed and shared experts."""
    out = expert_tensors(seg, f"{pre}.mlp")
    if cfg.moe.score_bias:
        out.append(Tensor((seg, "mlp", "score_bias"), f"{pre}.mlp.gate.e_score_correction_bias"))
    if cfg.moe.n_shared:
        out += mlp_tensors((seg, "mlp", "shared"), f"{pre}.mlp.shared_experts")
    return out


def to_hf(cfg: TransformerConfig) -> dict:
    m, a = cfg.moe, cfg.mla
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, mla=a is None, moe=moe_unsupported(m))
    out = common_to_hf(cfg, "deepseek_v3", ARCHITECTURE)
    del out["head_dim"]
    out.update(**mla_to_hf(a), **moe_to_hf(m), num_nextn_predict_layers=0)
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    out = llama_like(cfg, segs, attention=False)
    for seg, _, _, moe in segs:
        out += mla_tensors(seg, cfg)
        if moe:
            out += moe_tensors(seg, cfg)
    return out


def mla_tensors(seg: str, cfg: TransformerConfig, pre: str = "model.layers.{i}") -> list[Tensor]:
    """The latent attention's projections and norms under DeepSeek's names."""
    if cfg.mla.q_lora_rank:
        out = [Tensor((seg, "attn", "q_a"), f"{pre}.self_attn.q_a_proj.weight", "t1"),
               Tensor((seg, "attn", "q_norm", "scale"), f"{pre}.self_attn.q_a_layernorm.weight"),
               Tensor((seg, "attn", "q_b"), f"{pre}.self_attn.q_b_proj.weight", "t1")]
    else:
        out = [Tensor((seg, "attn", "q"), f"{pre}.self_attn.q_proj.weight", "t1")]
    return out + [Tensor((seg, "attn", "kv_a"), f"{pre}.self_attn.kv_a_proj_with_mqa.weight", "t1"),
                  Tensor((seg, "attn", "kv_norm", "scale"), f"{pre}.self_attn.kv_a_layernorm.weight"),
                  Tensor((seg, "attn", "kv_b"), f"{pre}.self_attn.kv_b_proj.weight", "t1"),
                  Tensor((seg, "attn", "o"), f"{pre}.self_attn.o_proj.weight", "t2")]


_LAYER = re.compile(r"model\.layers\.(\d+)\.")


def ignored(name: str, cfg: TransformerConfig) -> bool:
    """Multi-token-prediction modules are stored as extra layers after the last one (DeepSeek-V3, GLM-4.5)."""
    m = _LAYER.match(name)
    return m is not None and int(m.group(1)) >= cfg.n_layers
