"""Mellum (``model_type`` mellum: JetBrains' Mellum2 MoE code models): Qwen3-MoE's layers (per-head q/k
RMSNorms before the rotary, softmax top-k routing renormalised by ``norm_topk_prob``, a Switch-style balancing
loss) with sliding-window and full layers by ``layer_types`` (all full by default), each kind rotating with a
rope base of its own from ``rope_parameters`` nested by layer kind (500000 full, 10000 sliding by default; a
scaling on the full layers only, unless the sliding kind's entry is the same), optional biases on all four
attention projections, and dense MLPs of ``intermediate_size`` where ``mlp_layer_types`` says "dense" (none by
default). The multi-token-prediction layer (``mtp.*``) is not loaded, as the reference skips it."""

from __future__ import annotations

from ..config import MoEConfig, TransformerConfig
from ..transformer import segments
from . import qwen3_moe
from .base import (
    ConfigError,
    Tensor,
    common_from_hf,
    common_to_hf,
    expert_tensors,
    llama_like,
    mlp_layer_types_from_hf,
    mlp_layer_types_to_hf,
    need,
    refuse,
    rope_from_hf,
    rotary_dims,
    unsupported_cfg,
    window_from_hf,
    with_defaults,
)

NAME = "mellum"
MODEL_TYPES = ("mellum",)
ARCHITECTURE = "MellumForCausalLM"
KINDS = ("full_attention", "sliding_attention")

# the reference config's defaults for what a config.json may leave out (MellumConfig; its expert count,
# ``num_experts`` or ``num_local_experts``, is 64)
DEFAULTS = {"intermediate_size": 7168, "num_key_value_heads": 4, "head_dim": 128,
            "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
            "attention_bias": False, "sliding_window": 1024, "moe_intermediate_size": 896,
            "num_experts_per_tok": 8, "norm_topk_prob": True, "router_aux_loss_coef": 0.001,
            "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 500000.0},
                                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}


def ignored(name: str, cfg: TransformerConfig) -> bool:
    """The multi-token-prediction layer, stored beside the model (``mtp.*``), as the reference skips it."""
    return name.startswith("mtp.")


def _rope(hf: dict, types: list[str], head_dim: int) -> tuple[float, dict | None, float | None]:
    """(full layers' base, their scaling, sliding layers' base or None where they rotate as the full
    ones) from ``rope_parameters`` nested by layer kind (the reference reads the entry of every kind its
    layers use)."""
    params = hf["rope_parameters"]
    if not isinstance(params, dict) or not set(params) <= set(KINDS):
        raise ConfigError("config.json: rope_parameters must be nested by layer kind ('full_attention', "
                          "'sliding_attention'), as the reference reads it")
    for kind in set(types):
        if not isinstance(params.get(kind), dict):
            raise ConfigError(f"config.json: rope_parameters.{kind} is required by the {kind} layers")
    per = {}
    for kind in KINDS:
        p = params.get(kind) if isinstance(params.get(kind), dict) else DEFAULTS["rope_parameters"][kind]
        if rotary_dims({"rope_parameters": p}, head_dim):
            raise ConfigError(f"config.json: rope_parameters.{kind}.partial_rotary_factor is not supported "
                              "(the reference rotates whole heads)")
        per[kind] = rope_from_hf({"max_position_embeddings": hf["max_position_embeddings"],
                                  "rope_parameters": p})
    (theta, scaling), (local, local_scaling) = per["full_attention"], per["sliding_attention"]
    if "sliding_attention" not in types or (local, local_scaling) == (theta, scaling):
        return theta, scaling, None  # (no sliding layer, or they rotate as the full ones)
    if local_scaling:
        raise ConfigError("config.json: rope_parameters.sliding_attention scaling is not supported (unless "
                          "the same as the full layers')")
    return theta, scaling, local


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(hf, DEFAULTS)
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    n = need(hf, "num_hidden_layers")
    types = hf.get("layer_types") or ["full_attention"] * n
    if not isinstance(types, list) or len(types) != n or any(t not in KINDS for t in types):
        raise ConfigError(f"config.json: layer_types must name 'full_attention' or 'sliding_attention' for "
                          f"each of the {n} layers")
    hf = {**hf, "layer_types": types, "mlp_layer_types": hf.get("mlp_layer_types") or ["sparse"] * n}
    first, later = mlp_layer_types_from_hf(hf)
    theta, scaling, local = _rope(hf, types, hf["head_dim"])
    moe = MoEConfig(n_experts=hf.get("num_local_experts") or hf.get("num_experts") or 64,
                    top_k=hf["num_experts_per_tok"], ffn_dim=hf["moe_intermediate_size"], score="softmax",
                    norm_topk=bool(hf["norm_topk_prob"]), aux_loss_coef=float(hf["router_aux_loss_coef"]),
                    first_dense=first, dense_layers=later)
    bias = bool(hf["attention_bias"])
    common = common_from_hf(hf, NAME, qk_norm=True, qkv_bias=bias, out_bias=bias, moe=moe,
                            rope_local_theta=local, **window_from_hf(hf))
    return TransformerConfig(**{**common, "rope_theta": theta, "rope_scaling": scaling})


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    unsupported_cfg(cfg, NAME, qk_norm=not cfg.qk_norm, qk_norm_whole=cfg.qk_norm_whole,
                    qkv_bias=cfg.qkv_bias != cfg.out_bias, mla=cfg.mla is not None, rope_dim=cfg.rope_dim > 0,
                    nope_layers=bool(cfg.nope_layers),
                    moe=qwen3_moe.moe_unsupported(m) or m.n_shared > 0 or m.shared_ffn > 0)
    full = {"rope_type": "default", **(cfg.rope_scaling or {}), "rope_theta": cfg.rope_theta}
    local = (full if cfg.rope_local_theta is None
             else {"rope_type": "default", "rope_theta": cfg.rope_local_theta})
    out = common_to_hf(cfg, NAME, ARCHITECTURE)
    del out["rope_theta"], out["rope_scaling"]
    out.update(attention_bias=cfg.qkv_bias, num_local_experts=m.n_experts, num_experts_per_tok=m.top_k,
               moe_intermediate_size=m.ffn_dim, norm_topk_prob=m.norm_topk,
               router_aux_loss_coef=m.aux_loss_coef,
               mlp_layer_types=mlp_layer_types_to_hf(cfg),
               sliding_window=cfg.sliding_window or DEFAULTS["sliding_window"],  # (no layer slides without)
               layer_types=["sliding_attention" if s else "full_attention" for s in cfg.sliding_layers],
               rope_parameters={"full_attention": full, "sliding_attention": dict(local)})
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    experts = [t for seg, _, _, moe in segs if moe for t in expert_tensors(seg, "model.layers.{i}.mlp")]
    return llama_like(cfg, segs) + experts
