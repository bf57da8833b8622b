"""Mistral 4 (``model_type`` mistral4: Mistral Small 4, its language model read out of the ``mistral3`` wrapper
when released with vision): DeepSeek-V3's multi-head latent attention (rotary pairs interleaved unless
``rope_interleave`` is off) with Ministral 3's query scaling (``1 + beta * log(1 + floor(position / L))`` from
``rope_parameters.llama_4_scaling_beta`` and ``original_max_position_embeddings``), over DeepSeekMoE with softmax
scores: the ``topk_group`` groups whose best two experts score highest, the top-k experts inside them weighted
by their softmax scores, renormalised (``norm_topk_prob``) and times ``routed_scaling_factor``, no selection
bias; shared experts beside them, dense MLPs in the first ``first_k_dense_replace`` layers."""

from __future__ import annotations

from ..config import MoEConfig, TransformerConfig
from ..transformer import segments
from . import deepseek_v3
from .base import ConfigError, Piece, Tensor, common_from_hf, common_to_hf, need, refuse, unsupported_cfg
from .ministral3 import scaled_rope_from_hf, scaled_rope_to_hf

NAME = "mistral4"
MODEL_TYPES = (NAME,)
ARCHITECTURE = "Mistral4ForCausalLM"
ignored = deepseek_v3.ignored
# what the reference's config class fills in where a released config.json leaves a field out
DEFAULTS = {"vocab_size": 131072, "hidden_size": 4096, "intermediate_size": 12288, "moe_intermediate_size": 2048,
            "num_hidden_layers": 36, "num_attention_heads": 32, "n_shared_experts": 1, "n_routed_experts": 128,
            "routed_scaling_factor": 1.0, "kv_lora_rank": 256, "q_lora_rank": 1024, "qk_rope_head_dim": 64,
            "v_head_dim": 128, "qk_nope_head_dim": 64, "n_group": 1, "topk_group": 1, "num_experts_per_tok": 4,
            "first_k_dense_replace": 0, "norm_topk_prob": True, "max_position_embeddings": 1048576,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "rope_interleave": True}
DEFAULT_ROPE = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 128.0, "original_max_position_embeddings": 8192,
                "beta_fast": 32.0, "beta_slow": 1.0, "mscale_all_dim": 1.0, "mscale": 1.0,
                "llama_4_scaling_beta": 0.1}


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "attention_bias", lambda v: not v, "MLA projection biases")
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    hf, scale = scaled_rope_from_hf({**DEFAULTS, **{k: v for k, v in hf.items() if v is not None}}, DEFAULT_ROPE)
    experts, n_group, topk_group = need(hf, "n_routed_experts"), int(hf["n_group"]), int(hf["topk_group"])
    if experts % n_group or not 1 <= topk_group <= n_group:
        raise ConfigError(f"config.json: n_group={n_group} / topk_group={topk_group} do not split "
                          f"n_routed_experts={experts} into groups")
    moe = MoEConfig(n_experts=experts, top_k=need(hf, "num_experts_per_tok"), ffn_dim=need(hf, "moe_intermediate_size"),
                    n_shared=int(hf["n_shared_experts"] or 0), first_dense=int(hf["first_k_dense_replace"] or 0),
                    score="softmax", norm_topk=bool(hf["norm_topk_prob"]), scaling=float(hf["routed_scaling_factor"]),
                    n_group=n_group, topk_group=topk_group, group_score="top2", aux_loss_coef=0.0)
    return TransformerConfig(**common_from_hf(hf, NAME, **deepseek_v3.mla_from_hf(hf), moe=moe),
                             query_length_scale=scale)


def to_hf(cfg: TransformerConfig) -> dict:
    m, a = cfg.moe, cfg.mla
    bad_moe = (m is None or m.score != "softmax" or m.score_bias or m.dense_layers != () or m.shared_ffn > 0
               or m.shared_gate or m.router_bias or m.expert_bias or (m.n_group > 1 and m.group_score != "top2"))
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, mla=a is None or bool(a.index_topk),
                    moe=bad_moe)
    out = common_to_hf(cfg, NAME, ARCHITECTURE)
    del out["head_dim"]
    out.update(
        rope_parameters=scaled_rope_to_hf(cfg, out), **deepseek_v3.mla_to_hf(a), n_routed_experts=m.n_experts,
        num_experts_per_tok=m.top_k,
        moe_intermediate_size=m.ffn_dim, n_shared_experts=m.n_shared, first_k_dense_replace=m.first_dense,
        norm_topk_prob=m.norm_topk, routed_scaling_factor=m.scaling, n_group=m.n_group, topk_group=m.topk_group,
        pad_token_id=None, bos_token_id=None, eos_token_id=None)  # not Mistral's vocabulary's ids
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    """DeepSeek-V3's names (no selection bias: ``cfg.moe.score_bias`` is off), the routed experts fused as
    transformers holds and releases them: ``experts.gate_up_proj`` [E, 2I, d] (gate rows, then up) and
    ``experts.down_proj`` [E, d, I] (the reference reads no per-expert tensors for this model)."""
    out = [t for t in deepseek_v3.tensors(cfg) if ".experts.{e}." not in t.hf]
    pre = "model.layers.{i}.mlp.experts"
    i = cfg.moe.ffn_dim
    for seg, _, _, moe in segments(cfg):
        if moe:
            out += [Tensor((seg, "mlp", n), f"{pre}.gate_up_proj", "x1", piece=Piece(1, k, (i, i)))
                    for k, n in enumerate(("gate", "up"))]
            out.append(Tensor((seg, "mlp", "down"), f"{pre}.down_proj", "x1"))
    return out
