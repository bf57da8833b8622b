"""Flint (``model_type`` flint: Recursive's Flint MoE models): Qwen3-MoE's layers (per-head q/k RMSNorms before
the rotary, optional biases on all four attention projections) with a learned sink logit per head in every
softmax (gpt-oss's), sliding-window layers that rotate and full layers without any rotary (NoPE): the first two,
every fourth from the second and the last full by default, unless ``layer_types`` says otherwise. MLPs: the
layers in ``mlp_only_layers`` (the first two by default; with ``decoder_sparse_step``, those between the sparse
ones) dense; the others route over experts by sigmoid scores of the float32 router logits, without a selection
bias, the chosen ones renormalised with ``norm_topk_prob``, and add an always-on shared expert of
``shared_expert_intermediate_size`` without Qwen2-MoE's gate. The reference saves the sinks under their original
name, ``self_attn.softmax_offset``. Its balancing loss (over a softmax of the router logits, applied only with
``output_router_logits``) is not applied: ``model.moe.aux_loss_coef`` adds ours."""

from __future__ import annotations

from ..config import MoEConfig, TransformerConfig
from ..transformer import segments
from .base import (
    ConfigError,
    Tensor,
    common_from_hf,
    common_to_hf,
    expert_tensors,
    llama_like,
    mlp_tensors,
    need,
    qwen_moe_dense_layers,
    qwen_moe_dense_to_hf,
    refuse,
    rope_to_hf,
    unsupported_cfg,
    whole_heads,
    window_from_hf,
    with_defaults,
)

NAME = "flint"
MODEL_TYPES = ("flint",)
ARCHITECTURE = "FlintForCausalLM"
PREFIX = "model.layers.{i}.mlp"
KINDS = ("full_attention", "sliding_attention")

# the reference config's defaults for what a config.json may leave out (FlintConfig; its rope base is 10000, its
# layer kinds and dense layers are filled by ``full_layer`` and ``mlp_only_layers`` [0, 1])
DEFAULTS = {"vocab_size": 150144, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 49,
            "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "hidden_act": "silu",
            "max_position_embeddings": 262144, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
            "sliding_window": 513, "decoder_sparse_step": 1, "moe_intermediate_size": 512,
            "shared_expert_intermediate_size": 1024, "num_experts_per_tok": 6, "num_experts": 256,
            "norm_topk_prob": True, "mlp_only_layers": [0, 1], "attention_bias": False}
THETA = 10000.0


def full_layer(i: int, n: int) -> bool:
    """The reference's default schedule: the first two layers, every fourth from the second, and the last full."""
    return i < 2 or i % 4 == 1 or i == n - 1


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(hf, DEFAULTS, theta=THETA)
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and set(params) & set(KINDS):
        raise ConfigError("config.json: rope_parameters nested by layer kind is not supported (the reference reads "
                          "one flat set, for its sliding layers)")
    whole_heads(hf, hf["head_dim"])
    n = need(hf, "num_hidden_layers")
    experts = hf["num_experts"]
    if not isinstance(experts, int) or experts < 1:
        raise ConfigError(f"config.json: num_experts={experts!r} is not supported (no MoE layer: a dense model)")
    types = hf.get("layer_types") or ["full_attention" if full_layer(i, n) else "sliding_attention"
                                      for i in range(n)]
    if not isinstance(types, list) or len(types) != n or any(t not in KINDS for t in types):
        raise ConfigError(f"config.json: layer_types must name 'full_attention' or 'sliding_attention' for each "
                          f"of the {n} layers")
    hf = {**hf, "layer_types": types}
    shared = int(hf["shared_expert_intermediate_size"])
    moe = MoEConfig(n_experts=experts, top_k=hf["num_experts_per_tok"], ffn_dim=hf["moe_intermediate_size"],
                    n_shared=1 if shared else 0, shared_ffn=shared, score="sigmoid",
                    norm_topk=bool(hf["norm_topk_prob"]), aux_loss_coef=0.0, dense_layers=qwen_moe_dense_layers(hf))
    nope = tuple(i for i, t in enumerate(types) if t == "full_attention")  # full layers: no rotary at all
    bias = bool(hf["attention_bias"])
    return TransformerConfig(**common_from_hf(hf, NAME, qk_norm=True, qkv_bias=bias, out_bias=bias, attn_sinks=True,
                                              nope_layers=nope, moe=moe, **window_from_hf(hf)))


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    full = tuple(i for i, s in enumerate(cfg.sliding_layers) if not s)
    unsupported_cfg(cfg, NAME, qk_norm=not cfg.qk_norm, qk_norm_whole=cfg.qk_norm_whole,
                    qk_norm_after_rope=cfg.qk_norm_after_rope, qkv_bias=cfg.qkv_bias != cfg.out_bias,
                    attn_sinks=not cfg.attn_sinks, nope_layers=cfg.nope_layers != full,
                    rope_local_theta=cfg.rope_local_theta is not None, rope_dim=cfg.rope_dim > 0,
                    rope_interleave=cfg.rope_interleave, mla=cfg.mla is not None, linear=cfg.linear is not None,
                    sandwich_norm=cfg.sandwich_norm, pre_norm=not cfg.pre_norm, norm_offset=cfg.norm_offset != 0.0,
                    embed_scale=cfg.embed_scale, embed_multiplier=cfg.embed_multiplier != 1.0,
                    residual_multiplier=cfg.residual_multiplier != 1.0, logits_scaling=cfg.logits_scaling != 1.0,
                    query_scale=cfg.query_scale is not None, attn_softcap=cfg.attn_softcap is not None,
                    final_softcap=cfg.final_softcap is not None, attn_gate=cfg.attn_gate,
                    query_length_scale=cfg.query_length_scale is not None,
                    moe=m is None or m.score != "sigmoid" or m.score_bias or m.router_bias or m.expert_bias
                    or m.n_group > 1 or m.scaling != 1.0 or m.n_shared > 1 or m.shared_gate)
    out = common_to_hf(cfg, NAME, ARCHITECTURE)
    scaling = rope_to_hf(cfg.rope_theta, cfg.rope_scaling)["rope_scaling"] or {}
    del out["rope_theta"], out["rope_scaling"]
    out.update(attention_bias=cfg.qkv_bias, num_experts=m.n_experts, num_experts_per_tok=m.top_k,
               moe_intermediate_size=m.ffn_dim, norm_topk_prob=m.norm_topk,
               shared_expert_intermediate_size=m.shared_ffn or m.n_shared * m.ffn_dim, **qwen_moe_dense_to_hf(cfg),
               sliding_window=cfg.sliding_window or DEFAULTS["sliding_window"],  # (no layer slides without)
               layer_types=["sliding_attention" if s else "full_attention" for s in cfg.sliding_layers],
               rope_parameters={"rope_type": "default", **scaling, "rope_theta": cfg.rope_theta})
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    out = llama_like(cfg, segs)
    for seg, _, _, moe in segs:
        out.append(Tensor((seg, "attn", "sinks"), "model.layers.{i}.self_attn.softmax_offset"))
        if moe:
            out += expert_tensors(seg, PREFIX)
            if cfg.moe.n_shared:
                out += mlp_tensors((seg, "mlp", "shared"), f"{PREFIX}.shared_expert")
    return out
