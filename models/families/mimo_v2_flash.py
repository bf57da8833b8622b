"""MiMo-V2-Flash (``model_type`` mimo_v2_flash: Xiaomi's 309B-A15B reasoning model): grouped-query attention in
two kinds of layer, full and sliding-window (by ``layer_types``: the first layer and every sixth full by
default). The sliding layers have twice the key/value heads and a learned sink logit per head in every softmax;
the full ones neither (``TransformerConfig.full_kv_heads``, ``full_sinks``: they stack apart). Keys are 192
wide and values 128 (``v_head_dim``), the values scaled by ``attention_value_scale`` before the cache; the
leading third of each head rotates (``partial_rotary_factor`` 0.334), with a rope base of each layer kind's own.
MLPs: the first layer dense, then DeepSeek-V3's routing (sigmoid scores, optional grouped top-k, the selection
bias) without shared experts.

Both config layouts load: transformers 5's (``layer_types``, ``mlp_layer_types``, ``rope_parameters`` per
layer kind, ``sliding_window``) and the released one (``hybrid_layer_pattern`` 0 full / 1 sliding,
``moe_layer_freq``, ``swa_*`` fields, ``sliding_window_size`` keys before the query, sink switches per kind,
``layernorm_epsilon``). The multi-token-prediction module (``model.mtp.*``) is not loaded."""

from __future__ import annotations

import dataclasses

from ..config import TransformerConfig
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
    need,
    refuse,
    rope_from_hf,
    rotary_dims,
    unsupported_cfg,
    with_defaults,
)

NAME = "mimo_v2_flash"
MODEL_TYPES = ("mimo_v2_flash",)
ARCHITECTURE = "MiMoV2FlashForCausalLM"
WRITES = ("full_kv_heads", "full_sinks", "v_head_dim", "value_scale")  # (hf_save.SWITCHES)
PREFIX = "model.layers.{i}.mlp"

# the reference config's defaults for what a config.json may leave out (MiMoV2FlashConfig)
DEFAULTS = {"head_dim": 192, "v_head_dim": 128, "sliding_window": 129, "attention_value_scale": 0.707,
            "n_group": 1, "topk_group": 1, "routed_scaling_factor": 1.0}
THETAS = {"full_attention": 5_000_000.0, "sliding_attention": 10_000.0}
PARTIAL = 0.334


def ignored(name: str, cfg: TransformerConfig) -> bool:
    """The multi-token-prediction module (``model.mtp.*``), as the reference skips it."""
    return name.startswith("model.mtp.")


def _binary_list(hf: dict, key: str, n: int) -> list[int]:
    v = hf[key]
    if not isinstance(v, list) or len(v) != n or any(x not in (0, 1) for x in v):
        raise ConfigError(f"config.json: {key} must give 0 or 1 for each of the {n} layers")
    return v


