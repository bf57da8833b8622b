"""OLMo (``model_type`` olmo: OLMo-1B-hf, OLMo-7B-hf, OLMo-7B-0424-hf, OLMo-7B-0724-hf and their SFT / Instruct
models): Llama's layers with LayerNorms that have neither a scale nor a bias (the mean subtracted, epsilon 1e-5:
``norm_center`` without ``norm_weight``), q, k and v clamped to ``[-clip_qkv, clip_qkv]`` after their projections
when ``clip_qkv`` is set (new switch ``clip_qkv``: the 0424 and 0724 models), biases on all four attention
projections only with ``attention_bias``."""

from __future__ import annotations

import dataclasses

from ..config import TransformerConfig
from ..transformer import segments
from . import llama
from .base import Tensor, llama_like, unsupported_cfg, with_defaults

NAME = "olmo"
MODEL_TYPES = (NAME,)
ARCHITECTURE = "OlmoForCausalLM"
WRITES = ("norm_center", "norm_weight", "clip_qkv")  # (hf_save.SWITCHES)

# the reference config class's defaults (OlmoConfig) for what a config.json may leave out
DEFAULTS = {"vocab_size": 50_304, "tie_word_embeddings": False, "max_position_embeddings": 2048,
            "attention_bias": False}


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(hf, DEFAULTS, theta=10_000.0)
    clip = hf.get("clip_qkv")
    cfg = llama.from_hf({**hf, "model_type": llama.NAME, "rms_norm_eps": 1e-5})  # (the norms' fixed epsilon)
    return dataclasses.replace(cfg, family=NAME, norm_center=True, norm_weight=False,
                               clip_qkv=float(clip) if clip else 0.0)


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, norm_center=not cfg.norm_center, norm_weight=cfg.norm_weight,
                    norm_eps=cfg.norm_eps != 1e-5, sliding_window=cfg.sliding_window > 0)
    out = llama.to_hf(dataclasses.replace(cfg, family=llama.NAME, norm_center=False, norm_weight=True, clip_qkv=0.0))
    out.pop("rms_norm_eps", None)
    out.update(model_type=NAME, architectures=[ARCHITECTURE], clip_qkv=cfg.clip_qkv or None)
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    """Llama's, without the norms' weights (there are none)."""
    return [t for t in llama_like(cfg, segments(cfg)) if t.path[-1] != "scale"]
