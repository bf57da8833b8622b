"""Liquid LFM3 (``model_type`` lfm3: LFM3-1.7B and its fine-tunes): LFM2's gated short-convolution layers
(``layer_types`` conv) among attention layers of two kinds, sliding over ``sliding_window`` keys and full, each
kind with rope parameters of its own (by default the sliding layers' plain rotary at base 10,000 and the full
layers' proportional rotary, half of each head's angles turning, at base 1,000,000). Attention has per-head q/k
RMSNorm and, with ``use_attention_gate``, each head's output scaled by a sigmoid of its own projection of the
layer's input (one scalar per head: ``TransformerConfig.head_gate``; saved as ``gate_proj``, which transformers
renames ``g_proj`` as it loads). With ``use_sandwich_norm`` both the mixer's and the MLP's outputs are normed
before they join the residual (``post_operator_norm``, ``post_ffn_norm``); the SwiGLU MLP (``w1`` gate, ``w3``
up, ``w2`` down) is ``intermediate_size`` wide as given, the final norm is ``embedding_norm``, and embeddings are
tied by default. The default schedule: layer ``i`` full
when ``i % 4 == 2``, sliding when ``i % 4 == 0`` (but the first), conv otherwise."""

from __future__ import annotations

from ..config import LinearAttnConfig, TransformerConfig
from ..transformer import segments
from . import lfm2
from .base import (
    ConfigError,
    Tensor,
    checked_layer_types,
    common_from_hf,
    common_to_hf,
    gqa_tensors,
    mlp_tensors,
    need,
    refuse,
    rope_by_kind,
    rope_from_hf,
    unsupported_cfg,
    with_defaults,
)

NAME = "lfm3"
MODEL_TYPES = (NAME,)
ARCHITECTURE = "Lfm3ForCausalLM"
WRITES = ("head_gate",)  # (hf_save.SWITCHES)

# the reference config's defaults for what a config.json may leave out (Lfm3Config)
DEFAULTS = {"vocab_size": 128_000, "hidden_size": 2048, "intermediate_size": 7680, "num_hidden_layers": 24,
            "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 128, "norm_eps": 1e-5,
            "max_position_embeddings": 128_000, "tie_word_embeddings": True, "conv_L_cache": 7,
            "sliding_window": 256, "use_sandwich_norm": True, "use_attention_gate": True}
ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        "full_attention": {"rope_type": "proportional", "rope_theta": 1_000_000.0, "partial_rotary_factor": 0.5}}
KINDS = ("conv", "sliding_attention", "full_attention")


def layer_types(hf: dict, n: int) -> list[str]:
    """``layer_types``, or the reference's default schedule."""
    types = hf.get("layer_types") or ["full_attention" if i % 4 == 2 else
                                      "sliding_attention" if i % 4 == 0 and i > 0 else "conv" for i in range(n)]
    return checked_layer_types(types, n, KINDS)


def _rope(hf: dict, types: list[str]) -> tuple[float, dict | None, float | None]:
    """(full layers' theta and scaling, sliding layers' theta) from ``rope_parameters`` by layer kind, which must
    name each attention kind the layers use (the reference's defaults where the file gives none)."""
    params = rope_by_kind(hf, types, ROPE)
    theta, scaling = rope_from_hf({"rope_parameters": params.get("full_attention") or ROPE["full_attention"]})
    if "sliding_attention" not in types:
        return theta, scaling, None
    local, local_scaling = rope_from_hf({"rope_parameters": params["sliding_attention"]})
    if local_scaling:
        raise ConfigError("config.json: rope_parameters.sliding_attention scaling is not supported")
    return theta, scaling, local


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(hf, DEFAULTS)
    refuse(hf, "conv_bias", lambda v: not v, "biases on the short convolution and its projections")
    n = need(hf, "num_hidden_layers")
    types = layer_types(hf, n)
    theta, scaling, local = _rope(hf, types)
    conv = tuple(i for i, t in enumerate(types) if t == "conv")
    if len(conv) == n:
        raise ConfigError("config.json: layer_types has no attention layer (at least one is needed)")
    d = need(hf, "hidden_size")
    lin = LinearAttnConfig(layers=conv, k_heads=0, v_heads=1, k_dim=0, v_dim=d, conv=int(hf["conv_L_cache"]),
                           kind="shortconv") if conv else None
    sliding = tuple("sliding" if t == "sliding_attention" else "full" for t in types)
    bias = bool(hf.get("attention_bias", False))
    return TransformerConfig(**common_from_hf(
        hf, NAME, qk_norm=True, linear=lin, norm_eps=float(hf["norm_eps"]), rope_theta=theta, rope_scaling=scaling,
        rope_local_theta=local, sliding_window=int(hf["sliding_window"]) if "sliding" in sliding else 0,
        layer_types=sliding if "sliding" in sliding else None, sandwich_norm=bool(hf["use_sandwich_norm"]),
        head_gate=bool(hf["use_attention_gate"]), qkv_bias=bias, out_bias=bias))


