"""K-EXAONE (``model_type`` exaone_moe: LG's K-EXAONE-236B-A23B reasoning model): EXAONE 4.0's attention
(per-head q/k RMSNorms; sliding-window layers with rotary embedding and full layers without, by
``layer_types`` or ``sliding_window_pattern``) in pre-norm layers (OLMoE's placement, not EXAONE 4.0's
post-norms), over DeepSeek-V3's routing (sigmoid scores, optional grouped top-k, the per-expert selection bias,
``routed_scaling_factor``) beside ``num_shared_experts`` shared experts; dense layers by ``mlp_layer_types``,
else the first ``first_k_dense_replace``. The selection bias is stored as released (``mlp.e_score_correction_bias``)
and the multi-token-prediction module (``mtp.*``) is not loaded."""

from __future__ import annotations

import dataclasses

from ..config import TransformerConfig
from ..transformer import segments
from . import deepseek_v3
from .base import (
    ConfigError,
    Tensor,
    common_from_hf,
    common_to_hf,
    expert_tensors,
    llama_like,
    mlp_layer_types_from_hf,
    mlp_layer_types_to_hf,
    mlp_tensors,
    unsupported_cfg,
    with_defaults,
)
from .exaone4 import attention_from_hf, attention_to_hf

NAME = "exaone_moe"
MODEL_TYPES = ("exaone_moe",)
ARCHITECTURE = "ExaoneMoeForCausalLM"
PREFIX = "model.layers.{i}.mlp"

# the reference config's defaults for the routing fields a config.json may leave out (ExaoneMoeConfig)
DEFAULTS = {"num_experts": 64, "num_experts_per_tok": 8, "moe_intermediate_size": 1024, "num_shared_experts": 1,
            "norm_topk_prob": True, "routed_scaling_factor": 2.5, "n_group": 1, "topk_group": 1,
            "first_k_dense_replace": 1}


def ignored(name: str, cfg: TransformerConfig) -> bool:
    """The multi-token-prediction module, stored beside the layers (``mtp.*``), as the reference skips it."""
    return name.startswith(("mtp.", "model.mtp."))


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(hf, DEFAULTS)
    hf, attention = attention_from_hf(hf)
    n = hf["num_hidden_layers"]
    first = hf["first_k_dense_replace"]
    if not hf.get("mlp_layer_types"):
        if not isinstance(first, int) or not 0 <= first < n:
            raise ConfigError(f"config.json: first_k_dense_replace={first!r} leaves no MoE layer of the {n}")
        hf = {**hf, "mlp_layer_types": ["dense"] * first + ["sparse"] * (n - first)}
    first, later = mlp_layer_types_from_hf(hf)
    moe = deepseek_v3.moe_from_hf({**hf, "n_routed_experts": hf["num_experts"],
                                   "n_shared_experts": hf["num_shared_experts"], "first_k_dense_replace": first})
    moe = dataclasses.replace(moe, dense_layers=later)
    return TransformerConfig(**common_from_hf(hf, NAME, moe=moe, **attention))


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    unsupported_cfg(cfg, NAME, pre_norm=not cfg.pre_norm, sandwich_norm=cfg.sandwich_norm,
                    moe=m is None or deepseek_v3.moe_unsupported(dataclasses.replace(m, dense_layers=())))
    out = {**common_to_hf(cfg, NAME, ARCHITECTURE), **attention_to_hf(cfg, NAME, no_window=False)}
    first = next(i for i in range(cfg.n_layers) if m.is_moe(i))
    out.update(num_experts=m.n_experts, num_experts_per_tok=m.top_k, moe_intermediate_size=m.ffn_dim,
               num_shared_experts=m.n_shared, norm_topk_prob=m.norm_topk, routed_scaling_factor=m.scaling,
               n_group=m.n_group, topk_group=m.topk_group, first_k_dense_replace=first,
               mlp_layer_types=mlp_layer_types_to_hf(cfg))
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    out = llama_like(cfg, segs)
    for seg, _, _, moe in segs:
        if moe:
            out += expert_tensors(seg, PREFIX)
            out.append(Tensor((seg, "mlp", "score_bias"), f"{PREFIX}.e_score_correction_bias"))
            if cfg.moe.n_shared:
                out += mlp_tensors((seg, "mlp", "shared"), f"{PREFIX}.shared_experts")
    return out
