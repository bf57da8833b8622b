"""Gemma (``model_type`` gemma: Gemma 2B/7B, CodeGemma): Llama's layer layout with Gemma's conventions:
embeddings scaled by sqrt(d_model), GeGLU (tanh approximation; the releases' legacy ``hidden_act: gelu``
means it too, as the reference reads it), the ``1 + w`` norm scale, head size 256 by default."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from . import gemma3
from .base import Tensor, common_from_hf, common_to_hf, llama_like, unsupported_cfg

NAME = "gemma"
MODEL_TYPES = ("gemma",)
ARCHITECTURE = "GemmaForCausalLM"
ACTIVATIONS = ("gelu_tanh",)  # the MLP activation its format writes
# what the reference's config class fills in where a config.json leaves a field out (Gemma 7B's shape)
DEFAULTS = {"vocab_size": 256000, "hidden_size": 3072, "intermediate_size": 24576, "num_hidden_layers": 28,
            "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 256, "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": True}


def from_hf(hf: dict) -> TransformerConfig:
    gemma3.check_gemma(hf, legacy_gelu=True)
    hf = {**DEFAULTS, **hf}
    return TransformerConfig(**common_from_hf(hf, NAME, norm_offset=1.0, embed_scale=True, activation="gelu_tanh"))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, moe=cfg.moe is not None,
                    mla=cfg.mla is not None, norm_offset=cfg.norm_offset != 1.0, embed_scale=not cfg.embed_scale,
                    sandwich_norm=cfg.sandwich_norm,
                    sliding_window=any(cfg.sliding_layers), attn_softcap=cfg.attn_softcap is not None,
                    final_softcap=cfg.final_softcap is not None, query_scale=cfg.query_scale is not None)
    return {**common_to_hf(cfg, "gemma", ARCHITECTURE), "hidden_act": "gelu_pytorch_tanh", "attention_bias": False,
            "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}  # not Gemma's vocabulary's ids


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    return llama_like(cfg, segments(cfg))
