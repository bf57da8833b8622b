"""Sarvam-105B (``model_type`` sarvam_mla: Sarvam AI's reasoning MoE, which transformers runs as DeepSeek-V3):
DeepSeek-V3's latent attention and routing (full-rank queries by default) under Sarvam's config.json names
(``num_experts``, ``num_shared_experts``); its original config's ``head_dim`` (written for serving engines) is
not read, the latent attention's sizes give the heads' as for DeepSeek-V3, and its ``deepseek_yarn`` rope is YaRN,
as the reference reads them."""

from __future__ import annotations

import dataclasses

from ..config import TransformerConfig
from . import deepseek_v3
from .base import aliased, with_defaults

NAME = "sarvam_mla"
MODEL_TYPES = ("sarvam_mla",)
ARCHITECTURE = "DeepseekV3ForCausalLM"  # (the class transformers runs it with)
ignored = deepseek_v3.ignored
tensors = deepseek_v3.tensors
ALIASES = {"num_experts": "n_routed_experts", "num_shared_experts": "n_shared_experts"}
# The reference config's defaults for the routing fields a released config.json may leave out (SarvamMLAConfig)
DEFAULTS = {"n_routed_experts": 128, "n_shared_experts": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 1,
            "routed_scaling_factor": 2.5, "norm_topk_prob": True, "n_group": 1, "topk_group": 1}


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(aliased(hf, ALIASES), DEFAULTS)
    for key in ("rope_scaling", "rope_parameters"):
        rope = hf.get(key)
        if isinstance(rope, dict) and "deepseek_yarn" in (rope.get("type"), rope.get("rope_type")):
            hf[key] = {**{k: v for k, v in rope.items() if k != "type"}, "rope_type": "yarn"}
    return dataclasses.replace(deepseek_v3.from_hf(hf), family=NAME)


def to_hf(cfg: TransformerConfig) -> dict:
    out = deepseek_v3.to_hf(dataclasses.replace(cfg, family=deepseek_v3.NAME))
    return {**out, "model_type": NAME, "architectures": [ARCHITECTURE]}
