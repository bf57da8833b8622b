"""Beam (``model_type`` beam): grouped-query attention with per-head q/k RMSNorm over sliding layers with rotary and
full layers without (by default every sixth layer full, and the last; ``rope_parameters`` by layer kind, a kind
given none rotating nowhere), whose queries are then scaled by their position as a scalable softmax does, times
(1 + (position + 1) / 2048) ** 0.1 (``TransformerConfig.nope_query_scale``). Every attention output is gated per
head dim by a sigmoid of its own projection of the layer's input plus a learned per-head bias (``gate_proj``,
``gate_bias``: ``attn_gate`` and ``gate_bias``). Both sub-layers are normed before and after (Gemma's four norms)
and join the residual stream by depth-scaled adds: the k-th add of the model (two per layer, from k = 2) weighs
the stream sqrt((k - 1) / k) and the sub-layer's output 1 / sqrt(k) (``depth_residual``). After the dense layers
of ``mlp_layer_types`` (by default the first three) the experts are DeepSeek-V3's: sigmoid scores plus the
selection bias, the best ``topk_group`` of ``n_group`` groups by their top two, renormalised, times
``routed_scaling_factor``, no shared expert; the final logits are soft-capped (``final_logit_softcapping``)."""

from __future__ import annotations

from ..config import MoEConfig, TransformerConfig
from ..transformer import segments
from .base import (
    ConfigError,
    Tensor,
    checked_layer_types,
    common_from_hf,
    common_to_hf,
    expert_tensors,
    gqa_tensors,
    mlp_tensors,
    need,
    outer_tensors,
    refuse,
    rope_from_hf,
    sandwich_tensors,
    unsupported_cfg,
    with_defaults,
)

NAME = "beam"
MODEL_TYPES = (NAME,)
ARCHITECTURE = "BeamForCausalLM"
WRITES = ("gate_bias", "depth_residual", "nope_query_scale")  # (hf_save.SWITCHES)

# the reference config's defaults for what a config.json may leave out (BeamConfig)
DEFAULTS = {"vocab_size": 151_936, "hidden_size": 5120, "intermediate_size": 20480, "num_hidden_layers": 52,
            "num_attention_heads": 48, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "sliding_window": 512, "moe_intermediate_size": 2560,
            "num_experts_per_tok": 8, "num_experts": 256, "norm_topk_prob": True, "n_group": 8, "topk_group": 4,
            "routed_scaling_factor": 2.5, "final_logit_softcapping": 30.0}
THETA = 10_000.0  # the sliding layers' rope base by default (the full layers': none)
NOPE_QUERY_SCALE = (0.1, 2048.0)  # the reference's scalable-softmax query scale of layers without rotary


def _layer_types(hf: dict, n: int) -> list[str]:
    """``layer_types``, or every sixth layer full and the last one too (the reference's default)."""
    types = hf.get("layer_types")
    if not types:
        types = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(n)]
        types[-1] = "full_attention"
    return checked_layer_types(types, n)


def _mlp_layers(hf: dict, n: int) -> tuple[int, tuple[int, ...]]:
    """(leading dense layers, dense layers after the first MoE one) from ``mlp_layer_types`` (by default the first
    three dense)."""
    types = hf.get("mlp_layer_types") or ["dense"] * min(3, n) + ["sparse"] * (n - min(3, n))
    if len(types) != n or any(t not in ("dense", "sparse") for t in types) or "sparse" not in types:
        raise ConfigError(f"config.json: mlp_layer_types must name 'dense' or 'sparse' for each of the {n} layers, "
                          "at least one sparse")
    first = types.index("sparse")
    return first, tuple(i for i in range(first, n) if types[i] == "dense")


def _rope(hf: dict, types: list[str]) -> dict:
    """The rope fields from ``rope_parameters`` by layer kind: a kind with none (by default the full layers) rotates
    nowhere and scales its queries by position instead."""
    params = hf.get("rope_parameters")
    if params is None:
        params = {"sliding_attention": {"rope_type": "default", "rope_theta": THETA}, "full_attention": None}
    if not isinstance(params, dict) or any(k not in params for k in set(types)) or any(
            params[k] is not None and not isinstance(params[k], dict) for k in set(types)):
        raise ConfigError("config.json: rope_parameters must hold an entry (its rope, or null: none) for each "
                          "attention kind of layer_types, as the reference reads them")
    out = {"rope_theta": THETA, "rope_scaling": None, "rope_local_theta": None}
    if params.get("full_attention"):
        out["rope_theta"], out["rope_scaling"] = rope_from_hf({"rope_parameters": params["full_attention"]})
    if params.get("sliding_attention"):
        local, scaling = rope_from_hf({"rope_parameters": params["sliding_attention"]})
        if scaling:
            raise ConfigError("config.json: rope_parameters.sliding_attention scaling is not supported")
        out["rope_local_theta"] = local
    nope = tuple(i for i, t in enumerate(types) if params.get(t) is None)
    return {**out, "nope_layers": nope, "nope_query_scale": NOPE_QUERY_SCALE if nope else None}


