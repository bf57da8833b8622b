"""Qwen3.5 (dense text model): three Gated DeltaNet linear-attention layers to one gated softmax-attention
layer (``layer_types``), zero-centred RMSNorms (scale ``1 + w``), q/k norms, a sigmoid output gate on each
attention head (q_proj holds each head's queries, then its gate), rotary on the leading quarter of each head.

The linear layers' in_proj_qkv and conv1d hold q, k and v channels one after the other; they are read as one
parameter each (``models/layers/gated_deltanet``) so that tensor parallelism splits them by heads. The
multi-token-prediction head (``mtp.*``) is not part of the decoder and is not loaded. The released models are
vision-language wrappers (``qwen3_5``) whose language model is this one (``multimodal.WRAPPERS``).
"""

from __future__ import annotations

from ..config import LinearAttnConfig, TransformerConfig
from ..transformer import segments
from .base import (
    ConfigError,
    Piece,
    Tensor,
    common_from_hf,
    common_to_hf,
    gqa_tensors,
    mlp_tensors,
    outer_tensors,
    refuse,
    rotary_dims,
    unsupported_cfg,
)

NAME = "qwen3_5"
MODEL_TYPES = ("qwen3_5_text",)
ARCHITECTURE = "Qwen3_5ForCausalLM"
# Qwen3_5TextConfig's defaults for the fields a config.json may leave out
LINEAR_DEFAULTS = {"linear_conv_kernel_dim": 4, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
                   "linear_num_key_heads": 16, "linear_num_value_heads": 32, "head_dim": 256}


def layer_types(hf: dict) -> list[str]:
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types")
    if types is None:
        every = hf.get("full_attention_interval", 4)
        types = ["linear_attention" if (i + 1) % every else "full_attention" for i in range(n)]
    bad = sorted({t for t in types if t not in ("linear_attention", "full_attention")})
    if bad or len(types) != n:
        raise ConfigError(f"config.json: layer_types must give linear_attention or full_attention for each of the "
                          f"{n} layers (got {len(types)} entries{', ' + ', '.join(map(repr, bad)) if bad else ''})")
    return list(types)


def linear_from_hf(hf: dict) -> LinearAttnConfig:
    get = {k: hf.get(k) if hf.get(k) is not None else v for k, v in LINEAR_DEFAULTS.items()}
    lin = LinearAttnConfig(layers=tuple(i for i, t in enumerate(layer_types(hf)) if t == "linear_attention"),
                           k_heads=get["linear_num_key_heads"], v_heads=get["linear_num_value_heads"],
                           k_dim=get["linear_key_head_dim"], v_dim=get["linear_value_head_dim"],
                           conv=get["linear_conv_kernel_dim"])
    if lin.v_heads % lin.k_heads:
        raise ConfigError(f"config.json: linear_num_value_heads={lin.v_heads} is not a multiple of "
                          f"linear_num_key_heads={lin.k_heads}")
    return lin


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    refuse(hf, "attention_bias", lambda v: not v, "attention biases include o_proj")
    hf = {**hf, "head_dim": hf.get("head_dim") or LINEAR_DEFAULTS["head_dim"]}
    return TransformerConfig(**common_from_hf(hf, NAME, qk_norm=True, attn_gate=True, norm_offset=1.0,
                                              rope_dim=rotary_dims(hf, hf["head_dim"], 0.25),
                                              linear=linear_from_hf(hf)))


def linear_to_hf(cfg: TransformerConfig) -> dict:
    lin = cfg.linear
    return {"layer_types": ["linear_attention" if i in lin.layers else "full_attention" for i in range(cfg.n_layers)],
            "linear_conv_kernel_dim": lin.conv, "linear_key_head_dim": lin.k_dim, "linear_value_head_dim": lin.v_dim,
            "linear_num_key_heads": lin.k_heads, "linear_num_value_heads": lin.v_heads}


