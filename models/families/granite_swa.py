"""Granite SWA (``model_type`` granite_swa, the "swash" models): Granite's muP layout (``granite``) with sliding-
window layers (``layer_types``; by default every fourth layer from the first full, the rest sliding over
``sliding_window`` keys) and a learned per-head attention sink in every layer (the reference scales each output
by ``sigmoid(logsumexp(scores) - sink)``: one more logit in the softmax's denominator, gpt-oss's sinks). Each
layer may have a rope base of its own (``layer_rope_theta``; 0: no rotary embedding in that layer): one base for
the full layers and one for the sliding ones are supported (as ``rope_theta`` / ``rope_local_theta``)."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from .base import (
    ConfigError,
    Tensor,
    checked_layer_types,
    common_from_hf,
    common_to_hf,
    llama_like,
    need,
    refuse,
    rope_from_hf,
    unsupported_cfg,
    with_defaults,
)

NAME = "granite_swa"
MODEL_TYPES = ("granite_swa",)
ARCHITECTURE = "GraniteSWAForCausalLM"

# the reference config's defaults for what a config.json may leave out (GraniteSWAConfig over GraniteConfig)
DEFAULTS = {"rms_norm_eps": 1e-5, "tie_word_embeddings": True, "sliding_window": 128, "max_position_embeddings": 8192}


def _layer_types(hf: dict, n: int) -> list[str]:
    types = hf.get("layer_types") or ["full_attention" if i % 4 == 0 else "sliding_attention" for i in range(n)]
    return checked_layer_types(types, n)


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(hf, DEFAULTS)
    refuse(hf, "mlp_bias", lambda v: not v, "MLP biases")
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    n = need(hf, "num_hidden_layers")
    types = _layer_types(hf, n)
    theta, scaling = rope_from_hf(hf)
    thetas = hf.get("layer_rope_theta") or [theta] * n
    if not isinstance(thetas, list) or len(thetas) != n or any(not isinstance(t, (int, float)) or t < 0
                                                               for t in thetas):
        raise ConfigError(f"config.json: layer_rope_theta must give a rope base (0: none) for each of the {n} layers")
    sliding = [t == "sliding_attention" for t in types]
    full_bases = {float(t) for t, s in zip(thetas, sliding) if t and not s}
    local_bases = {float(t) for t, s in zip(thetas, sliding) if t and s}
    if len(full_bases) > 1 or len(local_bases) > 1:
        raise ConfigError(f"config.json: layer_rope_theta={thetas} is not supported (one rope base for the full "
                          "layers and one for the sliding ones)")
    full = full_bases.pop() if full_bases else float(theta)
    local = local_bases.pop() if local_bases else full
    if local != full and scaling:
        raise ConfigError("config.json: rope scaling with a rope base of the sliding layers' own is not supported")
    bias = bool(hf.get("attention_bias", False))
    return TransformerConfig(**common_from_hf(
        hf, NAME, qkv_bias=bias, out_bias=bias, embed_multiplier=float(hf.get("embedding_multiplier", 1.0)),
        residual_multiplier=float(hf.get("residual_multiplier", 1.0)),
        query_scale=float(hf.get("attention_multiplier", 1.0)), logits_scaling=float(hf.get("logits_scaling", 1.0)),
        rope_theta=full, rope_scaling=scaling, rope_local_theta=None if local == full else local,
        sliding_window=int(hf["sliding_window"]), layer_types=tuple("sliding" if s else "full" for s in sliding),
        nope_layers=tuple(i for i, t in enumerate(thetas) if not t), attn_sinks=True))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias != cfg.out_bias, qk_norm=cfg.qk_norm, moe=cfg.moe is not None,
                    mla=cfg.mla is not None, linear=cfg.linear is not None, attn_sinks=not cfg.attn_sinks,
                    sandwich_norm=cfg.sandwich_norm, norm_offset=cfg.norm_offset != 0.0, embed_scale=cfg.embed_scale,
                    sliding_window=cfg.sliding_window <= 0 and any(cfg.sliding_layers))
    out = {**common_to_hf(cfg, "granite_swa", ARCHITECTURE), "attention_bias": cfg.qkv_bias, "mlp_bias": False,
           "embedding_multiplier": cfg.embed_multiplier, "residual_multiplier": cfg.residual_multiplier,
           "attention_multiplier": cfg.query_scale if cfg.query_scale is not None else cfg.head_dim**-0.5,
           "logits_scaling": cfg.logits_scaling, "sliding_window": cfg.sliding_window or DEFAULTS["sliding_window"]}
    local = cfg.rope_local_theta or cfg.rope_theta
    out["layer_types"] = ["sliding_attention" if s else "full_attention" for s in cfg.sliding_layers]
    out["layer_rope_theta"] = [0 if i in cfg.nope_layers else local if s else cfg.rope_theta
                               for i, s in enumerate(cfg.sliding_layers)]
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    return llama_like(cfg, segs) + [Tensor((seg, "attn", "sinks"), "model.layers.{i}.self_attn.sinks")
                                    for seg, *_ in segs]
