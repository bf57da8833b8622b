"""FlexOlmo (``model_type`` flex_olmo: AllenAI's FlexOlmo-7x7B, experts trained apart on their owners' data and
merged): OLMoE's layers (q/k RMSNorm over the whole projection, every MLP a softmax top-k mixture of experts,
renormalised only with ``norm_topk_prob``, the Switch-style balancing loss) in OLMo-2's arrangement: no norm
before attention or the experts, an RMSNorm on each one's output (``post_attention_layernorm``,
``post_feedforward_layernorm``)."""

from __future__ import annotations

import dataclasses

from ..config import TransformerConfig
from ..transformer import segments
from . import olmo2, olmoe
from .base import Tensor, expert_tensors, gqa_tensors, outer_tensors, unsupported_cfg

NAME = "flex_olmo"
MODEL_TYPES = ("flex_olmo",)
ARCHITECTURE = "FlexOlmoForCausalLM"
# (FlexOlmoConfig's defaults where they differ from OLMoE's)
DEFAULTS = {"num_experts": 7, "num_experts_per_tok": 5, "rms_norm_eps": 1e-6}


def from_hf(hf: dict) -> TransformerConfig:
    cfg = olmoe.from_hf({**DEFAULTS, **{k: v for k, v in hf.items() if v is not None}})
    return dataclasses.replace(cfg, family=NAME, pre_norm=False, sandwich_norm=True)


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, pre_norm=cfg.pre_norm, sandwich_norm=not cfg.sandwich_norm)
    out = olmoe.to_hf(dataclasses.replace(cfg, family=olmoe.NAME, pre_norm=True, sandwich_norm=False))
    return {**out, "model_type": NAME, "architectures": [ARCHITECTURE]}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = outer_tensors(cfg)
    for seg, *_ in segments(cfg):
        out += olmo2.post_norm_tensors(seg) + gqa_tensors(seg, cfg) + expert_tensors(seg, "model.layers.{i}.mlp")
    return out
