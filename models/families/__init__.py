"""Model families: each is a config translation (config.json <-> TransformerConfig) plus a weight-name map
over the shared layers. A family module defines NAME, MODEL_TYPES, ARCHITECTURE, ``from_hf(hf) ->
TransformerConfig``, ``to_hf(cfg) -> dict``, ``tensors(cfg) -> list[Tensor]`` and optionally
``ignored(name, cfg) -> bool`` for checkpoint tensors that are deliberately not loaded."""

from __future__ import annotations

from types import ModuleType

from . import (
    afmoe,
    apertus,
    arcee,
    axk1,
    bamba,
    beam,
    cohere,
    cohere2,
    cohere2_moe,
    cohere_compass,
    cwm,
    deepseek_v2,
    deepseek_v3,
    deepseek_v32,
    dots1,
    ernie4_5,
    exaone,
    exaone4,
    exaone_moe,
    falcon_h1,
    flex_olmo,
    flint,
    gemma,
    gemma2,
    gemma3,
    gemma4,
    gemma4_unified,
    glm4,
    glm4_moe,
    glm4_moe_lite,
    glm_moe_dsa,
    gpt_oss,
    granite,
    granite_swa,
    granitemoe,
    granitemoe_swa,
    helium,
    hunyuan,
    hy_v3,
    hyperclovax,
    jais2,
    kimi_linear,
    kolibri1,
    laguna,
    lara_mini,
    lfm2,
    lfm3,
    llama,
    mellum,
    mimo_v2_flash,
    minicpm5_moe,
    minimax_m2,
    ministral3,
    mistral4,
    mixtral,
    nanochat,
    nemotron,
    nemotron_h,
    olmo,
    olmo2,
    olmo3,
    olmo_hybrid,
    olmoe,
    phi3,
    qwen2,
    qwen2_moe,
    qwen3,
    qwen3_5,
    qwen3_5_moe,
    qwen3_moe,
    qwen3_next,
    sarvam_mla,
    sarvam_moe,
    seed_oss,
    smollm3,
    solar_open,
    stablelm,
    youtu,
)
from .base import ConfigError, Tensor
from .multimodal import WRAPPERS

FAMILIES: dict[str, ModuleType] = {m.NAME: m for m in (llama, qwen2, qwen3, gemma, gemma2, gemma3, qwen3_moe, mixtral,
                                                      deepseek_v2, deepseek_v3, qwen2_moe, olmo2, olmo3, olmoe, phi3,
                                                      gpt_oss, glm4, glm4_moe, glm4_moe_lite, seed_oss, smollm3,
                                                      exaone4, granite, ministral3, minimax_m2, ernie4_5, hunyuan,
                                                      qwen3_5, qwen3_5_moe, qwen3_next, lfm2, bamba,
                                                      nemotron_h, falcon_h1, deepseek_v32,
                                                      glm_moe_dsa, mistral4, olmo_hybrid, hy_v3,
                                                      solar_open, exaone_moe, mimo_v2_flash, gemma4, cohere2,
                                                      afmoe, minicpm5_moe, dots1, youtu, cohere2_moe, apertus,
                                                      sarvam_moe, sarvam_mla, cwm, axk1,
                                                      flex_olmo, hyperclovax, granite_swa, arcee, helium, nanochat,
                                                      mellum, kolibri1, jais2, flint, granitemoe_swa, gemma4_unified,
                                                      cohere_compass, lfm3, laguna, beam, lara_mini,
                                                      kimi_linear, granitemoe, exaone, cohere,
                                                      nemotron, olmo, stablelm)}
FAMILIES["mistral"] = FAMILIES["ministral"] = llama
FAMILIES["param2moe"] = sarvam_moe
BY_MODEL_TYPE: dict[str, ModuleType] = {t: m for m in FAMILIES.values() for t in m.MODEL_TYPES}


# Recurrent and hybrid models whose layers are not of the kinds here (Gated DeltaNet layers, Qwen3.5's, Qwen3-Next's
# and OLMo Hybrid's, Mamba-2 layers, Granite 4.0-H's, Bamba's, Nemotron-H's and Falcon-H1's, and LFM2's gated short
# convolutions are): a config of one of these is refused saying what is missing, rather than only that its
# model_type is unknown.
_STATE = "keep a recurrent state of a kind not implemented here"
RECURRENT = {
    "mamba2": "layers are Mamba-2 mixers without MLPs, not implemented here",
    "jamba": f"Mamba (v1) layers {_STATE}", "mamba": f"Mamba (v1) layers {_STATE}",
    "minimax": f"lightning (linear) attention layers {_STATE}",
}


def for_model_type(model_type: str | None) -> ModuleType:
    if model_type in RECURRENT:
        raise ConfigError(f"config.json: model_type {model_type!r} is not supported: its {RECURRENT[model_type]} "
                          "(recurrent layers here: Gated DeltaNet in Qwen3.5, Qwen3-Next, OLMo Hybrid and Lara Mini, "
                          "Kimi Delta Attention in Kimi Linear, Mamba-2 in Granite 4.0-H, Bamba, Nemotron-H and "
                          "Falcon-H1, short convolutions in LFM2 and LFM3)")
    if model_type not in BY_MODEL_TYPE:
        raise ConfigError(f"config.json: model_type {model_type!r} is not supported "
                          f"(supported: {', '.join(sorted([*BY_MODEL_TYPE, *WRAPPERS]))})")
    return BY_MODEL_TYPE[model_type]


def for_family(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise ConfigError(f"TransformerConfig.family {name!r} is not supported (supported: {', '.join(FAMILIES)})")
    return FAMILIES[name]


__all__ = ["BY_MODEL_TYPE", "FAMILIES", "ConfigError", "Tensor", "for_family", "for_model_type"]
