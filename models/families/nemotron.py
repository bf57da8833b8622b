"""Nemotron-4 and Minitron (``model_type`` nemotron: Nemotron-Mini-4B-Instruct, Minitron-4B/8B, Llama-3.1-Minitron,
Mistral-NeMo-Minitron-8B): Jais-2's layers (``jais2``: LayerNorms with a bias, an ungated squared-ReLU MLP,
``up_proj`` / ``down_proj``) with the LayerNorms' scale stored as ``w`` and applied as ``1 + w`` (``LayerNorm1P``:
``norm_offset``, as Gemma's), rotary embedding on the leading half of each head by default
(``partial_rotary_factor``), no biases unless ``attention_bias`` / ``mlp_bias``; the epsilon is ``norm_eps``."""

from __future__ import annotations

import dataclasses

from ..config import TransformerConfig
from . import jais2
from .base import Tensor, refuse, rotary_dims, unsupported_cfg, with_defaults

NAME = "nemotron"
MODEL_TYPES = (NAME,)
ARCHITECTURE = "NemotronForCausalLM"
ACTIVATIONS = jais2.ACTIVATIONS
WRITES = ("norm_center", "norm_bias", "mlp_bias")  # (hf_save.SWITCHES)

# the reference config class's defaults (NemotronConfig) for what a config.json may leave out
DEFAULTS = {"hidden_act": "relu2", "norm_eps": 1e-5, "attention_bias": False, "mlp_bias": False,
            "max_position_embeddings": 4096, "tie_word_embeddings": False, "vocab_size": 256_000}


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(hf, DEFAULTS, theta=10_000.0)
    refuse(hf, "hidden_act", lambda v: v == "relu2", "only relu2 (the ungated squared ReLU)")
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    cfg = jais2.from_hf({**hf, "layer_norm_eps": hf["norm_eps"], "head_dim": head_dim})
    return dataclasses.replace(cfg, family=NAME, norm_offset=1.0, rope_dim=rotary_dims(hf, head_dim, 0.5))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, norm_offset=cfg.norm_offset != 1.0)
    out = jais2.to_hf(dataclasses.replace(cfg, family=jais2.NAME, norm_offset=0.0, rope_dim=0))
    eps = out.pop("layer_norm_eps")
    rot = (cfg.rope_dim or cfg.head_dim) / cfg.head_dim
    out.update(model_type=NAME, architectures=[ARCHITECTURE], norm_eps=eps, head_dim=cfg.head_dim,
               partial_rotary_factor=rot)
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    return jais2.tensors(cfg)
