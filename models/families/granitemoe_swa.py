"""Granite SWA-MoE (``model_type`` granitemoe_swa, the "swash" MoE models): Granite SWA's attention (``granite_swa``:
sliding-window and full layers by ``layer_types``, by default every fourth layer from the first full, a learned
per-head attention sink in every layer, a rope base per layer from ``layer_rope_theta``, 0 for none; Granite's muP
scalars) with Granite-MoE's feed-forward in every layer: a router whose top-k logits go through a softmax (the
softmax over all experts renormalised over the chosen ones), every expert's gate and up rows in one
``experts.gate_up_proj`` [E, 2I, d] and the down projections in ``experts.down_proj``, and, where
``shared_intermediate_size`` is not 0 (0 by default), a shared MLP always added (``shared_mlp.input_linear``:
gate then up rows; ``output_linear``)."""

from __future__ import annotations

import dataclasses

from ..config import MoEConfig, TransformerConfig
from ..transformer import segments
from . import granite_swa
from .base import ConfigError, Piece, Tensor, need, refuse, unsupported_cfg, with_defaults

NAME = "granitemoe_swa"
MODEL_TYPES = ("granitemoe_swa",)
ARCHITECTURE = "GraniteMoeSWAForCausalLM"

# the reference config's defaults for what a config.json may leave out (GraniteMoeSWAConfig)
DEFAULTS = {"rms_norm_eps": 1e-6, "tie_word_embeddings": False, "sliding_window": 128, "max_position_embeddings": 2048,
            "intermediate_size": 11008, "num_local_experts": 8, "num_experts_per_tok": 2,
            "router_aux_loss_coef": 0.001, "shared_intermediate_size": 0}


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(hf, DEFAULTS)
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    experts, top_k = need(hf, "num_local_experts"), need(hf, "num_experts_per_tok")
    if not 0 < top_k <= experts:
        raise ConfigError(f"config.json: num_experts_per_tok={top_k} must be in 1..num_local_experts={experts}")
    shared = int(hf["shared_intermediate_size"])
    moe = MoEConfig(n_experts=experts, top_k=top_k, ffn_dim=hf["intermediate_size"], score="softmax", norm_topk=True,
                    n_shared=1 if shared else 0, shared_ffn=shared,
                    aux_loss_coef=float(hf["router_aux_loss_coef"]))
    # granite_swa's translation of everything but the feed-forward (its defaults are GraniteSWAConfig's: ours
    # are filled in first)
    cfg = granite_swa.from_hf({k: v for k, v in hf.items() if k != "mlp_bias"})
    return dataclasses.replace(cfg, family=NAME, moe=moe)


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    unsupported_cfg(cfg, NAME, moe=m is None or m != MoEConfig(
        m.n_experts, m.top_k, m.ffn_dim, n_shared=1 if m.n_shared else 0, shared_ffn=m.shared_ffn if m.n_shared else 0,
        aux_loss_coef=m.aux_loss_coef, impl=m.impl, capacity_factor=m.capacity_factor)
        or bool(m.n_shared and not m.shared_ffn), ffn_dim=m is not None and cfg.ffn_dim != m.ffn_dim)
    try:
        out = granite_swa.to_hf(dataclasses.replace(cfg, family="granite_swa", moe=None))
    except ConfigError as e:
        raise ConfigError(str(e).replace("granite_swa checkpoint", f"{NAME} checkpoint")) from None
    del out["mlp_bias"]
    out.update(model_type=NAME, architectures=[ARCHITECTURE], intermediate_size=m.ffn_dim,
               num_local_experts=m.n_experts, num_experts_per_tok=m.top_k, router_aux_loss_coef=m.aux_loss_coef,
               shared_intermediate_size=m.shared_ffn if m.n_shared else 0)
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    out = granite_swa.tensors(cfg)  # (its attention and norms; every layer's MLP is the experts')
    i, ex = cfg.moe.ffn_dim, "model.layers.{i}.block_sparse_moe"
    for seg, _, _, moe in segs:
        out += [Tensor((seg, "mlp", "router"), f"{ex}.router.weight", "t1"),
                Tensor((seg, "mlp", "down"), f"{ex}.experts.down_proj", "x1")]
        out += [Tensor((seg, "mlp", n), f"{ex}.experts.gate_up_proj", "x1", piece=Piece(1, k, (i, i)))
                for k, n in enumerate(("gate", "up"))]
        if cfg.moe.n_shared:
            w, pre = cfg.moe.shared_ffn, "model.layers.{i}.shared_mlp"
            out += [Tensor((seg, "mlp", "shared", n), f"{pre}.input_linear.weight", "t1", piece=Piece(0, k, (w, w)))
                    for k, n in enumerate(("gate", "up"))]
            out.append(Tensor((seg, "mlp", "shared", "down"), f"{pre}.output_linear.weight", "t1"))
    return out
