"""Ministral 3 (``model_type`` ministral3: the language model of the Ministral 3 3B/8B/14B base, instruct and
reasoning releases, read out of their ``mistral3`` wrapper): Mistral's layers with YaRN and one addition, the
rotated queries scaled by ``1 + beta * log(1 + floor(position / L))`` (``rope_parameters.llama_4_scaling_beta``
and ``original_max_position_embeddings``: 1 below L, ``1 + beta * log(1 + n)`` from the n-th multiple of L on),
which keeps attention sharp past the length the model was pretrained at (``TransformerConfig.query_length_scale``)."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from .base import (
    ConfigError,
    Tensor,
    common_from_hf,
    common_to_hf,
    llama_like,
    refuse,
    unsupported_cfg,
    window_from_hf,
)

NAME = "ministral3"
MODEL_TYPES = ("ministral3",)
ARCHITECTURE = "Ministral3ForCausalLM"

# what the reference's config class fills in where a released config.json leaves a field out
DEFAULTS = {"vocab_size": 131072, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 34,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 262144,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
DEFAULT_ROPE = {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 16.0,
                "original_max_position_embeddings": 16384, "beta_fast": 32.0, "beta_slow": 1.0,
                "mscale_all_dim": 1.0, "mscale": 1.0, "llama_4_scaling_beta": 0.1}


def scaled_rope_from_hf(hf: dict, default_rope: dict) -> tuple[dict, tuple[float, int] | None]:
    """config.json with ``llama_4_scaling_beta`` taken out of its rope parameters, and the query scaling it asks
    for ((beta, original_max_position_embeddings), or None) (Ministral 3's, Mistral 4's)."""
    rope = dict(hf.get("rope_parameters") or default_rope)
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope.pop("type")
    beta = rope.pop("llama_4_scaling_beta", None)
    rope.pop("max_position_embeddings", None)  # (the reference's copy of the top-level field)
    span = rope.get("original_max_position_embeddings")
    scale = None
    if beta:
        if not isinstance(span, int) or isinstance(span, bool) or span < 1:
            raise ConfigError(f"config.json: rope_parameters.original_max_position_embeddings={span!r} is not a "
                              "positive integer (the span of llama_4_scaling_beta)")
        scale = (float(beta), span)
    hf = {**hf, "rope_parameters": rope}
    hf.pop("rope_scaling", None)
    return hf, scale


def scaled_rope_to_hf(cfg: TransformerConfig, out: dict) -> dict:
    """``rope_parameters`` with the query scaling (``scaled_rope_from_hf`` backwards), from ``common_to_hf``'s
    rope fields (taken out of ``out``)."""
    rope = {"rope_type": "default", **(out.pop("rope_scaling") or {}), "rope_theta": out.pop("rope_theta")}
    beta, span = cfg.query_length_scale or (0.0, rope.get("original_max_position_embeddings") or cfg.max_seq_len)
    rope.update(llama_4_scaling_beta=beta, original_max_position_embeddings=span)
    return rope


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    refuse(hf, "attention_bias", lambda v: not v, "attention biases")
    hf, scale = scaled_rope_from_hf({**DEFAULTS, **hf}, DEFAULT_ROPE)
    return TransformerConfig(**common_from_hf(hf, NAME, **window_from_hf(hf)), query_length_scale=scale)


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias, qk_norm=cfg.qk_norm,
                    moe=cfg.moe is not None, mla=cfg.mla is not None, layer_types=len(set(cfg.sliding_layers)) > 1)
    out = common_to_hf(cfg, NAME, ARCHITECTURE)
    out.update(rope_parameters=scaled_rope_to_hf(cfg, out), sliding_window=cfg.sliding_window or None,
               pad_token_id=None, bos_token_id=None, eos_token_id=None)  # not Ministral's vocabulary's ids
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    return llama_like(cfg, segments(cfg))
