"""HyperCLOVA X SEED (``model_type`` hyperclovax; HyperCLOVAX-SEED-Think-14B reasons in its chat template's think
turns): Granite's muP layout (embeddings times ``embedding_multiplier``, each sub-layer's output times
``residual_multiplier`` before its residual add, ``attention_multiplier`` as the softmax scale: head_dim ** -0.5
unless given) with Peri-Layer Normalization: with ``use_post_norm`` (the default) each sub-layer's output is
RMS-normed (``post_norm1`` / ``post_norm2``) before the multiplier, as Gemma's sandwich norms; the logits are
*multiplied* by ``logits_scaling`` (Granite divides by it). ``attention_bias`` puts biases on all four attention
projections."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from .base import Tensor, common_from_hf, common_to_hf, llama_like, need, refuse, unsupported_cfg

NAME = "hyperclovax"
MODEL_TYPES = ("hyperclovax",)
ARCHITECTURE = "HyperCLOVAXForCausalLM"
WRITES = ("logits_multiplier",)  # (hf_save.SWITCHES)


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "mlp_bias", lambda v: not v, "MLP biases")
    refuse(hf, "hidden_act", lambda v: v in (None, "silu"), "only silu")
    heads, d = need(hf, "num_attention_heads"), need(hf, "hidden_size")
    head_dim = hf.get("head_dim") or d // heads
    bias = bool(hf.get("attention_bias", False))
    scale = hf.get("attention_multiplier")
    return TransformerConfig(**common_from_hf(
        hf, NAME, head_dim=head_dim, qkv_bias=bias, out_bias=bias,
        embed_multiplier=float(hf.get("embedding_multiplier", 1.0)),
        residual_multiplier=float(hf.get("residual_multiplier", 1.0)),
        query_scale=float(head_dim**-0.5 if scale is None else scale),
        logits_multiplier=float(hf.get("logits_scaling", 1.0)),
        sandwich_norm=bool(hf.get("use_post_norm", True))))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias != cfg.out_bias, qk_norm=cfg.qk_norm, moe=cfg.moe is not None,
                    mla=cfg.mla is not None, linear=cfg.linear is not None, sliding_window=cfg.sliding_window > 0,
                    nope_layers=bool(cfg.nope_layers), logits_scaling=cfg.logits_scaling != 1.0,
                    pre_norm=not cfg.pre_norm, norm_offset=cfg.norm_offset != 0.0, embed_scale=cfg.embed_scale)
    return {**common_to_hf(cfg, "hyperclovax", ARCHITECTURE), "attention_bias": cfg.qkv_bias, "mlp_bias": False,
            "embedding_multiplier": cfg.embed_multiplier, "residual_multiplier": cfg.residual_multiplier,
            "attention_multiplier": cfg.query_scale if cfg.query_scale is not None else cfg.head_dim**-0.5,
            "logits_scaling": cfg.logits_multiplier, "use_post_norm": cfg.sandwich_norm}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    out = llama_like(cfg, segs)
    if cfg.sandwich_norm:
        for seg, *_ in segs:
            out += [Tensor((seg, "post_attn_norm", "scale"), "model.layers.{i}.post_norm1.weight"),
                    Tensor((seg, "post_mlp_norm", "scale"), "model.layers.{i}.post_norm2.weight")]
    return out