def to_hf(cfg: TransformerConfig) -> dict:
    lin = cfg.linear
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias != cfg.out_bias, qk_norm=not cfg.qk_norm,
                    qk_norm_whole=cfg.qk_norm_whole, moe=cfg.moe is not None, mla=cfg.mla is not None,
                    linear=lin is not None and (lin.kind != "shortconv" or lin.parallel or lin.pre_norm),
                    norm_offset=cfg.norm_offset != 0.0, attn_gate=cfg.attn_gate, rope_dim=cfg.rope_dim > 0,
                    nope_layers=bool(cfg.nope_layers), attn_sinks=cfg.attn_sinks, embed_scale=cfg.embed_scale,
                    query_scale=cfg.query_scale is not None, pre_norm=not cfg.pre_norm)
    conv = set(lin.layers) if lin is not None else set()
    types = ["conv" if i in conv else "sliding_attention" if s else "full_attention"
             for i, s in enumerate(cfg.sliding_layers)]
    out = {**common_to_hf(cfg, NAME, ARCHITECTURE), "norm_eps": cfg.norm_eps, "conv_bias": False,
           "conv_L_cache": lin.conv if lin is not None else DEFAULTS["conv_L_cache"], "layer_types": types,
           "sliding_window": cfg.sliding_window or DEFAULTS["sliding_window"],
           "use_sandwich_norm": cfg.sandwich_norm, "use_attention_gate": cfg.head_gate,
           "attention_bias": cfg.qkv_bias, "pad_token_id": None, "bos_token_id": None,
           "eos_token_id": None,  # (not LFM3's vocabulary's ids)
           "rope_parameters": {"full_attention": {"rope_type": "default", **(cfg.rope_scaling or {}),
                                                  "rope_theta": cfg.rope_theta},
                               "sliding_attention": {"rope_type": "default",
                                                     "rope_theta": cfg.rope_local_theta or cfg.rope_theta}}}
    for k in ("rms_norm_eps", "rope_theta", "rope_scaling"):
        out.pop(k, None)
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = lfm2.outer_tensors(cfg)
    pre = "model.layers.{i}"
    for seg, _, _, _ in segments(cfg):
        out += [Tensor((seg, "attn_norm", "scale"), f"{pre}.operator_norm.weight"),
                Tensor((seg, "mlp_norm", "scale"), f"{pre}.ffn_norm.weight")]
        if cfg.sandwich_norm:
            out += [Tensor((seg, "post_attn_norm", "scale"), f"{pre}.post_operator_norm.weight"),
                    Tensor((seg, "post_mlp_norm", "scale"), f"{pre}.post_ffn_norm.weight")]
        out += mlp_tensors((seg, "mlp"), f"{pre}.feed_forward", ("w1", "w3", "w2"))
        if seg.startswith("linear"):
            out += lfm2.conv_tensors(seg, cfg.d_model)
            continue
        out += gqa_tensors(seg, cfg, f"{pre}.self_attn")
        if cfg.head_gate:
            out.append(Tensor((seg, "attn", "h_gate"), f"{pre}.self_attn.gate_proj.weight", "t1"))
    return out
