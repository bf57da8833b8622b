"""IBM Granite 3.0 / 3.1 MoE (``model_type`` granitemoe: granite-3.1-1b-a400m and 3b-a800m, base and instruct)
and Granite-MoE with a shared MLP (``granitemoeshared``): Granite's Llama layout and muP scalars (``granite``:
embeddings times ``embedding_multiplier``, sub-layer outputs times ``residual_multiplier``, ``attention_multiplier``
as the softmax scale, logits divided by ``logits_scaling``) with experts in every layer: a router whose top-k
logits go through a softmax (the softmax over all experts renormalised over the chosen ones), every expert's gate
and up rows in one ``block_sparse_moe.input_linear`` [E, 2I, d] and the down projections in ``output_linear``, as
Granite 4.0's experts are stored; ``granitemoeshared`` adds, where ``shared_intermediate_size`` is not 0, a shared
MLP always added (``shared_mlp.input_linear``: gate then up rows; ``output_linear``)."""

from __future__ import annotations

import dataclasses

from ..config import MoEConfig, TransformerConfig
from ..transformer import segments
from . import granite
from .base import llama_like, need, unsupported_cfg, with_defaults

NAME = "granitemoe"
SHARED = "granitemoeshared"
MODEL_TYPES = (NAME, SHARED)
ARCHITECTURE = "GraniteMoeForCausalLM"
SHARED_ARCHITECTURE = "GraniteMoeSharedForCausalLM"

# the reference config classes' defaults for what a config.json may leave out (GraniteMoeConfig, ...SharedConfig)
DEFAULTS = {"rms_norm_eps": 1e-6, "tie_word_embeddings": False, "max_position_embeddings": 2048,
            "intermediate_size": 11008, "num_local_experts": 8, "num_experts_per_tok": 2,
            "router_aux_loss_coef": 0.001, "rope_theta": 10_000.0}


def from_hf(hf: dict) -> TransformerConfig:
    shared_type = hf.get("model_type") == SHARED
    hf = with_defaults(hf, DEFAULTS)
    shared = int(hf.get("shared_intermediate_size") or 0) if shared_type else 0
    moe = MoEConfig(n_experts=need(hf, "num_local_experts"), top_k=need(hf, "num_experts_per_tok"),
                    ffn_dim=need(hf, "intermediate_size"), score="softmax", norm_topk=True,
                    n_shared=1 if shared else 0, shared_ffn=shared, aux_loss_coef=float(hf["router_aux_loss_coef"]))
    cfg = granite.from_hf({**hf, "model_type": granite.NAME})  # (the muP scalars, biases and rope as Granite's)
    return dataclasses.replace(cfg, family=NAME, moe=moe)


def _moe_ok(m: MoEConfig | None) -> bool:
    return m is not None and m == MoEConfig(
        m.n_experts, m.top_k, m.ffn_dim, score="softmax", norm_topk=True, n_shared=m.n_shared, shared_ffn=m.shared_ffn,
        aux_loss_coef=m.aux_loss_coef, impl=m.impl, capacity_factor=m.capacity_factor) and (
        m.n_shared == 0 or (m.n_shared == 1 and m.shared_ffn > 0))


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    unsupported_cfg(cfg, NAME, moe=not _moe_ok(m), qkv_bias=cfg.qkv_bias != cfg.out_bias, qk_norm=cfg.qk_norm,
                    mla=cfg.mla is not None, sliding_window=cfg.sliding_window > 0, linear=cfg.linear is not None,
                    nope_layers=bool(cfg.nope_layers))
    out = granite.to_hf(dataclasses.replace(cfg, moe=None, family=granite.NAME, extra={}))  # (its muP fields)
    shared = m.n_shared == 1
    out.update(model_type=SHARED if shared else NAME, architectures=[SHARED_ARCHITECTURE if shared else ARCHITECTURE],
               intermediate_size=m.ffn_dim, num_local_experts=m.n_experts, num_experts_per_tok=m.top_k,
               router_aux_loss_coef=m.aux_loss_coef)
    if shared:
        out["shared_intermediate_size"] = m.shared_ffn
    return out


def tensors(cfg: TransformerConfig) -> list:
    segs = segments(cfg)
    out = llama_like(cfg, segs, dense_mlp=False)
    for seg, *_ in segs:
        out += granite.expert_tensors(seg, cfg)
        if cfg.moe.n_shared:
            out += granite.shared_mlp_tensors((seg, "mlp", "shared"), cfg.moe.shared_ffn)
    return out
