"""Poolside Laguna (``model_type`` laguna): grouped-query attention with per-head q/k RMSNorm, sliding and full layers
(``layer_types``; by default every layer full) with rope parameters of each kind (by default the full layers rotate
the leading half of each head at base 500,000, the sliding ones whole heads at base 10,000), and every attention
output gated by a softplus of its own projection of the layer's input (``g_proj``): one scalar per head with
``gating`` true or "per-head" (``TransformerConfig.head_gate``), one per head dim otherwise (``attn_gate``), both
softplus (``gate_act``). A layer may have a query-head count of its own (``num_attention_heads_per_layer``): one
count for the full layers and one for the sliding ones are supported (``full_heads``; such full layers, like full
layers rotating other dims than the sliding ones, ``full_rope_dim``, stack apart). Its MoE layers
(``mlp_layer_types``; by default all but the first) route by sigmoid scores of router logits soft-capped at
``moe_router_logit_softcapping`` (``MoEConfig.router_softcap``), chosen with the per-expert selection bias,
renormalised and times ``moe_routed_scaling_factor``, beside an ungated shared expert of
``shared_expert_intermediate_size``. ``moe_apply_router_weight_on_input`` (which the reference does not run) is
refused. transformers saves the experts one tensor each, the selection bias under ``mlp.experts`` and the shared
expert as ``mlp.shared_expert``, which is what is read and written here (the fused layout is accepted on load)."""

from __future__ import annotations

from ..config import MoEConfig, TransformerConfig
from ..transformer import segments
from .base import (
    ATTENTION_KINDS,
    ConfigError,
    Tensor,
    checked_layer_types,
    common_from_hf,
    common_to_hf,
    expert_tensors,
    llama_like,
    mlp_layer_types_from_hf,
    mlp_layer_types_to_hf,
    mlp_tensors,
    need,
    refuse,
    rope_by_kind,
    rope_from_hf,
    rotary_dims,
    unsupported_cfg,
    with_defaults,
)

NAME = "laguna"
MODEL_TYPES = (NAME,)
ARCHITECTURE = "LagunaForCausalLM"
WRITES = ("head_gate", "gate_act", "full_heads", "full_rope_dim", "moe.router_softcap")  # (hf_save.SWITCHES)

# the reference config's defaults for what a config.json may leave out (LagunaConfig)
DEFAULTS = {"vocab_size": 100_352, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 40,
            "num_attention_heads": 48, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 131_072,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "sliding_window": 512, "moe_intermediate_size": 512,
            "shared_expert_intermediate_size": 512, "num_experts_per_tok": 8, "num_experts": 256,
            "router_aux_loss_coef": 0.001, "gating": True, "moe_routed_scaling_factor": 1.0,
            "moe_router_logit_softcapping": 0.0}
ROPE = {"full_attention": {"rope_type": "default", "rope_theta": 500_000.0, "partial_rotary_factor": 0.5},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 1.0}}


def _layer_types(hf: dict, n: int) -> list[str]:
    return checked_layer_types(hf.get("layer_types") or ["full_attention"] * n, n)


def _heads(hf: dict, types: list[str]) -> tuple[int, int]:
    """(the sliding layers' query heads, the full layers') from ``num_attention_heads_per_layer``."""
    n = len(types)
    per = hf.get("num_attention_heads_per_layer") or [need(hf, "num_attention_heads")] * n
    if not isinstance(per, list) or len(per) != n or any(not isinstance(h, int) or h <= 0 for h in per):
        raise ConfigError(f"config.json: num_attention_heads_per_layer must give a positive head count for each of "
                          f"the {n} layers")
    by_kind = {k: {h for h, t in zip(per, types) if t == k} for k in ATTENTION_KINDS}
    if any(len(v) > 1 for v in by_kind.values()):
        raise ConfigError(f"config.json: num_attention_heads_per_layer={per} is not supported (one head count for the "
                          "full layers and one for the sliding ones)")
    full = next(iter(by_kind["full_attention"]), None)
    sliding = next(iter(by_kind["sliding_attention"]), full)
    return sliding, full or sliding