def _layer_types(hf: dict, n: int) -> list[str]:
    if hf.get("layer_types"):
        types = hf["layer_types"]
        if len(types) != n or any(t not in ("full_attention", "sliding_attention") for t in types):
            raise ConfigError(f"config.json: layer_types must name 'full_attention' or 'sliding_attention' for each "
                              f"of the {n} layers")
        return list(types)
    if hf.get("hybrid_layer_pattern"):  # released: 1 sliding, 0 full
        return ["sliding_attention" if p else "full_attention" for p in _binary_list(hf, "hybrid_layer_pattern", n)]
    return ["full_attention" if i == 0 or (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]


def _rope(hf: dict, head_dim: int) -> tuple[float, float, int]:
    """(full layers' rope base, sliding layers' base, rotary dims) from either layout."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and set(params) & set(THETAS):
        per = {k: {"rope_type": "default", "rope_theta": THETAS[k], "partial_rotary_factor": PARTIAL,
                   **(params.get(k) or {})} for k in THETAS}
        dims = {k: rotary_dims({"rope_parameters": per[k]}, head_dim) for k in THETAS}
        if dims["full_attention"] != dims["sliding_attention"]:
            raise ConfigError("config.json: rope_parameters gives the full and sliding layers different "
                              "partial_rotary_factor values (one rotary width for both is supported)")
        thetas = {}
        for k in THETAS:
            thetas[k], scaling = rope_from_hf({"rope_parameters": per[k]})
            if scaling:
                raise ConfigError(f"config.json: rope_parameters.{k} scaling is not supported (default rope only)")
        return thetas["full_attention"], thetas["sliding_attention"], dims["full_attention"]
    # the released layout: rope_theta (full layers), swa_rope_theta, a top-level partial_rotary_factor
    theta, scaling = rope_from_hf({"rope_theta": THETAS["full_attention"], **hf})
    if scaling:
        raise ConfigError("config.json: rope scaling is not supported (default rope only)")
    dims = rotary_dims({"partial_rotary_factor": hf.get("partial_rotary_factor", PARTIAL)}, head_dim)
    return theta, float(hf.get("swa_rope_theta", THETAS["sliding_attention"])), dims


def from_hf(hf: dict) -> TransformerConfig:
    # the released configs name the norms' epsilon layernorm_epsilon; transformers' rms_norm_eps (1e-5 unless set)
    eps = hf.get("rms_norm_eps") or hf.get("layernorm_epsilon") or 1e-5
    hf = with_defaults(hf, DEFAULTS)
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    n = need(hf, "num_hidden_layers")
    heads, full_kv, head_dim = need(hf, "num_attention_heads"), need(hf, "num_key_value_heads"), hf["head_dim"]
    # the released config's sliding-layer fields, where they are given, must be what the format builds
    swa = {"swa_num_attention_heads": heads, "swa_head_dim": head_dim, "swa_v_head_dim": hf["v_head_dim"]}
    for key, want in swa.items():
        refuse(hf, key, lambda v, want=want: v == want, f"the full layers' {want}: the reference builds both kinds so")
    kv = hf.get("swa_num_key_value_heads") or 2 * full_kv  # the reference: twice the full layers' heads
    if heads % kv or heads % full_kv:
        raise ConfigError(f"config.json: key/value heads ({full_kv} full, {kv} sliding) must divide the {heads} "
                          "attention heads")
    sinks_swa, sinks_full = bool(hf.get("add_swa_attention_sink_bias", True)), bool(
        hf.get("add_full_attention_sink_bias", False))
    if sinks_full and not sinks_swa:
        raise ConfigError("config.json: add_full_attention_sink_bias without add_swa_attention_sink_bias is not "
                          "supported (sinks on the sliding layers, or on both)")
    window = hf["sliding_window_size"] + 1 if hf.get("sliding_window_size") else hf["sliding_window"]
    types = _layer_types(hf, n)
    theta, local_theta, rope_dim = _rope(hf, head_dim)
    mlp = hf.get("mlp_layer_types")
    if not mlp and hf.get("moe_layer_freq") is not None:  # released: 1 routed, 0 dense, per layer
        mlp = ["sparse" if f else "dense" for f in _binary_list(hf, "moe_layer_freq", n)]
    first, later = mlp_layer_types_from_hf({**hf, "mlp_layer_types": mlp})
    moe = deepseek_v3.moe_from_hf({**hf, "n_shared_experts": 0, "first_k_dense_replace": first})
    common = common_from_hf({**hf, "rms_norm_eps": eps, "num_key_value_heads": kv}, NAME,
                            qkv_bias=bool(hf.get("attention_bias", False)),
                            moe=dataclasses.replace(moe, dense_layers=later))
    return TransformerConfig(**{**common, "rope_theta": theta, "rope_scaling": None}, rope_local_theta=local_theta,
                             rope_dim=rope_dim, sliding_window=int(window),
                             layer_types=tuple("sliding" if t == "sliding_attention" else "full" for t in types),
                             full_kv_heads=full_kv, attn_sinks=sinks_swa, full_sinks=sinks_full,
                             v_head_dim=hf["v_head_dim"], value_scale=float(hf["attention_value_scale"]))


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    full_kv = cfg.full_kv_heads or cfg.n_kv_heads
    unsupported_cfg(cfg, NAME, qk_norm=cfg.qk_norm, out_bias=cfg.out_bias, mla=cfg.mla is not None,
                    n_kv_heads=cfg.n_kv_heads != 2 * full_kv, attn_sinks=not cfg.attn_sinks,
                    full_sinks=cfg.full_sinks, sliding_window=not any(cfg.sliding_layers),
                    rope_scaling=cfg.rope_scaling is not None, nope_layers=bool(cfg.nope_layers),
                    moe=m is None or deepseek_v3.moe_unsupported(dataclasses.replace(m, dense_layers=()))
                    or m.n_shared > 0)
    rot = (cfg.rope_dim or cfg.head_dim) / cfg.head_dim
    if int(cfg.head_dim * rot) != (cfg.rope_dim or cfg.head_dim):
        raise ConfigError(f"TransformerConfig.rope_dim={cfg.rope_dim} is not a fraction of head_dim "
                          f"{cfg.head_dim} the format can state")
    out = common_to_hf(cfg, NAME, ARCHITECTURE)
    out.update(num_key_value_heads=full_kv, v_head_dim=cfg.v_head_dim or cfg.head_dim,
               attention_value_scale=cfg.value_scale, attention_bias=cfg.qkv_bias, sliding_window=cfg.sliding_window,
               layer_types=["sliding_attention" if s else "full_attention" for s in cfg.sliding_layers],
               mlp_layer_types=mlp_layer_types_to_hf(cfg), n_routed_experts=m.n_experts, num_experts_per_tok=m.top_k,
               moe_intermediate_size=m.ffn_dim, norm_topk_prob=m.norm_topk, routed_scaling_factor=m.scaling,
               n_group=m.n_group, topk_group=m.topk_group,
               rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta,
                                                   "partial_rotary_factor": rot},
                                "sliding_attention": {"rope_type": "default", "partial_rotary_factor": rot,
                                                      "rope_theta": cfg.rope_local_theta or cfg.rope_theta}})
    out.pop("rope_theta", None)
    out.pop("rope_scaling", None)
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    out = llama_like(cfg, segs)
    for seg, _, _, moe in segs:
        if cfg.attn_sinks and (cfg.full_sinks or not seg.startswith("full_")):
            out.append(Tensor((seg, "attn", "sinks"), "model.layers.{i}.self_attn.attention_sink_bias"))
        if moe:
            out += expert_tensors(seg, PREFIX)
            out.append(Tensor((seg, "mlp", "score_bias"), f"{PREFIX}.gate.e_score_correction_bias"))
    return out