def rope_to_hf(cfg: TransformerConfig) -> dict:
    """Qwen3.5's rope as transformers 5 writes it: theta and the rotary fraction in ``rope_parameters``."""
    return {"rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta,
                                "partial_rotary_factor": (cfg.rope_dim or cfg.head_dim) / cfg.head_dim}}


def to_hf(cfg: TransformerConfig, moe_ok: bool = False) -> dict:
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, qk_norm=not cfg.qk_norm, moe=cfg.moe is not None and not moe_ok,
                    mla=cfg.mla is not None, linear=cfg.linear is None or cfg.linear.kind != "gated_deltanet",
                    attn_gate=not cfg.attn_gate,
                    norm_offset=cfg.norm_offset != 1.0, rope_scaling=cfg.rope_scaling is not None,
                    sliding_window=cfg.sliding_window != 0)
    out = {**common_to_hf(cfg, "qwen3_5_text", ARCHITECTURE), "attention_bias": False, **linear_to_hf(cfg),
           **rope_to_hf(cfg)}
    for k in ("rope_theta", "rope_scaling"):
        out.pop(k, None)
    return out


def attention_tensors(seg: str, cfg: TransformerConfig) -> list[Tensor]:
    """GQA with the gated q_proj: [H * 2D, d], each head's D query rows then its D gate rows."""
    prefix = "model.layers.{i}.self_attn"
    q = f"{prefix}.q_proj.weight"
    out = [t for t in gqa_tensors(seg, cfg, prefix) if not t.hf.endswith("q_proj.weight")]
    return out + [Tensor((seg, "attn", n), q, "t1", piece=Piece(0, j, (cfg.head_dim,) * 2, groups=cfg.n_heads))
                  for j, n in enumerate(("q", "q_gate"))]


def linear_tensors(seg: str, cfg: TransformerConfig, prefix: str = "model.layers.{i}.linear_attn") -> list[Tensor]:
    lin = cfg.linear
    kd, vd = lin.k_heads * lin.k_dim, lin.v_heads * lin.v_dim
    sizes = (kd, kd, vd)
    out = [Tensor((seg, "attn", n), f"{prefix}.in_proj_qkv.weight", "t1", piece=Piece(0, j, sizes))
           for j, n in enumerate("qkv")]
    out += [Tensor((seg, "attn", f"conv_{n}"), f"{prefix}.conv1d.weight", "conv", piece=Piece(0, j, sizes))
            for j, n in enumerate("qkv")]
    out += [Tensor((seg, "attn", n), f"{prefix}.in_proj_{n}.weight", "t1") for n in "zba"]
    out += [Tensor((seg, "attn", "dt_bias"), f"{prefix}.dt_bias"), Tensor((seg, "attn", "A_log"), f"{prefix}.A_log"),
            Tensor((seg, "attn", "norm"), f"{prefix}.norm.weight"),
            Tensor((seg, "attn", "o"), f"{prefix}.out_proj.weight", "t2")]
    return out


def layer_tensors(cfg: TransformerConfig, dense_mlp: bool = True) -> list[Tensor]:
    """Norms, the mixer of each stack's kind and (``dense_mlp``) the dense MLP of the stacks without experts."""
    out = outer_tensors(cfg)
    for seg, _, _, moe in segments(cfg):
        out += [Tensor((seg, "attn_norm", "scale"), "model.layers.{i}.input_layernorm.weight"),
                Tensor((seg, "mlp_norm", "scale"), "model.layers.{i}.post_attention_layernorm.weight")]
        out += linear_tensors(seg, cfg) if seg.startswith("linear") else attention_tensors(seg, cfg)
        if dense_mlp and not moe:
            out += mlp_tensors((seg, "mlp"), "model.layers.{i}.mlp")
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    return layer_tensors(cfg)


def ignored(name: str, cfg: TransformerConfig) -> bool:
    """The multi-token-prediction module (used for speculative decoding, not by the decoder)."""
    return name.startswith("mtp.")
