"""MiniCPM5-MoE (``model_type`` minicpm5_moe: openbmb's MiniCPM5-15B-A2.5B): grouped-query attention with a
sigmoid output gate on each head (the released ``q_proj`` holds each head's queries, then its gate rows;
transformers renames it ``q_gate_proj`` as it loads), no q/k norms, rotary on whole heads; DeepSeek-V3's
routing (sigmoid scores chosen with the per-expert selection bias, grouped top-k, renormalised,
``routed_scaling_factor``) beside ``n_shared_experts`` shared experts. Which layers are dense is
``mlp_layer_types`` or, in older configs, the first ``first_k_dense_replace`` (one by default)."""

from __future__ import annotations

import dataclasses

from ..config import TransformerConfig
from ..transformer import segments
from . import deepseek_v3, qwen3_5
from .base import (
    ConfigError,
    Tensor,
    common_from_hf,
    common_to_hf,
    llama_like,
    mlp_layer_types_from_hf,
    mlp_layer_types_to_hf,
    need,
    refuse,
    unsupported_cfg,
    whole_heads,
    with_defaults,
)

NAME = "minicpm5_moe"
MODEL_TYPES = ("minicpm5_moe",)
ARCHITECTURE = "MiniCPM5MoeForCausalLM"
DEFAULT_THETA = 5_000_000.0  # the reference's rope base when config.json names none
ignored = deepseek_v3.ignored

# The reference config's defaults for the fields a released config.json may leave out (MiniCPM5MoeConfig).
DEFAULTS = {"head_dim": 128, "num_key_value_heads": 2, "moe_intermediate_size": 512, "num_experts_per_tok": 16,
            "n_shared_experts": 1, "n_routed_experts": 160, "routed_scaling_factor": 3.66, "n_group": 1,
            "topk_group": 1, "norm_topk_prob": True}


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(hf, DEFAULTS, DEFAULT_THETA)
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    refuse(hf, "attention_bias", lambda v: not v, "attention projections without biases")
    refuse(hf, "use_gated_attention", lambda v: v, "the reference runs gated attention only")
    whole_heads(hf, hf["head_dim"])
    if "mlp_layer_types" not in hf:  # older configs: the first first_k_dense_replace layers dense
        n, k = need(hf, "num_hidden_layers"), hf.get("first_k_dense_replace", 1)
        if not isinstance(k, int) or not 0 <= k < n:
            raise ConfigError(f"config.json: first_k_dense_replace={k!r} is not a number of layers below {n}")
        hf = {**hf, "mlp_layer_types": ["dense"] * k + ["sparse"] * (n - k)}
    first, later = mlp_layer_types_from_hf(hf)
    moe = dataclasses.replace(deepseek_v3.moe_from_hf({**hf, "first_k_dense_replace": first}), dense_layers=later)
    return TransformerConfig(**common_from_hf(hf, NAME, attn_gate=True, moe=moe))


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    unsupported_cfg(cfg, NAME, attn_gate=not cfg.attn_gate, qk_norm=cfg.qk_norm, qkv_bias=cfg.qkv_bias,
                    mla=cfg.mla is not None, sliding_window=cfg.sliding_window > 0,
                    rope_dim=bool(cfg.rope_dim and cfg.rope_dim != cfg.head_dim),
                    moe=deepseek_v3.moe_unsupported(None if m is None else dataclasses.replace(m, dense_layers=())))
    out = {**common_to_hf(cfg, NAME, ARCHITECTURE), **deepseek_v3.moe_to_hf(m), "attention_bias": False,
           "mlp_layer_types": mlp_layer_types_to_hf(cfg)}
    del out["first_k_dense_replace"]
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    out = llama_like(cfg, segs, attention=False)
    for seg, _, _, moe in segs:
        out += qwen3_5.attention_tensors(seg, cfg)
        if moe:
            out += deepseek_v3.moe_tensors(seg, cfg)
    return out
