"""Command R7B and Command A, with its reasoning model (``model_type`` cohere2): each layer one LayerNorm
without a bias (``norm_center``) whose output feeds attention and the MLP side by side, both added to the
residual (``parallel_block``); sliding-window layers with rotary embedding on adjacent pairs and full layers
without any (three sliding in four unless ``layer_types`` says otherwise), biases on all four attention
projections when ``attention_bias``, logits times ``logit_scale``, head size ``hidden_size / heads`` whatever the
file says (the reference derives it)."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from .base import (
    Tensor,
    checked_layer_types,
    common_from_hf,
    common_to_hf,
    every_nth_full,
    gqa_tensors,
    mlp_tensors,
    need,
    outer_tensors,
    refuse,
    rope_from_hf,
    unsupported_cfg,
)

NAME = "cohere2"
MODEL_TYPES = ("cohere2",)
ARCHITECTURE = "Cohere2ForCausalLM"
WRITES = ("norm_center", "parallel_block", "logits_multiplier")  # (hf_save.SWITCHES)


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    n, d, heads = need(hf, "num_hidden_layers"), need(hf, "hidden_size"), need(hf, "num_attention_heads")
    hf = {"tie_word_embeddings": True, "layer_norm_eps": 1e-5, "logit_scale": 0.0625, "rope_theta": 10_000.0,
          **{k: v for k, v in hf.items() if v is not None}, "head_dim": d // heads}
    types = hf.get("layer_types") or every_nth_full(n, hf.get("sliding_window_pattern", 4))
    window, sliding = sliding_layers(hf, types)
    theta, scaling = rope_from_hf(hf)
    bias = bool(hf.get("attention_bias", False))
    return TransformerConfig(**common_from_hf(
        {**hf, "rms_norm_eps": hf["layer_norm_eps"]}, NAME, rope_theta=theta, rope_scaling=scaling, qkv_bias=bias,
        out_bias=bias, rope_interleave=True, norm_center=True, parallel_block=True,
        logits_multiplier=float(hf["logit_scale"]), sliding_window=window if any(sliding) else 0,
        layer_types=tuple("sliding" if s else "full" for s in sliding) if any(sliding) else None,
        nope_layers=tuple(i for i, s in enumerate(sliding) if not s)))


def sliding_layers(hf: dict, types: list[str]) -> tuple[int, tuple[bool, ...]]:
    """(window, which layers slide) from ``types`` (a ``layer_types`` list): none without a window. (The reference
    rotates a layer's queries and keys only where it slides: without a window, in no layer.)"""
    n = need(hf, "num_hidden_layers")
    types = checked_layer_types(types, n)
    window = int(hf.get("sliding_window") or 0)
    return window, tuple(t == "sliding_attention" and window > 0 for t in types)


def to_hf(cfg: TransformerConfig) -> dict:
    sliding = cfg.sliding_layers
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias != cfg.out_bias, qk_norm=cfg.qk_norm, moe=cfg.moe is not None,
                    mla=cfg.mla is not None, rope_interleave=not cfg.rope_interleave, norm_center=not cfg.norm_center,
                    parallel_block=not cfg.parallel_block, rope_dim=cfg.rope_dim > 0,
                    head_dim=cfg.head_dim * cfg.n_heads != cfg.d_model,
                    nope_layers=cfg.nope_layers != tuple(i for i, s in enumerate(sliding) if not s))
    out = common_to_hf(cfg, NAME, ARCHITECTURE)
    del out["rms_norm_eps"], out["head_dim"]
    out.update(layer_norm_eps=cfg.norm_eps, logit_scale=cfg.logits_multiplier, attention_bias=cfg.qkv_bias,
               sliding_window=cfg.sliding_window or None,
               layer_types=["sliding_attention" if s else "full_attention" for s in sliding])
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = outer_tensors(cfg)
    for seg, *_ in segments(cfg):
        out += [Tensor((seg, "attn_norm", "scale"), "model.layers.{i}.input_layernorm.weight")]
        out += gqa_tensors(seg, cfg) + mlp_tensors((seg, "mlp"), "model.layers.{i}.mlp")
    return out
