"""Gemma 3 (text): sliding-window and global layers with their own rope bases, q/k RMSNorm, embeddings
scaled by sqrt(d_model), GeGLU, "sandwich" norms around attention and MLP, and Gemma's norm convention (the
checkpoint stores w and the scale is 1 + w, hence ``norm_offset=1``)."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from .base import (
    ConfigError,
    Tensor,
    common_from_hf,
    common_to_hf,
    every_nth_full,
    gqa_tensors,
    layered_rope_from_hf,
    layered_rope_to_hf,
    mlp_tensors,
    outer_tensors,
    refuse,
    sandwich_tensors,
    unsupported_cfg,
)

NAME = "gemma3"
MODEL_TYPES = ("gemma3_text",)
ARCHITECTURE = "Gemma3ForCausalLM"
ACTIVATIONS = ("gelu_tanh",)  # the MLP activation its format writes


def _layer_types(hf: dict) -> tuple[str, ...]:
    n = hf["num_hidden_layers"]
    if hf.get("layer_types"):
        return tuple("sliding" if t == "sliding_attention" else "full" for t in hf["layer_types"])
    pattern = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6
    return tuple("full" if t == "full_attention" else "sliding" for t in every_nth_full(n, pattern))


def check_gemma(hf: dict, legacy_gelu: bool = False) -> None:
    """What every Gemma generation refuses: bidirectional attention (the embedding models), attention biases
    and an MLP activation other than GeGLU's tanh approximation (``legacy_gelu``: Gemma 1's releases say
    ``gelu`` and mean it, as the reference reads them)."""
    refuse(hf, "use_bidirectional_attention", lambda v: not v, "bidirectional attention")
    refuse(hf, "attention_bias", lambda v: not v, "attention biases")
    field = "hidden_activation" if hf.get("hidden_activation") else "hidden_act"
    act = hf.get(field) or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_tanh") + (("gelu",) if legacy_gelu else ()):
        raise ConfigError(f"config.json: {field}={act!r} is not supported (only gelu_pytorch_tanh)")


def from_hf(hf: dict) -> TransformerConfig:
    check_gemma(hf)
    theta, scaling, local_theta = layered_rope_from_hf(hf, float(hf.get("rope_local_base_freq", 10000.0)))
    head_dim = hf.get("head_dim") or 256
    hf = {"tie_word_embeddings": True, "head_dim": head_dim, **hf}
    types = _layer_types(hf)
    return TransformerConfig(**common_from_hf(
        hf, NAME, rope_theta=theta, rope_scaling=scaling, norm_offset=1.0, embed_scale=True,
        activation="gelu_tanh", query_scale=float(hf.get("query_pre_attn_scalar", head_dim)) ** -0.5,
        # attn_logit_softcapping is stored in Gemma 3 configs but not applied by the reference (nor vLLM).
        sandwich_norm=True, qk_norm=True, final_softcap=hf.get("final_logit_softcapping"), sliding_window=int(hf.get("sliding_window") or 0),
        layer_types=types, rope_local_theta=local_theta))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, qk_norm=not cfg.qk_norm, moe=cfg.moe is not None,
                    attn_softcap=cfg.attn_softcap is not None,
                    mla=cfg.mla is not None, norm_offset=cfg.norm_offset != 1.0, embed_scale=not cfg.embed_scale,
                    sandwich_norm=not cfg.sandwich_norm)
    scalar = (cfg.query_scale or cfg.head_dim**-0.5) ** -2
    if abs(scalar - round(scalar)) > 1e-6:
        raise ConfigError(f"TransformerConfig.query_scale={cfg.query_scale!r} is not 1/sqrt(an integer), which "
                          "gemma3 checkpoints require (query_pre_attn_scalar)")
    out = common_to_hf(cfg, "gemma3_text", ARCHITECTURE)
    del out["hidden_act"], out["rope_theta"], out["rope_scaling"]
    out.update(
        hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=round(scalar),
        final_logit_softcapping=cfg.final_softcap,
        sliding_window=cfg.sliding_window or None,
        layer_types=["sliding_attention" if s else "full_attention" for s in cfg.sliding_layers],
        **layered_rope_to_hf(cfg))
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = outer_tensors(cfg)
    pre = "model.layers.{i}"
    for seg, *_ in segments(cfg):
        out += sandwich_tensors(seg) + gqa_tensors(seg, cfg) + mlp_tensors((seg, "mlp"), f"{pre}.mlp")
    return out
