"""EXAONE 4.0 (``model_type`` exaone4, LG's reasoning models): OLMo-2's norm placement (no norm before
attention or MLP, an RMSNorm on each one's output) with per-head q/k RMSNorm, and hybrid attention: sliding-
window layers with rotary embedding and full layers without any (NoPE), three sliding layers in four unless
``layer_types`` says otherwise. A config without ``sliding_window`` has full layers only, all rotary."""

from __future__ import annotations

from ..config import TransformerConfig
from . import olmo2
from .base import (
    ConfigError,
    common_from_hf,
    common_to_hf,
    every_nth_full,
    refuse,
    unsupported_cfg,
    window_from_hf,
)

NAME = "exaone4"
MODEL_TYPES = ("exaone4",)
ARCHITECTURE = "Exaone4ForCausalLM"
tensors = olmo2.tensors


def _layer_types(pattern, n: int) -> list[str]:
    """``sliding_window_pattern``: n (every n-th layer full) or a string such as "LLLG" (L sliding, G full),
    repeated over the layers."""
    if isinstance(pattern, int) and not isinstance(pattern, bool) and pattern >= 1:
        return every_nth_full(n, pattern)
    if isinstance(pattern, str) and pattern and set(pattern) <= {"L", "G"}:
        return ["sliding_attention" if pattern[i % len(pattern)] == "L" else "full_attention" for i in range(n)]
    raise ConfigError(f"config.json: sliding_window_pattern={pattern!r} is not a positive integer or a string of "
                      "L (sliding) and G (full) layers")


def attention_from_hf(hf: dict) -> tuple[dict, dict]:
    """(config.json with its layer types filled in, the TransformerConfig fields of EXAONE's attention: the
    window, the sliding layers and the full NoPE ones); shared with K-EXAONE (``exaone_moe``)."""
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    n = hf.get("num_hidden_layers")
    hf = {"rms_norm_eps": 1e-5, **hf}
    if not hf.get("sliding_window"):  # the reference: no window, no pattern, every layer full and rotary
        return {**hf, "layer_types": None}, {"qk_norm": True}
    if not hf.get("layer_types"):
        hf = {**hf, "layer_types": _layer_types(hf.get("sliding_window_pattern", 4), n)}
    if len(hf["layer_types"]) != n:
        raise ConfigError(f"config.json: layer_types has {len(hf['layer_types'])} entries for {n} layers")
    nope = tuple(i for i, t in enumerate(hf["layer_types"]) if t == "full_attention")  # global NoPE
    return hf, {"qk_norm": True, "nope_layers": nope, **window_from_hf(hf)}


def attention_to_hf(cfg: TransformerConfig, family: str, no_window: bool = True) -> dict:
    """EXAONE's attention fields, after refusing what they cannot state. Without sliding layers: every layer
    rotary is ``sliding_window: null`` (which ``no_window`` formats allow), none rotary is a window that no
    layer uses (full layers then drop the rotary, as they do beside sliding ones)."""
    sliding = cfg.sliding_layers
    full = tuple(i for i, s in enumerate(sliding) if not s)
    all_nope = not any(sliding) and cfg.nope_layers == full
    unsupported_cfg(cfg, family, qkv_bias=cfg.qkv_bias, qk_norm=not cfg.qk_norm, qk_norm_whole=cfg.qk_norm_whole,
                    mla=cfg.mla is not None, rope_dim=cfg.rope_dim > 0,
                    nope_layers=cfg.nope_layers != (full if any(sliding) or all_nope or not no_window else ()))
    if not any(sliding) and not all_nope:
        return {"sliding_window": None, "sliding_window_pattern": None,
                "layer_types": ["full_attention"] * cfg.n_layers}
    return {"sliding_window": cfg.sliding_window or 4096,  # (the reference's default; no layer slides)
            "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding]}


def from_hf(hf: dict) -> TransformerConfig:
    hf, attention = attention_from_hf(hf)
    return TransformerConfig(**common_from_hf(hf, NAME, pre_norm=False, sandwich_norm=True, **attention))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, pre_norm=cfg.pre_norm, sandwich_norm=not cfg.sandwich_norm, moe=cfg.moe is not None)
    return {**common_to_hf(cfg, "exaone4", ARCHITECTURE), **attention_to_hf(cfg, NAME)}
