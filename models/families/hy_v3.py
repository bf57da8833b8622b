"""Hy3 (``model_type`` hy_v3: Tencent's Hy3-preview, the third Hunyuan generation, a fast/slow-thinking
reasoning MoE): Qwen3's attention (per-head q/k RMSNorms before the rotary, optional biases on all four
projections) over MoE layers routed as DeepSeek-V3 routes without groups (sigmoid scores chosen with the
per-expert selection bias, renormalised, scaled by ``router_scaling_factor``) beside shared experts
``num_shared_experts`` x ``moe_intermediate_size`` wide; which layers are dense is ``mlp_layer_types`` (the
first by default). The released names are kept as transformers writes them: ``mlp.router.gate``,
``mlp.expert_bias``, ``mlp.shared_mlp``, one tensor per expert (the fused layout loads too); the
multi-token-prediction layer stored after the last one is not used.

``enable_moe_fp32_combine`` (the shared and routed outputs summed in float32, then rounded) needs no switch
here: the sum of two bfloat16 values is rounded once whichever width it is carried in."""

from __future__ import annotations

from ..config import MoEConfig, TransformerConfig
from ..transformer import segments
from . import deepseek_v3
from .base import (
    ConfigError,
    Tensor,
    common_from_hf,
    common_to_hf,
    expert_tensors,
    llama_like,
    mlp_layer_types_from_hf,
    mlp_layer_types_to_hf,
    mlp_tensors,
    refuse,
    unsupported_cfg,
    whole_heads,
    with_defaults,
)

NAME = "hy_v3"
MODEL_TYPES = ("hy_v3",)
ARCHITECTURE = "HYV3ForCausalLM"
DEFAULT_THETA = 11_158_840.0  # the reference's rope base when config.json names none
ignored = deepseek_v3.ignored
PREFIX = "model.layers.{i}.mlp"

# The reference config's defaults for the fields a released config.json may leave out (HYV3Config).
DEFAULTS = {"num_experts": 192, "num_experts_per_tok": 8, "num_shared_experts": 1, "moe_intermediate_size": 1536,
            "router_scaling_factor": 2.826, "rms_norm_eps": 1e-5, "head_dim": 128}


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(hf, DEFAULTS, DEFAULT_THETA)
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    refuse(hf, "mlp_bias", lambda v: not v, "MLP projections without biases")
    shared = hf["num_shared_experts"]
    if not isinstance(shared, int) or shared < 0:
        raise ConfigError(f"config.json: num_shared_experts={shared!r} is not a non-negative integer")
    first, later = mlp_layer_types_from_hf(hf)
    moe = MoEConfig(n_experts=hf["num_experts"], top_k=hf["num_experts_per_tok"], ffn_dim=hf["moe_intermediate_size"],
                    n_shared=shared,
                    # the reference sizes its shared MLP ``moe_intermediate_size * num_shared_experts or
                    # intermediate_size``: with no shared experts it still builds one, of the dense width
                    shared_ffn=0 if shared else hf["intermediate_size"],
                    first_dense=first, dense_layers=later, score="sigmoid", norm_topk=True,
                    scaling=float(hf["router_scaling_factor"]), score_bias=True, aux_loss_coef=0.0)
    whole_heads(hf, hf["head_dim"])
    bias = bool(hf.get("attention_bias", False))
    return TransformerConfig(**common_from_hf(hf, NAME, qk_norm=True, qkv_bias=bias, out_bias=bias, moe=moe))


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    # the shared MLP is num_shared_experts experts wide, or (none) the dense width: always present
    shared_ok = m is not None and ((m.n_shared > 0 and m.shared_ffn == 0) or (m.n_shared == 0
                                                                              and m.shared_ffn == cfg.ffn_dim))
    unsupported_cfg(cfg, NAME, qk_norm=not cfg.qk_norm, qk_norm_whole=cfg.qk_norm_whole,
                    qkv_bias=cfg.qkv_bias != cfg.out_bias, mla=cfg.mla is not None,
                    sliding_window=cfg.sliding_window > 0, rope_dim=bool(cfg.rope_dim and cfg.rope_dim != cfg.head_dim),
                    moe=not shared_ok or m.score != "sigmoid" or not m.score_bias or not m.norm_topk or m.n_group > 1
                    or m.shared_gate or m.router_bias or m.expert_bias)
    return {**common_to_hf(cfg, NAME, ARCHITECTURE), "attention_bias": cfg.qkv_bias, "mlp_bias": False,
            "num_experts": m.n_experts, "num_experts_per_tok": m.top_k, "moe_intermediate_size": m.ffn_dim,
            "num_shared_experts": m.n_shared, "router_scaling_factor": m.scaling, "enable_moe_fp32_combine": True,
            "mlp_layer_types": mlp_layer_types_to_hf(cfg)}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    out = llama_like(cfg, segs)
    for seg, _, _, moe in segs:
        if moe:
            out += expert_tensors(seg, PREFIX, router="router.gate")
            out.append(Tensor((seg, "mlp", "score_bias"), f"{PREFIX}.expert_bias"))
            out += mlp_tensors((seg, "mlp", "shared"), f"{PREFIX}.shared_mlp")
    return out
