"""A.X K1 (``model_type`` axk1: SK Telecom's 519B reasoning MoE): DeepSeek-V3's layers (latent attention with
low-rank queries, grouped sigmoid routing with the selection bias and shared experts) whose MoE output, routed
and shared experts together, is RMS-normalised once more (``post_mlp_layernorm``, stored beside the layer's other
norms: new MoE switch ``post_norm``); which layers are dense is ``mlp_layer_types`` or, in older configs, the first
``first_k_dense_replace`` (one by default) and those off every ``moe_layer_freq``-th."""

from __future__ import annotations

import dataclasses

from ..config import TransformerConfig
from ..transformer import segments
from . import deepseek_v3
from .base import (
    ConfigError,
    Tensor,
    mlp_layer_types_from_hf,
    mlp_layer_types_to_hf,
    need,
    unsupported_cfg,
    with_defaults,
)

NAME = "axk1"
MODEL_TYPES = ("axk1",)
ARCHITECTURE = "AXK1ForCausalLM"
WRITES = ("moe.post_norm",)  # (hf_save.SWITCHES)
ignored = deepseek_v3.ignored

# The reference config's defaults for the routing fields a released config.json may leave out (AXK1Config).
DEFAULTS = {"n_routed_experts": 192, "n_shared_experts": 1, "num_experts_per_tok": 8, "moe_intermediate_size": 2048,
            "routed_scaling_factor": 2.5, "n_group": 8, "topk_group": 4, "norm_topk_prob": True,
            "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
            "v_head_dim": 128, "rope_interleave": True}


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(hf, DEFAULTS)
    if "mlp_layer_types" not in hf:  # older configs, as the reference reads them
        n, k, freq = need(hf, "num_hidden_layers"), hf.get("first_k_dense_replace", 1), hf.get("moe_layer_freq", 1)
        if not isinstance(freq, int) or freq < 1:
            raise ConfigError(f"config.json: moe_layer_freq={freq!r} is not a positive integer")
        hf = {**hf, "mlp_layer_types": ["sparse" if i >= k and i % freq == 0 else "dense" for i in range(n)]}
    first, later = mlp_layer_types_from_hf(hf)
    base = {k: v for k, v in hf.items() if k not in ("moe_layer_freq", "mlp_layer_types")}
    cfg = deepseek_v3.from_hf({**base, "first_k_dense_replace": first})
    return dataclasses.replace(cfg, family=NAME,
                               moe=dataclasses.replace(cfg.moe, dense_layers=later, post_norm=True))


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    unsupported_cfg(cfg, NAME, mla=cfg.mla is None or not cfg.mla.q_lora_rank or bool(cfg.mla.index_topk),
                    moe=m is None or not m.post_norm)
    base = dataclasses.replace(cfg, family=deepseek_v3.NAME, moe=dataclasses.replace(m, dense_layers=(),
                                                                                     post_norm=False))
    out = deepseek_v3.to_hf(base)
    del out["first_k_dense_replace"]
    out.update(model_type=NAME, architectures=[ARCHITECTURE], mlp_layer_types=mlp_layer_types_to_hf(cfg))
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    norm = "model.layers.{i}.post_mlp_layernorm.weight"  # (at the layer's level, beside its other norms)
    return deepseek_v3.tensors(cfg) + [Tensor((seg, "mlp", "post_norm", "scale"), norm)
                                       for seg, _, _, moe in segments(cfg) if moe]
