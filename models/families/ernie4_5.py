"""ERNIE 4.5 (``model_type`` ernie4_5 and ernie4_5_moe, Baidu's models, ERNIE-4.5-21B-A3B-Thinking among them):
the Llama layout with rotary on adjacent pairs (the "GLM style": (x0, x1), (x2, x3), ...) and, for the MoE
models, softmax routing whose top-k is chosen with a per-expert selection bias (``moe_statics``; the weights are
the unbiased probabilities, renormalised) plus shared experts, on the layers ``moe_layer_start_index`` ..
``moe_layer_end_index`` every ``moe_layer_interval``; the others are dense."""

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
    refuse,
    unsupported_cfg,
)

NAME = "ernie4_5"
MODEL_TYPES = ("ernie4_5", "ernie4_5_moe")
ARCHITECTURE = "Ernie4_5ForCausalLM"
MOE_ARCHITECTURE = "Ernie4_5_MoeForCausalLM"


def _moe(hf: dict) -> MoEConfig:
    n = need(hf, "num_hidden_layers")
    fields = {k: hf.get(k, d) for k, d in (("moe_layer_start_index", 1), ("moe_layer_end_index", -1),
                                             ("moe_layer_interval", 1))}
    for k, v in fields.items():
        if not isinstance(v, int) or isinstance(v, bool):
            raise ConfigError(f"config.json: {k}={v!r} is not supported (one integer)")
    start, end, every = fields.values()
    end = n - 1 if end == -1 else end
    if every < 1:
        raise ConfigError(f"config.json: moe_layer_interval={every} is not a positive integer")
    moe = [(i + 1) % every == 0 and start <= i <= end for i in range(n)]
    if not any(moe):
        raise ConfigError("config.json: the moe_layer_* fields leave no MoE layer (a dense model: ernie4_5)")
    return MoEConfig(n_experts=need(hf, "moe_num_experts"), top_k=need(hf, "moe_k"),
                     ffn_dim=need(hf, "moe_intermediate_size"), n_shared=int(hf.get("moe_num_shared_experts") or 0),
                     score="softmax", norm_topk=True, score_bias=True,
                     aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)),
                     dense_layers=tuple(i for i in range(n) if not moe[i]))


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    refuse(hf, "use_bias", lambda v: not v, "biases on every projection")
    hf = {"tie_word_embeddings": True, "head_dim": 128, "rms_norm_eps": 1e-5, **hf}
    moe = _moe(hf) if hf.get("model_type") == "ernie4_5_moe" else None
    return TransformerConfig(**common_from_hf(hf, NAME, rope_interleave=True, moe=moe))


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias, qk_norm=cfg.qk_norm,
                    mla=cfg.mla is not None, sliding_window=cfg.sliding_window > 0, rope_dim=cfg.rope_dim > 0,
                    rope_interleave=not cfg.rope_interleave,
                    moe=m is not None and (m.score != "softmax" or not m.score_bias or not m.norm_topk
                                           or m.first_dense > 0 or m.n_group > 1 or m.scaling != 1.0
                                           or m.shared_ffn > 0 or m.shared_gate or m.router_bias or m.expert_bias))
    if m is None:
        return {**common_to_hf(cfg, "ernie4_5", ARCHITECTURE), "use_bias": False}
    layers = [i for i in range(cfg.n_layers) if m.is_moe(i)]
    start, end = layers[0], layers[-1]
    every = next((k for k in range(1, cfg.n_layers + 1)
                  if [(i + 1) % k == 0 and start <= i <= end for i in range(cfg.n_layers)]
                  == [m.is_moe(i) for i in range(cfg.n_layers)]), None)
    if every is None:
        raise ConfigError(f"TransformerConfig.moe.dense_layers={m.dense_layers!r} cannot be written as an "
                          "ernie4_5_moe checkpoint (MoE layers every n-th from a start to an end)")
    return {**common_to_hf(cfg, "ernie4_5_moe", MOE_ARCHITECTURE), "use_bias": False,
            "moe_num_experts": m.n_experts, "moe_k": m.top_k, "moe_intermediate_size": m.ffn_dim,
            "moe_num_shared_experts": m.n_shared, "moe_layer_start_index": start, "moe_layer_end_index": end,
            "moe_layer_interval": every, "router_aux_loss_coef": m.aux_loss_coef}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    out = llama_like(cfg, segs)
    pre = "model.layers.{i}.mlp"
    for seg, _, _, moe in segs:
        if moe:
            out += expert_tensors(seg, pre)
            # stored [1, E] (one expert group): t1 reads it as our [E]
            out.append(Tensor((seg, "mlp", "score_bias"), f"{pre}.moe_statics.e_score_correction_bias", "t1"))
            if cfg.moe.n_shared:
                out += mlp_tensors((seg, "mlp", "shared"), f"{pre}.shared_experts")
    return out
