"""Trinity (``model_type`` afmoe: Arcee's Trinity Mini / Large): grouped-query attention with per-head q/k
RMSNorms and an output gate (``sigmoid(x W_gate)`` per head dim before the o-projection), rotary embedding in the
sliding-window layers only (every ``global_attn_every_n_layers``-th layer full and without it), norms before and
after attention and MLP; after ``num_dense_layers`` dense layers, MoE layers routed by sigmoid scores chosen with
the per-expert selection bias (``expert_bias``), renormalised and scaled by ``route_scale``, beside
``num_shared_experts`` shared experts; with ``mup_enabled`` the embeddings times sqrt(hidden_size)."""

from __future__ import annotations

from ..config import MoEConfig, TransformerConfig
from ..transformer import segments
from .base import (
    ConfigError,
    Tensor,
    checked_layer_types,
    common_from_hf,
    common_to_hf,
    every_nth_full,
    expert_tensors,
    gqa_tensors,
    mlp_tensors,
    need,
    outer_tensors,
    refuse,
    sandwich_tensors,
    unsupported_cfg,
    whole_heads,
    with_defaults,
)

NAME = "afmoe"
MODEL_TYPES = ("afmoe",)
ARCHITECTURE = "AfmoeForCausalLM"
PREFIX = "model.layers.{i}.mlp"

# the reference config's defaults for what a config.json may leave out (AfmoeConfig)
DEFAULTS = {"head_dim": 128, "num_dense_layers": 1, "num_experts": 64, "num_experts_per_tok": 6,
            "num_shared_experts": 2, "moe_intermediate_size": 1408, "route_scale": 1.0,
            "global_attn_every_n_layers": 4, "sliding_window": 1024, "rms_norm_eps": 1e-5}


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(hf, DEFAULTS)
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    refuse(hf, "attention_bias", lambda v: not v, "attention biases")
    n = need(hf, "num_hidden_layers")
    whole_heads(hf, hf["head_dim"])
    types = checked_layer_types(hf.get("layer_types") or every_nth_full(n, hf["global_attn_every_n_layers"]), n)
    first = hf["num_dense_layers"]
    if not isinstance(first, int) or not 0 <= first < n:
        raise ConfigError(f"config.json: num_dense_layers={first!r} leaves no MoE layer of the {n}")
    moe = MoEConfig(n_experts=hf["num_experts"], top_k=hf["num_experts_per_tok"], ffn_dim=hf["moe_intermediate_size"],
                    n_shared=hf["num_shared_experts"], first_dense=first, score="sigmoid", norm_topk=True,
                    scaling=float(hf["route_scale"]), score_bias=True, aux_loss_coef=0.0)
    sliding = tuple(t == "sliding_attention" for t in types)
    return TransformerConfig(**common_from_hf(
        hf, NAME, qk_norm=True, attn_gate=True, sandwich_norm=True, moe=moe,
        embed_multiplier=hf["hidden_size"] ** 0.5 if hf.get("mup_enabled") else 1.0,
        sliding_window=int(hf["sliding_window"]) if any(sliding) else 0,
        layer_types=tuple("sliding" if s else "full" for s in sliding),
        nope_layers=tuple(i for i, s in enumerate(sliding) if not s)))


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    sliding = cfg.sliding_layers
    mup = cfg.embed_multiplier != 1.0
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias, qk_norm=not cfg.qk_norm,
                    qk_norm_whole=cfg.qk_norm_whole, attn_gate=not cfg.attn_gate, sandwich_norm=not cfg.sandwich_norm,
                    mla=cfg.mla is not None, rope_dim=cfg.rope_dim > 0,
                    embed_multiplier=mup and cfg.embed_multiplier != cfg.d_model ** 0.5,
                    nope_layers=cfg.nope_layers != tuple(i for i, s in enumerate(sliding) if not s),
                    moe=m is None or m.score != "sigmoid" or not m.score_bias or not m.norm_topk or m.n_group > 1
                    or m.dense_layers != () or m.shared_ffn > 0 or m.shared_gate or m.router_bias or m.expert_bias)
    return {**common_to_hf(cfg, NAME, ARCHITECTURE), "num_dense_layers": m.first_dense, "num_experts": m.n_experts,
            "num_experts_per_tok": m.top_k, "num_shared_experts": m.n_shared, "moe_intermediate_size": m.ffn_dim,
            "route_scale": m.scaling, "mup_enabled": mup, "attention_bias": False,
            "sliding_window": cfg.sliding_window or DEFAULTS["sliding_window"],
            "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding]}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = outer_tensors(cfg)
    pre = "model.layers.{i}"
    for seg, _, _, moe in segments(cfg):
        out += sandwich_tensors(seg, ("pre_mlp_layernorm", "post_mlp_layernorm"))
        out.append(Tensor((seg, "attn", "q_gate"), f"{pre}.self_attn.gate_proj.weight", "t1"))
        out += gqa_tensors(seg, cfg)
        if not moe:
            out += mlp_tensors((seg, "mlp"), PREFIX)
            continue
        out += expert_tensors(seg, PREFIX, router="router.gate")
        out.append(Tensor((seg, "mlp", "score_bias"), f"{PREFIX}.expert_bias"))
        if cfg.moe.n_shared:
            out += mlp_tensors((seg, "mlp", "shared"), f"{PREFIX}.shared_experts")
    return out
