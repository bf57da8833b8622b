"""Gemma 4 unified (``model_type`` gemma4_unified_text: the language model of the ``gemma4_unified`` vision-language
models, e.g. Gemma-4-12B-it): Gemma 4's dense decoder (``gemma4``: sliding and full layers, the full ones with
heads of their own size and key/value heads, proportional rope there, values normed, queries unscaled, stored
per-layer scalars, sandwich norms, GeGLU, an optional final logit softcap, optional key/value sharing in the last
layers) without per-layer input embeddings or experts, which its config removes: a config.json's
``hidden_size_per_layer_input`` / ``enable_moe_block`` are not read, as the reference builds neither. Its own
defaults: a window of 1024, 262144 positions. Text attends causally (``use_bidirectional_attention: vision`` makes
only image tokens attend both ways; ``all`` is refused by name)."""

from __future__ import annotations

import dataclasses

from ..config import TransformerConfig
from . import gemma4
from .base import ConfigError, unsupported_cfg, with_defaults

NAME = "gemma4_unified"
MODEL_TYPES = ("gemma4_unified_text",)
ARCHITECTURE = "Gemma4UnifiedForCausalLM"
ACTIVATIONS = gemma4.ACTIVATIONS
WRITES = ("full_kv_heads", "full_head_dim", "full_k_eq_v", "v_norm", "layer_scalar", "kv_shared_layers",
          "double_wide_mlp")  # (hf_save.SWITCHES)

# the reference config's defaults where they differ from Gemma4TextConfig's (Gemma4UnifiedTextConfig)
DEFAULTS = {"sliding_window": 1024, "max_position_embeddings": 262_144}
# Gemma 4's fields the unified config removes (the reference never reads them)
REMOVED = ("hidden_size_per_layer_input", "vocab_size_per_layer_input", "enable_moe_block", "num_experts",
           "top_k_experts", "moe_intermediate_size")


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(hf, DEFAULTS)
    hf = {**{k: v for k, v in hf.items() if k not in REMOVED}, "hidden_size_per_layer_input": 0,
          "enable_moe_block": False}
    return dataclasses.replace(gemma4.from_hf(hf), family=NAME)


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, moe=cfg.moe is not None, ple_dim=cfg.ple_dim > 0)
    try:
        out = gemma4.to_hf(dataclasses.replace(cfg, family=gemma4.NAME))
    except ConfigError as e:
        raise ConfigError(str(e).replace("a gemma4 checkpoint", f"a {NAME} checkpoint")) from None
    for k in REMOVED:
        out.pop(k, None)
    out.update(model_type=MODEL_TYPES[0], architectures=[ARCHITECTURE])
    return out


ignored, tensors = gemma4.ignored, gemma4.tensors  # (Gemma 4's names)
