"""TII Falcon-H1 (``model_type`` falcon_h1: Falcon-H1 0.5B-34B base and instruct, and the reasoning model
Falcon-H1R-7B): a parallel hybrid. Every layer runs grouped-query attention and a Mamba-2 mixer side by side on
the same RMS-normalised input and adds their outputs before the residual (``LinearAttnConfig.parallel``), then
Llama's SwiGLU MLP (``feed_forward``) after ``pre_ff_layernorm``; the final norm is ``final_layernorm``. So each
layer keeps both a KV cache and a Mamba-2 state.

The checkpoints are trained with muP and keep its scalars in the forward pass, read here as config fields
rather than folded into the weights (folding would change how the optimiser moves them, and a saved model
would no longer be the checkpoint it came from): ``embedding_multiplier``, ``lm_head_multiplier``,
``key_multiplier`` (keys after their projection), ``attention_in_multiplier`` / ``attention_out_multiplier``,
``ssm_in_multiplier`` / ``ssm_out_multiplier``, ``ssm_multipliers`` (the mixer's z, x, B, C and dt
projections) and ``mlp_multipliers`` (the gate projection before the activation, the MLP's output). The
mixer's output norm is optional (``mamba_rms_norm``) and may sit before the gate (``mamba_norm_before_gate``);
its width may differ from ``mamba_expand * hidden_size`` (``mamba_d_ssm``)."""

from __future__ import annotations

from ..config import LinearAttnConfig, TransformerConfig
from ..transformer import segments
from .bamba import layout_tensors
from .base import ConfigError, Tensor, common_from_hf, common_to_hf, gqa_tensors, need, refuse, unsupported_cfg
from .granite import mamba_tensors

NAME = "falcon_h1"
MODEL_TYPES = (NAME,)
ARCHITECTURE = "FalconH1ForCausalLM"
# parallel attention + Mamba-2 layers, the mixer's norm placement and every muP multiplier (hf_save.SWITCHES)
WRITES = ("linear.parallel", "linear.norm", "linear.in_multiplier", "linear.out_multiplier", "linear.multipliers",
          "key_multiplier", "attn_in_multiplier", "attn_out_multiplier", "mlp_multipliers", "logits_multiplier")


def _floats(hf: dict, key: str, n: int) -> tuple[float, ...]:
    v = hf.get(key)
    if v is None:
        return (1.0,) * n
    if not isinstance(v, (list, tuple)) or len(v) != n:
        raise ConfigError(f"config.json: {key}={v!r} must be a list of {n} numbers")
    return tuple(float(x) for x in v)


def mamba_from_hf(hf: dict) -> LinearAttnConfig:
    """The mixers' shapes and multipliers (every layer has one)."""
    d, n = need(hf, "hidden_size"), need(hf, "num_hidden_layers")
    inner = hf.get("mamba_d_ssm") or hf.get("mamba_expand", 2) * d
    heads, groups = hf.get("mamba_n_heads", 128), hf.get("mamba_n_groups", 1)
    head = hf.get("mamba_d_head", "auto")
    head = inner // heads if head in ("auto", None) else head
    if head * heads != inner or heads % groups:
        raise ConfigError(f"config.json: mamba_n_heads={heads} x mamba_d_head={head} must equal mamba_d_ssm "
                          f"(or mamba_expand x hidden_size)={inner}, with mamba_n_groups={groups} dividing the heads")
    norm = ("none" if not hf.get("mamba_rms_norm", False)
            else "before_gate" if hf.get("mamba_norm_before_gate", True) else "gated")
    limit = hf.get("time_step_limit") or (0.0, float("inf"))
    return LinearAttnConfig(layers=tuple(range(n)), k_heads=groups, v_heads=heads, k_dim=hf.get("mamba_d_state", 256),
                            v_dim=head, conv=hf.get("mamba_d_conv", 4), kind="mamba2",
                            conv_bias=bool(hf.get("mamba_conv_bias", True)),
                            dt_limit=(float(limit[0]), float(limit[1])), parallel=True, norm=norm,
                            in_multiplier=float(hf.get("ssm_in_multiplier", 1.0)),
                            out_multiplier=float(hf.get("ssm_out_multiplier", 1.0)),
                            multipliers=_floats(hf, "ssm_multipliers", 5))


