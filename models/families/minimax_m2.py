"""MiniMax-M2 (``model_type`` minimax_m2): grouped-query attention with q/k RMSNorm over the whole projection
and partial rotary (the released configs' ``rotary_dim``, or ``partial_rotary_factor``), and in every layer a
MoE of sigmoid scores with a per-expert selection bias (``e_score_correction_bias``, aux-loss-free balancing as
DeepSeek-V3's), top-k renormalised, no shared expert. Experts live under ``block_sparse_moe`` as Mixtral's do
(w1 gate, w3 up, w2 down). The released configs' multi-token-prediction fields (``num_mtp_modules``,
``use_mtp``) are ignored as the reference ignores them."""

from __future__ import annotations

from ..config import MoEConfig, TransformerConfig
from ..transformer import segments
from .base import (
    Tensor,
    common_from_hf,
    common_to_hf,
    expert_tensors,
    llama_like,
    need,
    refuse,
    rotary_dims,
    unsupported_cfg,
)

NAME = "minimax_m2"
MODEL_TYPES = ("minimax_m2",)
ARCHITECTURE = "MiniMaxM2ForCausalLM"
PREFIX = "model.layers.{i}.block_sparse_moe"


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    refuse(hf, "scoring_func", lambda v: v == "sigmoid", "only sigmoid routing scores")
    refuse(hf, "use_qk_norm", lambda v: v, "the reference always normalises q and k")
    refuse(hf, "qk_norm_type", lambda v: v == "per_layer", "q/k norms over the whole projection only")
    refuse(hf, "shared_intermediate_size", lambda v: not v, "a shared expert")
    refuse(hf, "attn_type_list", lambda v: all(t == 1 for t in v), "only softmax attention layers (type 1)")
    moe = MoEConfig(n_experts=need(hf, "num_local_experts"), top_k=need(hf, "num_experts_per_tok"),
                    ffn_dim=need(hf, "intermediate_size"), score="sigmoid", norm_topk=True, score_bias=True,
                    aux_loss_coef=0.0)
    common = common_from_hf(hf, NAME, qk_norm=True, qk_norm_whole=True, moe=moe)
    return TransformerConfig(**common, rope_dim=rotary_dims(hf, common["head_dim"]))


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, qk_norm=not cfg.qk_norm, qk_norm_whole=not cfg.qk_norm_whole,
                    mla=cfg.mla is not None, sliding_window=cfg.sliding_window > 0,
                    moe=m is None or m.score != "sigmoid" or not m.score_bias or not m.norm_topk or m.n_shared > 0
                    or m.first_dense > 0 or m.dense_layers != () or m.n_group > 1 or m.scaling != 1.0
                    or m.router_bias or m.expert_bias)
    out = common_to_hf(cfg, "minimax_m2", ARCHITECTURE)
    out.update(intermediate_size=m.ffn_dim, num_local_experts=m.n_experts, num_experts_per_tok=m.top_k,
               scoring_func="sigmoid", use_qk_norm=True, qk_norm_type="per_layer",
               partial_rotary_factor=(cfg.rope_dim or cfg.head_dim) / cfg.head_dim)
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    out = llama_like(cfg, segs)
    for s, *_ in segs:
        out += expert_tensors(s, PREFIX, names=("w1", "w3", "w2"))
        out.append(Tensor((s, "mlp", "score_bias"), f"{PREFIX}.e_score_correction_bias"))
    return out
