"""Kolibri-1 (``model_type`` kolibri1): EXAONE 4.0's attention (per-head q/k RMSNorm; with a ``sliding_window``,
sliding layers with rotary embedding and full ones without any, four sliding to one full unless ``layer_types``
says otherwise; without one, every layer full and rotary) in GLM-4's layers (norms before and after attention and
MLP), and in every layer routed experts beside an always-on shared expert: experts chosen by top-k of the router
logits plus a selection-only bias (new MoE switch ``bias_on_logits``; DeepSeek-V3 adds it to the sigmoid scores),
weighted by the chosen experts' sigmoid scores, renormalised only with ``norm_topk_prob`` (off by default). The
reference saves under the original names: ``post_attn_norm`` / ``post_ffn_norm`` and ``moe.router.expert_bias``.
Kolibri-1.1 (``kolibri1_1``, its sparse-attention indexer) is not this family."""

from __future__ import annotations

from ..config import MoEConfig, TransformerConfig
from ..transformer import segments
from .base import (
    Tensor,
    common_from_hf,
    common_to_hf,
    expert_tensors,
    gqa_tensors,
    mlp_tensors,
    need,
    outer_tensors,
    refuse,
    unsupported_cfg,
    with_defaults,
)
from .exaone4 import attention_from_hf, attention_to_hf

NAME = "kolibri1"
MODEL_TYPES = ("kolibri1",)
ARCHITECTURE = "Kolibri1ForCausalLM"
WRITES = ("moe.bias_on_logits",)  # (hf_save.SWITCHES)
PREFIX = "model.layers.{i}.mlp"

# the reference config's defaults for what a config.json may leave out (Kolibri1Config)
DEFAULTS = {"num_key_value_heads": 4, "head_dim": 128, "max_position_embeddings": 262_144, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False, "sliding_window": 513, "moe_intermediate_size": 512,
            "shared_expert_intermediate_size": 512, "num_experts_per_tok": 6, "norm_topk_prob": False,
            "num_experts": 384}


def from_hf(hf: dict) -> TransformerConfig:
    no_window = "sliding_window" in hf and hf["sliding_window"] is None  # (every layer full and rotary; absent: 513)
    hf = with_defaults(hf, DEFAULTS)
    if no_window:
        hf["sliding_window"] = None
    refuse(hf, "mlp_bias", lambda v: not v, "MLP biases")
    n = need(hf, "num_hidden_layers")
    if not hf.get("layer_types") and hf.get("sliding_window"):
        hf = {**hf, "layer_types": ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(n)]}
    hf, attention = attention_from_hf(hf)
    experts = hf.get("num_local_experts") or hf["num_experts"]
    moe = MoEConfig(n_experts=experts, top_k=hf["num_experts_per_tok"], ffn_dim=hf["moe_intermediate_size"],
                    n_shared=1, shared_ffn=hf["shared_expert_intermediate_size"], score="sigmoid",
                    norm_topk=bool(hf["norm_topk_prob"]), score_bias=True, bias_on_logits=True)
    hf = {**hf, "intermediate_size": hf["moe_intermediate_size"]}
    return TransformerConfig(**common_from_hf(hf, NAME, sandwich_norm=True, moe=moe, **attention))


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    unsupported_cfg(cfg, NAME, sandwich_norm=not cfg.sandwich_norm, pre_norm=not cfg.pre_norm,
                    moe=m is None or m != MoEConfig(m.n_experts, m.top_k, m.ffn_dim, n_shared=1,
                                                    shared_ffn=m.shared_ffn, score="sigmoid", norm_topk=m.norm_topk,
                                                    score_bias=True, bias_on_logits=True, impl=m.impl,
                                                    capacity_factor=m.capacity_factor,
                                                    aux_loss_coef=m.aux_loss_coef),
                    out_bias=cfg.out_bias)
    out = {**common_to_hf(cfg, "kolibri1", ARCHITECTURE), **attention_to_hf(cfg, NAME)}
    del out["intermediate_size"]
    out.pop("sliding_window_pattern", None)
    out.update(num_experts=m.n_experts, num_experts_per_tok=m.top_k, moe_intermediate_size=m.ffn_dim,
               shared_expert_intermediate_size=m.shared_ffn or m.ffn_dim, norm_topk_prob=m.norm_topk)
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = outer_tensors(cfg)
    pre = "model.layers.{i}"
    for seg, *_ in segments(cfg):
        out += [Tensor((seg, "attn_norm", "scale"), f"{pre}.input_layernorm.weight"),
                Tensor((seg, "post_attn_norm", "scale"), f"{pre}.post_attn_norm.weight"),
                Tensor((seg, "mlp_norm", "scale"), f"{pre}.post_attention_layernorm.weight"),
                Tensor((seg, "post_mlp_norm", "scale"), f"{pre}.post_ffn_norm.weight")]
        out += gqa_tensors(seg, cfg)
        out += expert_tensors(seg, PREFIX)
        out.append(Tensor((seg, "mlp", "score_bias"), f"{pre}.moe.router.expert_bias"))
        out += mlp_tensors((seg, "mlp", "shared"), f"{PREFIX}.shared_experts")
    return out
