"""Command A+ (``model_type`` cohere2_moe: Cohere's MoE Command models): Command A's layers (one norm per layer
feeding attention and the MLP side by side, both added to the residual; rotary sliding-window layers on adjacent
pairs and full layers without rotary, logits times ``logit_scale``) with routed experts in place of the MLP after
``first_k_dense_replace`` dense layers (``mlp_layer_types`` in transformers 5's configs). The router takes the
top-k logits, then their softmax (or their sigmoids, renormalised with ``norm_topk_prob``); shared experts
``num_shared_experts`` x ``intermediate_size`` wide join the routed ones averaged
(``shared_expert_combination_strategy: average``, the default: new MoE switch ``shared_average``) or summed. The
dense layers are ``prefix_dense_intermediate_size`` wide and slide except every
``prefix_dense_sliding_window_pattern``-th layer (1, the default: none slides, and then they rotate all the
same). The norm is a LayerNorm without a bias unless
``rms_norm_eps`` names an RMSNorm; heads are ``head_dim`` wide (128 by default), not hidden / heads as Command
A's."""

from __future__ import annotations

from ..config import MoEConfig, TransformerConfig
from ..transformer import segments
from . import cohere2
from .base import (
    ConfigError,
    Tensor,
    common_from_hf,
    common_to_hf,
    every_nth_full,
    expert_tensors,
    gqa_tensors,
    mlp_layer_types_from_hf,
    mlp_layer_types_to_hf,
    mlp_tensors,
    need,
    outer_tensors,
    refuse,
    rope_from_hf,
    unsupported_cfg,
    with_defaults,
)

NAME = "cohere2_moe"
MODEL_TYPES = ("cohere2_moe",)
ARCHITECTURE = "Cohere2MoeForCausalLM"
WRITES = ("norm_center", "parallel_block", "logits_multiplier", "moe.shared_average")  # (hf_save.SWITCHES)

# The reference config's defaults for the fields a released config.json may leave out (Cohere2MoeConfig).
DEFAULTS = {"tie_word_embeddings": True, "layer_norm_eps": 1e-5, "logit_scale": 0.0625, "head_dim": 128,
            "sliding_window": 4096, "num_experts": 8, "num_experts_per_tok": 2, "num_shared_experts": 0,
            "shared_expert_combination_strategy": "average", "expert_selection_fn": "softmax",
            "prefix_dense_sliding_window_pattern": 1, "norm_topk_prob": True, "sliding_window_pattern": 4}


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    hf = with_defaults(hf, DEFAULTS, 10_000.0)
    refuse(hf, "expert_selection_fn", lambda v: v in ("softmax", "sigmoid"), "softmax or sigmoid")
    refuse(hf, "shared_expert_combination_strategy", lambda v: v in ("average", "sum"), "average or sum")
    n = need(hf, "num_hidden_layers")
    k = hf.get("first_k_dense_replace", 0)  # (older configs: the layer kinds from it, as the reference reads it)
    if not isinstance(k, int) or not 0 <= k < n:
        raise ConfigError(f"config.json: first_k_dense_replace={k!r} is not a number of layers below {n}")
    types = hf.get("layer_types") or (every_nth_full(k, hf["prefix_dense_sliding_window_pattern"])
                                      + every_nth_full(n - k, hf["sliding_window_pattern"]))
    window, sliding = cohere2.sliding_layers(hf, types)
    first, later = mlp_layer_types_from_hf({**hf, "mlp_layer_types": hf.get("mlp_layer_types")
                                            or ["dense"] * k + ["sparse"] * (n - k)})
    dense = [i < first or i in later for i in range(n)]
    # the reference rotates where a layer slides, and in every dense layer when none of them slides (pattern 1)
    forced = hf["prefix_dense_sliding_window_pattern"] == 1
    nope = tuple(i for i in range(n) if not sliding[i] and not (dense[i] and forced))
    softmax = hf["expert_selection_fn"] == "softmax"
    moe = MoEConfig(n_experts=hf["num_experts"], top_k=hf["num_experts_per_tok"], ffn_dim=need(hf, "intermediate_size"),
                    n_shared=hf["num_shared_experts"], first_dense=first, dense_layers=later,
                    score="softmax" if softmax else "sigmoid", norm_topk=softmax or bool(hf["norm_topk_prob"]),
                    aux_loss_coef=0.0, shared_average=hf["num_shared_experts"] > 0
                    and hf["shared_expert_combination_strategy"] == "average")
    rms = hf.get("rms_norm_eps") is not None
    theta, scaling = rope_from_hf(hf)
    bias = bool(hf.get("attention_bias", False))
    common = common_from_hf({**hf, "rms_norm_eps": hf["rms_norm_eps"] if rms else hf["layer_norm_eps"],
                             "intermediate_size": hf.get("prefix_dense_intermediate_size") or hf["intermediate_size"]},
                            NAME, rope_theta=theta, rope_scaling=scaling, qkv_bias=bias, out_bias=bias, moe=moe)
    return TransformerConfig(**common, rope_interleave=True, norm_center=not rms, parallel_block=True,
                             logits_multiplier=float(hf["logit_scale"]), sliding_window=window if any(sliding) else 0,
                             layer_types=tuple("sliding" if s else "full" for s in sliding) if any(sliding) else None,
                             nope_layers=nope)


