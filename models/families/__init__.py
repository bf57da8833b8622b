"""Model families: each is a config translation (config.json <-> TransformerConfig) plus a weight-name map
over the shared layers. A family module defines NAME, MODEL_TYPES, ARCHITECTURE, ``from_hf(hf) ->
TransformerConfig``, ``to_hf(cfg) -> dict``, ``tensors(cfg) -> list[Tensor]`` and optionally
``ignored(name, cfg) -> bool`` for checkpoint tensors that are deliberately not loaded."""

from __future__ import annotations

from types import ModuleType

from . import (
    deepseek_v2,
    deepseek_v3,
    ernie4_5,
    exaone4,
    gemma,
    gemma2,
    gemma3,
    glm4,
    glm4_moe,
    glm4_moe_lite,
    gpt_oss,
    granite,
    hunyuan,
    llama,
    minimax_m2,
    ministral3,
    mixtral,
    olmo2,
    olmo3,
    olmoe,
    phi3,
    qwen2,
    qwen2_moe,
    qwen3,
    qwen3_5,
    qwen3_5_moe,
    qwen3_moe,
    qwen3_next,
    seed_oss,
    smollm3,
)
from .base import ConfigError, Tensor
from .multimodal import WRAPPERS

FAMILIES: dict[str, ModuleType] = {m.NAME: m for m in (llama, qwen2, qwen3, gemma, gemma2, gemma3, qwen3_moe, mixtral,
                                                      deepseek_v2, deepseek_v3, qwen2_moe, olmo2, olmo3, olmoe, phi3,
                                                      gpt_oss, glm4, glm4_moe, glm4_moe_lite, seed_oss, smollm3,
                                                      exaone4, granite, ministral3, minimax_m2, ernie4_5, hunyuan,
                                                      qwen3_5, qwen3_5_moe, qwen3_next)}
FAMILIES["mistral"] = llama
BY_MODEL_TYPE: dict[str, ModuleType] = {t: m for m in FAMILIES.values() for t in m.MODEL_TYPES}


# Hybrid models whose other layers (state-space layers, short convolutions, lightning attention) carry a recurrent
# state of a kind the layers here do not compute (Gated DeltaNet's, Qwen3.5's and Qwen3-Next's, they do): a config
# of one of these is refused saying so, rather than only that its model_type is unknown.
RECURRENT = {
    "falcon_h1": "Mamba-2 layers",
    "nemotron_h": "Mamba-2 layers", "jamba": "Mamba layers",
    "mamba": "Mamba layers", "mamba2": "Mamba-2 layers", "lfm2": "short-convolution layers",
    "lfm2_moe": "short-convolution layers", "minimax": "lightning (linear) attention layers",
}


def for_model_type(model_type: str | None) -> ModuleType:
    if model_type in RECURRENT:
        raise ConfigError(f"config.json: model_type {model_type!r} is not supported: its {RECURRENT[model_type]} "
                          "keep a recurrent state of a kind not implemented here (Gated DeltaNet's is: Qwen3.5, "
                          "Qwen3-Next)")
    if model_type not in BY_MODEL_TYPE:
        raise ConfigError(f"config.json: model_type {model_type!r} is not supported "
                          f"(supported: {', '.join(sorted([*BY_MODEL_TYPE, *WRAPPERS]))})")
    return BY_MODEL_TYPE[model_type]


def for_family(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise ConfigError(f"TransformerConfig.family {name!r} is not supported (supported: {', '.join(FAMILIES)})")
    return FAMILIES[name]


__all__ = ["BY_MODEL_TYPE", "FAMILIES", "ConfigError", "Tensor", "for_family", "for_model_type"]
