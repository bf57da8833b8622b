"""OLMoE (``model_type`` olmoe: OLMoE-1B-7B and its instruct models): Llama's pre-norm layers with OLMo-2's q/k
RMSNorm over the whole projection, and every MLP a softmax top-k mixture of experts of ``intermediate_size``
each, the chosen weights renormalised only with ``norm_topk_prob`` (off in the releases), with the
Switch-style balancing loss weighted by ``router_aux_loss_coef``."""

from __future__ import annotations

from ..config import MoEConfig, TransformerConfig
from . import qwen3_moe
from .base import (
    ConfigError,
    Tensor,
    common_from_hf,
    common_to_hf,
    need,
    refuse,
    unsupported_cfg,
)

NAME = "olmoe"
MODEL_TYPES = ("olmoe",)
ARCHITECTURE = "OlmoeForCausalLM"


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "attention_bias", lambda v: not v, "attention biases")
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    refuse(hf, "clip_qkv", lambda v: v is None, "clipped q/k/v")
    hf = {"rms_norm_eps": 1e-5, "num_experts": 64, "num_experts_per_tok": 8, "router_aux_loss_coef": 0.01, **hf}
    heads, d = need(hf, "num_attention_heads"), need(hf, "hidden_size")
    if hf.get("head_dim") not in (None, d // heads) or d % heads:  # the reference sizes its q norm by hidden_size
        raise ConfigError(f"config.json: head_dim={hf.get('head_dim')!r} with hidden_size={d} and "
                          f"num_attention_heads={heads} is not supported (OLMoE's q/k norms need heads x head_dim "
                          "= hidden_size)")
    moe = MoEConfig(n_experts=hf["num_experts"], top_k=hf["num_experts_per_tok"],
                    ffn_dim=need(hf, "intermediate_size"), score="softmax",
                    norm_topk=bool(hf.get("norm_topk_prob", False)), aux_loss_coef=float(hf["router_aux_loss_coef"]))
    return TransformerConfig(**common_from_hf(hf, NAME, qk_norm=True, qk_norm_whole=True, moe=moe))


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, qk_norm=not cfg.qk_norm, qk_norm_whole=not cfg.qk_norm_whole,
                    mla=cfg.mla is not None, sliding_window=any(cfg.sliding_layers),
                    moe=qwen3_moe.moe_unsupported(m) or m.n_shared > 0 or m.shared_ffn > 0 or m.first_dense > 0
                    or m.dense_layers != () or m.ffn_dim != cfg.ffn_dim,
                    head_dim=cfg.head_dim * cfg.n_heads != cfg.d_model)
    return {**common_to_hf(cfg, "olmoe", ARCHITECTURE), "attention_bias": False, "clip_qkv": None,
            "num_experts": m.n_experts, "num_experts_per_tok": m.top_k, "norm_topk_prob": m.norm_topk,
            "router_aux_loss_coef": m.aux_loss_coef, "pad_token_id": None, "bos_token_id": None,
            "eos_token_id": None}  # not OLMoE's vocabulary's ids


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    return qwen3_moe.tensors(cfg)  # the same names: Llama's layers, experts under mlp.experts, router mlp.gate