def to_hf(cfg: TransformerConfig) -> dict:
    m, n = cfg.moe, cfg.n_layers
    sliding = cfg.sliding_layers
    dense = [m is not None and not m.is_moe(i) for i in range(n)]
    # the layers without rotary the format can say: full ones, but dense ones (all or none rotating: the pattern)
    forced = any(dense) and not any(s for s, d in zip(sliding, dense) if d)
    nope = tuple(i for i in range(n) if not sliding[i] and not (dense[i] and forced))
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias != cfg.out_bias, qk_norm=cfg.qk_norm, mla=cfg.mla is not None,
                    rope_interleave=not cfg.rope_interleave, parallel_block=not cfg.parallel_block,
                    rope_dim=cfg.rope_dim > 0, nope_layers=cfg.nope_layers != nope,
                    moe=m is None or m.n_group > 1 or m.score_bias or m.shared_ffn > 0 or m.shared_gate
                    or m.router_bias or m.expert_bias or m.scaling != 1.0 or (m.score == "softmax" and not m.norm_topk)
                    or (m.shared_average and not m.n_shared))
    out = common_to_hf(cfg, NAME, ARCHITECTURE)
    del out["rms_norm_eps"]
    out.update(intermediate_size=m.ffn_dim, prefix_dense_intermediate_size=cfg.ffn_dim,
               logit_scale=cfg.logits_multiplier, attention_bias=cfg.qkv_bias,
               sliding_window=cfg.sliding_window or None,
               layer_types=["sliding_attention" if s else "full_attention" for s in sliding],
               mlp_layer_types=mlp_layer_types_to_hf(cfg), num_experts=m.n_experts, num_experts_per_tok=m.top_k,
               num_shared_experts=m.n_shared, expert_selection_fn=m.score, norm_topk_prob=m.norm_topk,
               shared_expert_combination_strategy="average" if m.shared_average else "sum",
               prefix_dense_sliding_window_pattern=1 if forced else 2)
    out["rms_norm_eps" if not cfg.norm_center else "layer_norm_eps"] = cfg.norm_eps
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = outer_tensors(cfg)
    pre = "model.layers.{i}.mlp"
    for seg, _, _, moe in segments(cfg):
        out += [Tensor((seg, "attn_norm", "scale"), "model.layers.{i}.input_layernorm.weight")]
        out += gqa_tensors(seg, cfg)
        if moe:
            out += expert_tensors(seg, pre)
            if cfg.moe.n_shared:
                out += mlp_tensors((seg, "mlp", "shared"), f"{pre}.shared_experts")
        else:
            out += mlp_tensors((seg, "mlp"), pre)
    return out
