"""SmolLM3 (``model_type`` smollm3, the dual-mode reasoning SmolLM3-3B): the Llama layout in which some layers
attend without rotary embedding (NoPE), every fourth by default (``no_rope_layers``: 1 rotates, 0 does not;
or ``no_rope_layer_interval``). Sliding windows apply only with ``use_sliding_window``, as in the reference;
``attention_bias`` puts biases on all four attention projections."""

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
    window_to_hf,
)

NAME = "smollm3"
MODEL_TYPES = ("smollm3",)
ARCHITECTURE = "SmolLM3ForCausalLM"


def _nope_layers(hf: dict) -> tuple[int, ...]:
    n = hf.get("num_hidden_layers")
    flags = hf.get("no_rope_layers")
    if flags is None:
        every = hf.get("no_rope_layer_interval", 4)
        if not isinstance(every, int) or every < 1:
            raise ConfigError(f"config.json: no_rope_layer_interval={every!r} is not a positive integer")
        flags = [int((i + 1) % every != 0) for i in range(n)]
    if not isinstance(flags, list) or len(flags) != n or any(f not in (0, 1) for f in flags):
        raise ConfigError(f"config.json: no_rope_layers must list 0 or 1 for each of the {n} layers")
    return tuple(i for i, f in enumerate(flags) if not f)


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "mlp_bias", lambda v: not v, "MLP biases")
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    hf = {"tie_word_embeddings": True, **hf}
    bias = bool(hf.get("attention_bias", False))
    nope = _nope_layers(hf)
    window = {}
    if hf.get("use_sliding_window") and hf.get("sliding_window"):
        if not hf.get("layer_types"):  # the reference's default: the NoPE layers slide
            hf = {**hf, "layer_types": ["sliding_attention" if i in nope else "full_attention"
                                        for i in range(hf["num_hidden_layers"])]}
        window = window_from_hf(hf)
    return TransformerConfig(**common_from_hf(hf, NAME, qkv_bias=bias, out_bias=bias, nope_layers=nope, **window))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias != cfg.out_bias, qk_norm=cfg.qk_norm, moe=cfg.moe is not None,
                    mla=cfg.mla is not None, rope_dim=cfg.rope_dim > 0)
    out = {**common_to_hf(cfg, "smollm3", ARCHITECTURE), "attention_bias": cfg.qkv_bias, "mlp_bias": False,
           "no_rope_layers": [int(i not in cfg.nope_layers) for i in range(cfg.n_layers)],
           "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}  # not SmolLM3's vocabulary's ids
    window = window_to_hf(cfg)
    return {**out, **window, "use_sliding_window": bool(window)}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    return llama_like(cfg, segments(cfg))