def _rope(hf: dict, types: list[str], head_dim: int) -> dict:
    """The rope fields: each kind's theta, scaling (the full layers') and rotary dims from ``rope_parameters`` by
    layer kind (the reference's defaults where the file gives none)."""
    params = rope_by_kind(hf, types, ROPE)
    full = params.get("full_attention") or ROPE["full_attention"]  # (a given entry read as is, as the reference does)
    theta, scaling = rope_from_hf({"rope_parameters": full})
    full_dims = rotary_dims({"rope_parameters": full}, head_dim) or head_dim
    if "sliding_attention" not in types:
        return {"rope_theta": theta, "rope_scaling": scaling, "rope_dim": 0 if full_dims == head_dim else full_dims}
    local = params["sliding_attention"]
    local_theta, local_scaling = rope_from_hf({"rope_parameters": local})
    if local_scaling:
        raise ConfigError("config.json: rope_parameters.sliding_attention scaling is not supported")
    dims = rotary_dims({"rope_parameters": local}, head_dim) or head_dim
    return {"rope_theta": theta, "rope_scaling": scaling, "rope_local_theta": local_theta,
            "rope_dim": 0 if dims == head_dim else dims,
            "full_rope_dim": 0 if full_dims == dims or "full_attention" not in types else full_dims}


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(hf, DEFAULTS)
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    refuse(hf, "moe_apply_router_weight_on_input", lambda v: not v,
           "router weights on the experts' input, which the reference does not run")
    n = need(hf, "num_hidden_layers")
    types = _layer_types(hf, n)
    heads, full_heads = _heads(hf, types)
    first, dense = mlp_layer_types_from_hf(hf)
    shared = int(hf["shared_expert_intermediate_size"] or 0)
    moe = MoEConfig(n_experts=need(hf, "num_experts"), top_k=need(hf, "num_experts_per_tok"),
                    ffn_dim=need(hf, "moe_intermediate_size"), score="sigmoid", norm_topk=True,
                    scaling=float(hf["moe_routed_scaling_factor"]), score_bias=True, first_dense=first,
                    dense_layers=dense, n_shared=1 if shared else 0, shared_ffn=shared,
                    aux_loss_coef=float(hf["router_aux_loss_coef"]),
                    router_softcap=float(hf["moe_router_logit_softcapping"] or 0.0))
    sliding = tuple("sliding" if t == "sliding_attention" else "full" for t in types)
    per_head = hf["gating"] is True or hf["gating"] == "per-head"
    bias = bool(hf.get("attention_bias", False))
    common = common_from_hf(hf, NAME, qk_norm=True, qkv_bias=bias, out_bias=bias, moe=moe, head_gate=per_head,
                            attn_gate=not per_head, gate_act="softplus", n_heads=heads,
                            full_heads=0 if full_heads == heads else full_heads,
                            sliding_window=int(hf["sliding_window"]) if "sliding" in sliding else 0,
                            layer_types=sliding if "sliding" in sliding else None,
                            **_rope(hf, types, hf["head_dim"]))
    return TransformerConfig(**common)


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    moe_bad = m is None or (m != MoEConfig(
        m.n_experts, m.top_k, m.ffn_dim, score="sigmoid", norm_topk=True, scaling=m.scaling, score_bias=True,
        first_dense=m.first_dense, dense_layers=m.dense_layers, n_shared=m.n_shared, shared_ffn=m.shared_ffn,
        aux_loss_coef=m.aux_loss_coef, router_softcap=m.router_softcap, impl=m.impl,
        capacity_factor=m.capacity_factor)) or m.n_shared > 1 or (m.n_shared == 1 and not m.shared_ffn)
    unsupported_cfg(cfg, NAME, moe=moe_bad, qkv_bias=cfg.qkv_bias != cfg.out_bias, qk_norm=not cfg.qk_norm,
                    qk_norm_whole=cfg.qk_norm_whole, mla=cfg.mla is not None, linear=cfg.linear is not None,
                    attn_gate=cfg.attn_gate == cfg.head_gate, gate_act=cfg.gate_act != "softplus",
                    norm_offset=cfg.norm_offset != 0.0, sandwich_norm=cfg.sandwich_norm,
                    attn_sinks=cfg.attn_sinks, nope_layers=bool(cfg.nope_layers), embed_scale=cfg.embed_scale,
                    query_scale=cfg.query_scale is not None, rope_interleave=cfg.rope_interleave)
    full_heads = cfg.full_heads or cfg.n_heads
    out = common_to_hf(cfg, NAME, ARCHITECTURE)
    for k in ("rope_theta", "rope_scaling"):
        out.pop(k)
    dims = cfg.rope_dim or cfg.head_dim
    full_dims = cfg.full_rope_dim or dims
    full = {"rope_type": "default", **(cfg.rope_scaling or {}), "rope_theta": cfg.rope_theta,
            "partial_rotary_factor": full_dims / cfg.head_dim}
    local = {"rope_type": "default", "rope_theta": cfg.rope_local_theta or cfg.rope_theta,
             "partial_rotary_factor": dims / cfg.head_dim}
    out.update(attention_bias=cfg.qkv_bias, gating="per-head" if cfg.head_gate else "per-element",
               layer_types=["sliding_attention" if s else "full_attention" for s in cfg.sliding_layers],
               sliding_window=cfg.sliding_window or DEFAULTS["sliding_window"],
               num_attention_heads_per_layer=[cfg.n_heads if s else full_heads for s in cfg.sliding_layers],
               rope_parameters={"full_attention": full, "sliding_attention": local},
               mlp_layer_types=mlp_layer_types_to_hf(cfg), num_experts=m.n_experts, num_experts_per_tok=m.top_k,
               moe_intermediate_size=m.ffn_dim, shared_expert_intermediate_size=m.shared_ffn if m.n_shared else 0,
               moe_routed_scaling_factor=m.scaling, moe_router_logit_softcapping=m.router_softcap,
               moe_apply_router_weight_on_input=False, router_aux_loss_coef=m.aux_loss_coef,
               pad_token_id=None, bos_token_id=None, eos_token_id=None)  # (not Laguna's vocabulary's ids)
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    out = llama_like(cfg, segs)
    pre = "model.layers.{i}.mlp"
    for s, _, _, moe in segs:
        out.append(Tensor((s, "attn", "h_gate" if cfg.head_gate else "q_gate"),
                          "model.layers.{i}.self_attn.g_proj.weight", "t1"))
        if moe:
            out += expert_tensors(s, pre)
            out.append(Tensor((s, "mlp", "score_bias"), f"{pre}.experts.e_score_correction_bias"))
            if cfg.moe.n_shared:
                out += mlp_tensors((s, "mlp", "shared"), f"{pre}.shared_expert")
    return out