def from_hf(hf: dict) -> TransformerConfig:
    for key, what in (("attention_bias", "attention biases"), ("mlp_bias", "MLP biases"),
                      ("mamba_proj_bias", "a Mamba-2 in_proj bias"), ("projectors_bias", "a Mamba-2 out_proj bias")):
        refuse(hf, key, lambda v: not v, what)
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    return TransformerConfig(**common_from_hf(
        hf, NAME, linear=mamba_from_hf(hf), norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
        embed_multiplier=float(hf.get("embedding_multiplier", 1.0)),
        logits_multiplier=float(hf.get("lm_head_multiplier", 1.0)),
        key_multiplier=float(hf.get("key_multiplier", 1.0)),
        attn_in_multiplier=float(hf.get("attention_in_multiplier", 1.0)),
        attn_out_multiplier=float(hf.get("attention_out_multiplier", 1.0)),
        mlp_multipliers=_floats(hf, "mlp_multipliers", 2)))


def to_hf(cfg: TransformerConfig) -> dict:
    lin = cfg.linear
    unsupported_cfg(cfg, NAME, linear=lin is None or not lin.parallel, qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias,
                    qk_norm=cfg.qk_norm, moe=cfg.moe is not None, mla=cfg.mla is not None,
                    sliding_window=cfg.sliding_window > 0, nope_layers=bool(cfg.nope_layers),
                    rope_dim=cfg.rope_dim not in (0, cfg.head_dim), attn_gate=cfg.attn_gate,
                    query_scale=cfg.query_scale is not None and cfg.query_scale != cfg.head_dim ** -0.5,
                    residual_multiplier=cfg.residual_multiplier != 1.0, logits_scaling=cfg.logits_scaling != 1.0,
                    embed_scale=cfg.embed_scale, norm_offset=cfg.norm_offset != 0.0, sandwich_norm=cfg.sandwich_norm,
                    attn_softcap=cfg.attn_softcap is not None, final_softcap=cfg.final_softcap is not None)
    inner = lin.v_heads * lin.v_dim
    src = cfg.extra.get("hf_config", {})
    return {**common_to_hf(cfg, NAME, ARCHITECTURE), "attention_bias": False, "mlp_bias": False,
            "mamba_proj_bias": False, "projectors_bias": False, "mamba_d_ssm": inner, "mamba_n_heads": lin.v_heads,
            "mamba_d_head": lin.v_dim, "mamba_n_groups": lin.k_heads, "mamba_d_state": lin.k_dim,
            "mamba_d_conv": lin.conv, "mamba_conv_bias": lin.conv_bias, "time_step_limit": list(lin.dt_limit),
            # (unused beside mamba_d_ssm; kept as read)
            "mamba_expand": src.get("mamba_expand", 2), "mamba_chunk_size": src.get("mamba_chunk_size", 256),
            "mamba_rms_norm": lin.norm != "none", "mamba_norm_before_gate": lin.norm == "before_gate",
            "embedding_multiplier": cfg.embed_multiplier, "lm_head_multiplier": cfg.logits_multiplier,
            "key_multiplier": cfg.key_multiplier, "attention_in_multiplier": cfg.attn_in_multiplier,
            "attention_out_multiplier": cfg.attn_out_multiplier, "ssm_in_multiplier": lin.in_multiplier,
            "ssm_out_multiplier": lin.out_multiplier, "ssm_multipliers": list(lin.multipliers),
            "mlp_multipliers": list(cfg.mlp_multipliers)}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    """Bamba's layout (norms, ``feed_forward``, ``final_layernorm``) with both mixers in every layer."""
    out = layout_tensors(cfg)
    for seg, _, _, _ in segments(cfg):
        out += gqa_tensors(seg, cfg) + mamba_tensors(seg, cfg, "model.layers.{i}.mamba", module="mamba")
    return out
