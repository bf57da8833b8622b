"""gpt-oss: GQA with q/k/v/o biases and a learned sink logit per head, sliding-window and full layers
alternating (``layer_types``), YaRN rope, and MoE layers whose router has a bias (top-k on the logits, softmax
over the chosen: softmax routing renormalised) and whose experts have biases and the clamped SwiGLU
(``(clip(up) + 1) * gate * sigmoid(alpha * gate)``, gate and up columns alternating in ``gate_up_proj``).
The released checkpoints store the experts in MXFP4, dequantized on load (``models.quantized``)."""

from __future__ import annotations

from ..config import MoEConfig, TransformerConfig
from ..transformer import segments
from .base import (
    Piece,
    Tensor,
    common_from_hf,
    common_to_hf,
    gqa_tensors,
    need,
    outer_tensors,
    refuse,
    unsupported_cfg,
    window_from_hf,
    window_to_hf,
)

NAME = "gpt_oss"
MODEL_TYPES = ("gpt_oss",)
ARCHITECTURE = "GptOssForCausalLM"
ACTIVATIONS = ("clamped_swiglu",)  # the MLP activation its format writes


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "attention_bias", lambda v: v, "gpt-oss without attention biases")
    n_layers = need(hf, "num_hidden_layers")
    if not hf.get("layer_types"):  # the reference's default: sliding, full, sliding, ...
        hf = {**hf, "layer_types": ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)]}
    moe = MoEConfig(n_experts=hf.get("num_local_experts") or need(hf, "num_experts"),
                    top_k=need(hf, "num_experts_per_tok"), ffn_dim=need(hf, "intermediate_size"), score="softmax",
                    norm_topk=True, router_bias=True, expert_bias=True,
                    aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)))
    hf = {"rms_norm_eps": 1e-5, **hf}
    return TransformerConfig(**common_from_hf(
        hf, NAME, qkv_bias=True, out_bias=True, attn_sinks=True, moe=moe, activation="clamped_swiglu",
        swiglu_alpha=float(hf.get("swiglu_alpha", 1.702)), swiglu_limit=float(hf.get("swiglu_limit", 7.0)),
        **window_from_hf(hf)))


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    unsupported_cfg(cfg, NAME, qkv_bias=not cfg.qkv_bias, out_bias=not cfg.out_bias, attn_sinks=not cfg.attn_sinks,
                    qk_norm=cfg.qk_norm, mla=cfg.mla is not None,
                    moe=m is None or m.score != "softmax" or not m.norm_topk or not m.router_bias
                    or not m.expert_bias or m.n_shared > 0 or m.dense_layers != () or m.first_dense > 0
                    or m.n_group > 1 or m.scaling != 1.0 or m.score_bias)
    out = {**common_to_hf(cfg, "gpt_oss", ARCHITECTURE), "attention_bias": True, "num_local_experts": m.n_experts,
           "num_experts_per_tok": m.top_k, "intermediate_size": m.ffn_dim, "router_aux_loss_coef": m.aux_loss_coef,
           "swiglu_alpha": cfg.swiglu_alpha, "swiglu_limit": cfg.swiglu_limit, **window_to_hf(cfg)}
    out["rope_parameters"] = {"rope_type": "default", **(out.pop("rope_scaling") or {}),
                              "rope_theta": out.pop("rope_theta")}
    if not any(cfg.sliding_layers):
        out.update(layer_types=["full_attention"] * cfg.n_layers, sliding_window=None)
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = outer_tensors(cfg)
    pre = "model.layers.{i}"
    f = cfg.moe.ffn_dim
    for seg, *_ in segments(cfg):
        out += [Tensor((seg, "attn_norm", "scale"), f"{pre}.input_layernorm.weight"),
                Tensor((seg, "mlp_norm", "scale"), f"{pre}.post_attention_layernorm.weight"),
                Tensor((seg, "attn", "sinks"), f"{pre}.self_attn.sinks"),
                Tensor((seg, "mlp", "router"), f"{pre}.mlp.router.weight", "t1"),
                Tensor((seg, "mlp", "router_bias"), f"{pre}.mlp.router.bias"),
                Tensor((seg, "mlp", "down"), f"{pre}.mlp.experts.down_proj"),
                Tensor((seg, "mlp", "down_b"), f"{pre}.mlp.experts.down_proj_bias")]
        out += gqa_tensors(seg, cfg)
        for k, n in enumerate(("gate", "up")):  # gate and up alternate along the last axis
            out += [Tensor((seg, "mlp", n), f"{pre}.mlp.experts.gate_up_proj", piece=Piece(2, k, (f, f), True)),
                    Tensor((seg, "mlp", f"{n}_b"), f"{pre}.mlp.experts.gate_up_proj_bias",
                           piece=Piece(1, k, (f, f), True))]
    return out
