"""Hunyuan (``model_type`` hunyuan_v1_dense and hunyuan_v1_moe: Tencent's Hunyuan-7B/4B/1.8B/0.5B and
Hunyuan-A13B, fast- and slow-thinking reasoning models): the Llama layout with per-head q/k RMSNorms applied
*after* the rotary (``query_layernorm`` / ``key_layernorm``), rope stretched by a fixed NTK alpha (stored as
``type: dynamic`` with ``alpha``: the base becomes ``theta * alpha ** (d / (d - 2))``, the same for every
length), optional biases on all four attention projections; the MoE model routes every layer by softmax top-k
(renormalised) and adds one shared MLP of the dense width (``shared_mlp``)."""

from __future__ import annotations

from dataclasses import replace

from ..config import MoEConfig, TransformerConfig
from ..transformer import segments
from .base import (
    ConfigError,
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

NAME = "hunyuan"
MODEL_TYPES = ("hunyuan_v1_dense", "hunyuan_v1_moe")
ARCHITECTURE = "HunYuanDenseV1ForCausalLM"
MOE_ARCHITECTURE = "HunYuanMoEV1ForCausalLM"


def _one(hf: dict, key: str, default=None):
    """A field the released configs give per layer (a list) or once: one value for every layer."""
    v = hf.get(key, default)
    if isinstance(v, list):
        if not v or any(x != v[0] for x in v):
            raise ConfigError(f"config.json: {key}={v!r} is not supported (one value for every layer)")
        v = v[0]
    return v


def _moe(hf: dict) -> MoEConfig:
    width = need(hf, "intermediate_size")
    inner = _one(hf, "moe_intermediate_size", width)
    if inner != width:  # the reference builds its experts and shared MLP intermediate_size wide
        raise ConfigError(f"config.json: moe_intermediate_size={hf['moe_intermediate_size']!r} differs from "
                          f"intermediate_size={width} (the reference builds its experts that wide)")
    shared = _one(hf, "num_shared_expert", 1)
    if shared != 1:
        raise ConfigError(f"config.json: num_shared_expert={hf['num_shared_expert']!r} is not supported "
                          "(one shared MLP, as the reference builds)")
    return MoEConfig(n_experts=_one(hf, "num_experts", 1), top_k=_one(hf, "moe_topk", 1), ffn_dim=width,
                     n_shared=1, score="softmax", norm_topk=True,
                     aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)))


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    refuse(hf, "use_cla", lambda v: not v, "cross-layer attention, which the reference does not implement")
    refuse(hf, "use_qk_norm", lambda v: v, "the reference always normalises queries and keys")
    refuse(hf, "mlp_bias", lambda v: not v, "MLP biases")
    bias = bool(hf.get("attention_bias", False))
    moe = _moe(hf) if hf.get("model_type") == "hunyuan_v1_moe" else None
    return TransformerConfig(**common_from_hf(hf, NAME, qk_norm=True, qk_norm_after_rope=True, qkv_bias=bias,
                                              out_bias=bias, moe=moe))


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias != cfg.out_bias, qk_norm=not cfg.qk_norm,
                    qk_norm_after_rope=not cfg.qk_norm_after_rope, qk_norm_whole=cfg.qk_norm_whole,
                    mla=cfg.mla is not None, sliding_window=cfg.sliding_window > 0, rope_dim=cfg.rope_dim > 0,
                    moe=m is not None and (m.score != "softmax" or not m.norm_topk or m.n_shared != 1
                                           or m.ffn_dim != cfg.ffn_dim or m.shared_ffn not in (0, cfg.ffn_dim)
                                           or m.first_dense or m.dense_layers or m.n_group > 1 or m.score_bias
                                           or m.scaling != 1.0 or m.shared_gate or m.router_bias or m.expert_bias))
    if m is None:
        out = common_to_hf(cfg, "hunyuan_v1_dense", ARCHITECTURE)
    else:
        out = {**common_to_hf(cfg, "hunyuan_v1_moe", MOE_ARCHITECTURE), "num_experts": m.n_experts,
               "moe_topk": m.top_k, "router_aux_loss_coef": m.aux_loss_coef}
    return {**out, "attention_bias": cfg.qkv_bias}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    names = {".q_norm.": ".query_layernorm.", ".k_norm.": ".key_layernorm."}
    out = []
    for t in llama_like(cfg, segs):
        for ours, theirs in names.items():
            t = replace(t, hf=t.hf.replace(ours, theirs))
        out.append(t)
    pre = "model.layers.{i}.mlp"
    for seg, _, _, moe in segs:
        if moe:
            out += expert_tensors(seg, pre, router="gate.wg")
            out += mlp_tensors((seg, "mlp", "shared"), f"{pre}.shared_mlp")
    return out
