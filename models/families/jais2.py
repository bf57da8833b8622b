"""Jais-2 (``model_type`` jais2: Inception's Arabic-English Jais-2 chat models): Llama's layers with LayerNorms
(a mean subtracted, a learned scale and bias: new switch ``norm_bias`` with ``norm_center``; epsilon
``layer_norm_eps``) in place of RMSNorms, biases on all four attention projections and on the MLP's
(``attention_bias`` / ``mlp_bias``, both on by default: new switch ``mlp_bias``), and an ungated squared-ReLU MLP
(``up_proj`` / ``down_proj``)."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from .base import Tensor, common_from_hf, common_to_hf, llama_like, refuse, unsupported_cfg, with_defaults

NAME = "jais2"
MODEL_TYPES = ("jais2",)
ARCHITECTURE = "Jais2ForCausalLM"
ACTIVATIONS = ("relu2",)
WRITES = ("norm_center", "norm_bias", "mlp_bias")  # (hf_save.SWITCHES)

# the reference config's defaults for what a config.json may leave out (Jais2Config)
DEFAULTS = {"hidden_act": "relu2", "layer_norm_eps": 1e-5, "attention_bias": True, "mlp_bias": True,
            "max_position_embeddings": 8192}


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(hf, DEFAULTS)
    refuse(hf, "hidden_act", lambda v: v == "relu2", "only relu2 (the ungated squared ReLU)")
    bias, mlp_bias = bool(hf["attention_bias"]), bool(hf["mlp_bias"])
    return TransformerConfig(**common_from_hf(
        {**hf, "rms_norm_eps": hf["layer_norm_eps"]}, NAME, qkv_bias=bias, out_bias=bias, activation="relu2",
        norm_center=True, norm_bias=True, mlp_bias=mlp_bias))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, norm_center=not cfg.norm_center, norm_bias=not cfg.norm_bias,
                    qkv_bias=cfg.qkv_bias != cfg.out_bias, qk_norm=cfg.qk_norm, moe=cfg.moe is not None,
                    mla=cfg.mla is not None, linear=cfg.linear is not None, sliding_window=cfg.sliding_window > 0,
                    nope_layers=bool(cfg.nope_layers), sandwich_norm=cfg.sandwich_norm, embed_scale=cfg.embed_scale,
                    norm_offset=cfg.norm_offset != 0.0, rope_interleave=cfg.rope_interleave, rope_dim=cfg.rope_dim > 0)
    out = common_to_hf(cfg, "jais2", ARCHITECTURE)
    eps = out.pop("rms_norm_eps")
    return {**out, "hidden_act": "relu2", "layer_norm_eps": eps, "attention_bias": cfg.qkv_bias,
            "mlp_bias": cfg.mlp_bias}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    out = llama_like(cfg, segs, dense_mlp=False) + [Tensor(("final_norm", "bias"), "model.norm.bias")]
    for seg, *_ in segs:
        out += [Tensor((seg, "attn_norm", "bias"), "model.layers.{i}.input_layernorm.bias"),
                Tensor((seg, "mlp_norm", "bias"), "model.layers.{i}.post_attention_layernorm.bias")]
        out += [Tensor((seg, "mlp", n), f"model.layers.{{i}}.mlp.{n}_proj.weight", "t1") for n in ("up", "down")]
        if cfg.mlp_bias:
            out += [Tensor((seg, "mlp", f"{n}_bias"), f"model.layers.{{i}}.mlp.{n}_proj.bias") for n in ("up", "down")]
    return out