def from_hf(hf: dict) -> TransformerConfig:
    cap = hf["final_logit_softcapping"] if "final_logit_softcapping" in hf else DEFAULTS["final_logit_softcapping"]
    hf = with_defaults(hf, DEFAULTS)  # (which fills a null in; a null cap is none)
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    n = need(hf, "num_hidden_layers")
    types = _layer_types(hf, n)
    first, dense = _mlp_layers(hf, n)
    moe = MoEConfig(n_experts=need(hf, "num_experts"), top_k=need(hf, "num_experts_per_tok"),
                    ffn_dim=need(hf, "moe_intermediate_size"), score="sigmoid", norm_topk=bool(hf["norm_topk_prob"]),
                    scaling=float(hf["routed_scaling_factor"]), n_group=int(hf["n_group"] or 1),
                    topk_group=int(hf["topk_group"] or 1), score_bias=True, first_dense=first, dense_layers=dense)
    sliding = tuple("sliding" if t == "sliding_attention" else "full" for t in types)
    bias = bool(hf.get("attention_bias", False))
    common = common_from_hf(hf, NAME, qk_norm=True, qkv_bias=bias, out_bias=bias, attn_gate=True, gate_bias=True,
                            sandwich_norm=True, depth_residual=True, moe=moe,
                            final_softcap=cap or None,
                            sliding_window=int(hf["sliding_window"]) if "sliding" in sliding else 0,
                            layer_types=sliding if "sliding" in sliding else None, **_rope(hf, types))
    return TransformerConfig(**common)


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    moe_bad = m is None or m != MoEConfig(
        m.n_experts, m.top_k, m.ffn_dim, score="sigmoid", norm_topk=m.norm_topk, scaling=m.scaling, n_group=m.n_group,
        topk_group=m.topk_group, score_bias=True, first_dense=m.first_dense, dense_layers=m.dense_layers,
        aux_loss_coef=m.aux_loss_coef, impl=m.impl, capacity_factor=m.capacity_factor)
    kinds = {("sliding" if s else "full") for s in cfg.sliding_layers}
    nope_kinds = {("sliding" if cfg.sliding_layers[i] else "full") for i in cfg.nope_layers}
    mixed = any(("sliding" if cfg.sliding_layers[i] else "full") in nope_kinds and i not in cfg.nope_layers
                for i in range(cfg.n_layers))
    unsupported_cfg(cfg, NAME, moe=moe_bad, qkv_bias=cfg.qkv_bias != cfg.out_bias, qk_norm=not cfg.qk_norm,
                    qk_norm_whole=cfg.qk_norm_whole, mla=cfg.mla is not None, linear=cfg.linear is not None,
                    attn_gate=not cfg.attn_gate, head_gate=cfg.head_gate, gate_bias=not cfg.gate_bias,
                    sandwich_norm=not cfg.sandwich_norm, depth_residual=not cfg.depth_residual,
                    norm_offset=cfg.norm_offset != 0.0, attn_sinks=cfg.attn_sinks, embed_scale=cfg.embed_scale,
                    query_scale=cfg.query_scale is not None, rope_interleave=cfg.rope_interleave,
                    rope_dim=cfg.rope_dim > 0, attn_softcap=cfg.attn_softcap is not None,
                    nope_layers=mixed,  # (the reference's kinds rotate or not as a whole)
                    nope_query_scale=cfg.nope_query_scale != (NOPE_QUERY_SCALE if cfg.nope_layers else None))
    out = common_to_hf(cfg, NAME, ARCHITECTURE)
    for k in ("rope_theta", "rope_scaling"):
        out.pop(k)
    full = {"rope_type": "default", **(cfg.rope_scaling or {}), "rope_theta": cfg.rope_theta}
    local = {"rope_type": "default", "rope_theta": cfg.rope_local_theta or cfg.rope_theta}
    rope = {k: None if k in nope_kinds else v for k, v in (("full", full), ("sliding", local)) if k in kinds}
    out.update(attention_bias=cfg.qkv_bias, final_logit_softcapping=cfg.final_softcap,
               layer_types=["sliding_attention" if s else "full_attention" for s in cfg.sliding_layers],
               sliding_window=cfg.sliding_window or DEFAULTS["sliding_window"],
               rope_parameters={f"{k}_attention": v for k, v in rope.items()},
               mlp_layer_types=["sparse" if m.is_moe(i) else "dense" for i in range(cfg.n_layers)],
               num_experts=m.n_experts, num_experts_per_tok=m.top_k, moe_intermediate_size=m.ffn_dim,
               norm_topk_prob=m.norm_topk, routed_scaling_factor=m.scaling, n_group=m.n_group,
               topk_group=m.topk_group, pad_token_id=None, bos_token_id=None,
               eos_token_id=None)  # (not Beam's vocabulary's ids)
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = outer_tensors(cfg)
    pre = "model.layers.{i}"
    for s, _, _, moe in segments(cfg):
        out += sandwich_tensors(s) + gqa_tensors(s, cfg, f"{pre}.self_attn")
        out += [Tensor((s, "attn", "q_gate"), f"{pre}.self_attn.gate_proj.weight", "t1"),
                Tensor((s, "attn", "gate_bias"), f"{pre}.self_attn.gate_bias")]
        if moe:
            out += expert_tensors(s, f"{pre}.mlp")
            out.append(Tensor((s, "mlp", "score_bias"), f"{pre}.mlp.gate.e_score_correction_bias"))
        else:
            out += mlp_tensors((s, "mlp"), f"{pre}.mlp")
    return out
