"""Gemma 2: Gemma 3's layers without its q/k norms and with both softcaps applied (``attn_logit_softcapping``
on the attention scores, ``final_logit_softcapping`` on the logits), sliding and global layers alternating
(the first slides) under one rope base. Embeddings scaled by sqrt(d_model), GeGLU, sandwich norms, Gemma's
``1 + w`` norm scale and queries scaled by ``query_pre_attn_scalar ** -0.5`` (144 in the 27B model, not its
head size): the weight names are Gemma 3's."""

from __future__ import annotations

from ..config import TransformerConfig
from . import gemma3
from .base import ConfigError, Tensor, common_from_hf, common_to_hf, every_nth_full, unsupported_cfg

NAME = "gemma2"
MODEL_TYPES = ("gemma2",)
ARCHITECTURE = "Gemma2ForCausalLM"
ACTIVATIONS = ("gelu_tanh",)  # the MLP activation its format writes
# what the reference's config class fills in where a config.json leaves a field out (Gemma 2 2B's shape);
# the softcaps among them: a config without them is a model that applies them
DEFAULTS = {"vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
            "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "query_pre_attn_scalar": 256, "sliding_window": 4096,
            "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0}


def from_hf(hf: dict) -> TransformerConfig:
    gemma3.check_gemma(hf)
    hf = {**DEFAULTS, **hf}
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types") or every_nth_full(n, 2)
    for t in types:
        if t not in ("sliding_attention", "full_attention"):
            raise ConfigError(f"config.json: layer_types entry {t!r} is not supported")
    return TransformerConfig(**common_from_hf(
        hf, NAME, norm_offset=1.0, embed_scale=True, activation="gelu_tanh",
        query_scale=float(hf["query_pre_attn_scalar"]) ** -0.5, sandwich_norm=True,
        attn_softcap=hf["attn_logit_softcapping"], final_softcap=hf["final_logit_softcapping"],
        sliding_window=int(hf["sliding_window"] or 0),
        layer_types=tuple("sliding" if t == "sliding_attention" else "full" for t in types)))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, moe=cfg.moe is not None,
                    mla=cfg.mla is not None, norm_offset=cfg.norm_offset != 1.0, embed_scale=not cfg.embed_scale,
                    sandwich_norm=not cfg.sandwich_norm,
                    rope_local_theta=cfg.rope_local_theta not in (None, cfg.rope_theta))
    scalar = (cfg.query_scale or cfg.head_dim**-0.5) ** -2
    if abs(scalar - round(scalar)) > 1e-6:
        raise ConfigError(f"TransformerConfig.query_scale={cfg.query_scale!r} is not 1/sqrt(an integer), which "
                          "gemma2 checkpoints require (query_pre_attn_scalar)")
    out = common_to_hf(cfg, "gemma2", ARCHITECTURE)
    del out["hidden_act"]
    out.update(hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=round(scalar),
               attn_logit_softcapping=cfg.attn_softcap, final_logit_softcapping=cfg.final_softcap,
               sliding_window=cfg.sliding_window or None,
               layer_types=["sliding_attention" if s else "full_attention" for s in cfg.sliding_layers],
               pad_token_id=None, bos_token_id=None, eos_token_id=None)  # not Gemma's vocabulary's ids
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    return gemma3.tensors(cfg)  # the same names (its q/k norms only where cfg.qk_norm)
