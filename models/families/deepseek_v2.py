"""DeepSeek-V2 (``model_type`` deepseek_v2: DeepSeek-V2, V2-Lite, V2.5, DeepSeek-Coder-V2): DeepSeek-V3's
multi-head latent attention (rotary on adjacent pairs; V2-Lite projects its queries without the low-rank
step) and DeepSeekMoE with softmax scores, after ``first_k_dense_replace`` dense layers. The top-k experts
are taken over all experts (``topk_method: greedy``) or inside the ``topk_group`` groups whose best expert
scores highest (``group_limited_greedy``), weighted by their softmax scores times ``routed_scaling_factor``
and not renormalised, as the reference computes them. No selection bias. DeepSeek's sequence-wise balancing
loss (``aux_loss_alpha``, used in pre-training) is not applied; ``model.moe.aux_loss_coef`` adds the
batch-level one."""

from __future__ import annotations

from ..config import MoEConfig, TransformerConfig
from . import deepseek_v3
from .base import ConfigError, Tensor, common_from_hf, common_to_hf, need, refuse, unsupported_cfg

NAME = "deepseek_v2"
MODEL_TYPES = ("deepseek_v2",)
ARCHITECTURE = "DeepseekV2ForCausalLM"
ignored = deepseek_v3.ignored
METHODS = ("greedy", "group_limited_greedy")


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "attention_bias", lambda v: not v, "MLA projection biases")
    refuse(hf, "mlp_bias", lambda v: not v, "MLP biases")
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    refuse(hf, "scoring_func", lambda v: v == "softmax", "only softmax routing scores")
    refuse(hf, "topk_method", lambda v: v in METHODS, f"only {' or '.join(METHODS)}")
    refuse(hf, "moe_layer_freq", lambda v: v == 1, "MoE only every n-th layer")
    # the reference never renormalises the chosen experts' weights, whatever this says
    refuse(hf, "norm_topk_prob", lambda v: not v, "the reference ignores it and does not renormalise")
    grouped = hf.get("topk_method", "greedy") == "group_limited_greedy"
    n_group, topk_group = (int(need(hf, "n_group")), int(need(hf, "topk_group"))) if grouped else (1, 1)
    experts = need(hf, "n_routed_experts")
    if experts % n_group or not 1 <= topk_group <= n_group:
        raise ConfigError(f"config.json: n_group={n_group} / topk_group={topk_group} do not split "
                          f"n_routed_experts={experts} into groups")
    moe = MoEConfig(n_experts=experts, top_k=need(hf, "num_experts_per_tok"),
                    ffn_dim=need(hf, "moe_intermediate_size"), n_shared=int(hf.get("n_shared_experts") or 0),
                    first_dense=int(hf.get("first_k_dense_replace") or 0),
                    score="softmax", norm_topk=False, scaling=float(hf.get("routed_scaling_factor", 1.0)),
                    n_group=n_group, topk_group=topk_group, group_score="max", aux_loss_coef=0.0)
    mla = deepseek_v3.mla_from_hf({**hf, "rope_interleave": True})
    return TransformerConfig(**common_from_hf(hf, NAME, **mla, moe=moe))


def to_hf(cfg: TransformerConfig) -> dict:
    m, a = cfg.moe, cfg.mla
    bad_moe = (m is None or m.score != "softmax" or m.norm_topk or m.score_bias or m.dense_layers != ()
               or m.shared_ffn > 0 or m.shared_gate or m.router_bias or m.expert_bias
               or (m.n_group > 1 and m.group_score != "max"))
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, mla=a is None or not a.rope_interleave,
                    moe=bad_moe)
    out = common_to_hf(cfg, "deepseek_v2", ARCHITECTURE)
    del out["head_dim"]
    out.update(
        q_lora_rank=a.q_lora_rank or None, kv_lora_rank=a.kv_lora_rank, qk_nope_head_dim=a.qk_nope_dim,
        qk_rope_head_dim=a.qk_rope_dim, v_head_dim=a.v_dim, n_routed_experts=m.n_experts,
        num_experts_per_tok=m.top_k, moe_intermediate_size=m.ffn_dim, n_shared_experts=m.n_shared,
        first_k_dense_replace=m.first_dense, routed_scaling_factor=m.scaling, norm_topk_prob=False,
        topk_method="group_limited_greedy" if m.n_group > 1 else "greedy",
        n_group=m.n_group if m.n_group > 1 else None, topk_group=m.topk_group if m.n_group > 1 else None,
        pad_token_id=None, bos_token_id=None, eos_token_id=None)  # not DeepSeek's vocabulary's ids
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    return deepseek_v3.tensors(cfg)  # V3's names, without the selection bias (cfg.moe.score_bias is off)
