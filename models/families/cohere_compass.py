"""Cohere Compass text (``model_type`` cohere_compass_text: the language model of the ``cohere_compass``
vision-language models, e.g. North-Micro-Vision-Instruct): Cohere 2's layers (``cohere2``: one LayerNorm without a
bias per layer feeding attention and the MLP side by side, biases on all four attention projections with
``attention_bias``, logits times ``logit_scale``; unlike Cohere 2 a ``head_dim`` the file gives is used, else
``hidden_size / heads``) with
a rotary of Qwen's kind (pairs (x_i, x_i+D/2), not Cohere's adjacent pairs) whose parameters ``rope_parameters``
gives per layer kind (``full_attention`` / ``sliding_attention``), ``null`` for a kind without rotary; every
layer full unless ``layer_types`` says otherwise, a window of 4096 for the sliding ones; logits unscaled unless
``logit_scale`` is given. Its M-RoPE sections turn all alike for text (one position per token), so a text
decoder rotates with the plain rotary; image inputs and their DeepStack features are the wrapper's."""

from __future__ import annotations

from ..config import TransformerConfig
from . import cohere2
from .base import (
    ConfigError,
    checked_layer_types,
    common_from_hf,
    common_to_hf,
    need,
    refuse,
    rope_from_hf,
    rotary_dims,
    unsupported_cfg,
    with_defaults,
)

NAME = "cohere_compass"
MODEL_TYPES = ("cohere_compass_text",)
ARCHITECTURE = "CohereCompassForCausalLM"
WRITES = ("norm_center", "parallel_block", "logits_multiplier")  # (hf_save.SWITCHES)

# the reference config's defaults for what a config.json may leave out (CohereCompassTextConfig)
DEFAULTS = {"tie_word_embeddings": True, "layer_norm_eps": 1e-5, "sliding_window": 4096,
            "max_position_embeddings": 8192, "attention_bias": False}
MROPE_KEYS = ("mrope_section", "mrope_interleaved")  # (the same angles on every axis for text positions)


def _rope(hf: dict, types: list[str], head_dim: int) -> dict[str, tuple[float, dict | None] | None]:
    """Per layer kind in use: (theta, scaling), or None where the kind has no rotary."""
    params = hf.get("rope_parameters")
    if not isinstance(params, dict) or not set(types) <= set(params):
        raise ConfigError("config.json: rope_parameters must be nested by layer kind ('full_attention', "
                          f"'sliding_attention'; null for none) with an entry for each kind of {sorted(set(types))}, "
                          "as the reference reads it")
    out = {}
    for kind in sorted(set(types)):
        p = params[kind]
        if p is None:
            out[kind] = None
            continue
        if not isinstance(p, dict):
            raise ConfigError(f"config.json: rope_parameters.{kind} must be a dict or null")
        p = {k: v for k, v in p.items() if k not in MROPE_KEYS}
        if rotary_dims({"rope_parameters": p}, head_dim):
            raise ConfigError(f"config.json: rope_parameters.{kind}.partial_rotary_factor is not supported (the "
                              "reference rotates whole heads)")
        out[kind] = rope_from_hf({"max_position_embeddings": hf["max_position_embeddings"], "rope_parameters": p})
    return out


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(hf, DEFAULTS)
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    n, d, heads = need(hf, "num_hidden_layers"), need(hf, "hidden_size"), need(hf, "num_attention_heads")
    hf = {**hf, "head_dim": hf.get("head_dim") or d // heads}  # (a file's head_dim overrides the derived one)
    types = checked_layer_types(hf.get("layer_types") or ["full_attention"] * n, n)
    rope = _rope(hf, types, hf["head_dim"])
    full, local = rope.get("full_attention"), rope.get("sliding_attention")
    if full is not None and local is not None and local[1] is not None and local != full:
        raise ConfigError("config.json: rope_parameters.sliding_attention scaling is not supported (unless the same "
                          "as the full layers')")
    theta, scaling = full or local or (10_000.0, None)
    local_theta = local[0] if local is not None and full is not None and local[0] != theta else None
    nope = tuple(i for i, t in enumerate(types) if rope[t] is None)
    sliding = tuple(t == "sliding_attention" for t in types)
    if any(sliding) and not hf.get("sliding_window"):
        raise ConfigError("config.json: sliding_window is required by sliding_attention layer_types")
    bias = bool(hf["attention_bias"])
    scale = hf.get("logit_scale")
    return TransformerConfig(**common_from_hf(
        {**hf, "rms_norm_eps": hf["layer_norm_eps"]}, NAME, rope_theta=theta, rope_scaling=scaling,
        rope_local_theta=local_theta, qkv_bias=bias, out_bias=bias, norm_center=True, parallel_block=True,
        logits_multiplier=1.0 if scale is None else float(scale),
        sliding_window=int(hf["sliding_window"]) if any(sliding) else 0,
        layer_types=tuple("sliding" if s else "full" for s in sliding) if any(sliding) else None,
        nope_layers=nope))


def to_hf(cfg: TransformerConfig) -> dict:
    sliding = cfg.sliding_layers
    kinds = {s: [i for i in range(cfg.n_layers) if sliding[i] == s] for s in (False, True)}
    nope = set(cfg.nope_layers)
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias != cfg.out_bias, qk_norm=cfg.qk_norm, moe=cfg.moe is not None,
                    mla=cfg.mla is not None, rope_interleave=cfg.rope_interleave, norm_center=not cfg.norm_center,
                    parallel_block=not cfg.parallel_block, rope_dim=cfg.rope_dim > 0,
                    nope_layers=any(0 < len(nope & set(ls)) < len(ls) for ls in kinds.values()),
                    rope_local_theta=cfg.rope_local_theta is not None and bool(nope & set(kinds[False])))
    out = common_to_hf(cfg, MODEL_TYPES[0], ARCHITECTURE)
    del out["rms_norm_eps"], out["rope_theta"], out["rope_scaling"]
    full = {"rope_type": "default", **(cfg.rope_scaling or {}), "rope_theta": cfg.rope_theta}
    local = full if cfg.rope_local_theta is None else {"rope_type": "default", "rope_theta": cfg.rope_local_theta}
    params = {}
    for s, kind, entry in ((False, "full_attention", full), (True, "sliding_attention", local)):
        if kinds[s]:
            params[kind] = None if nope >= set(kinds[s]) else dict(entry)
    out.update(layer_norm_eps=cfg.norm_eps, logit_scale=cfg.logits_multiplier, attention_bias=cfg.qkv_bias,
               sliding_window=cfg.sliding_window or DEFAULTS["sliding_window"],
               layer_types=["sliding_attention" if s else "full_attention" for s in sliding], rope_parameters=params)
    return out


tensors = cohere2.tensors  # (Command A's names)
