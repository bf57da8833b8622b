"""Youtu-LLM (``model_type`` youtu: Tencent's Youtu-LLM-2B, an agentic reasoning model): DeepSeek-V3's
multi-head latent attention (low-rank queries, the compressed key/value latent and its rotary key, interleaved
rotary by default) in every layer, each with a dense SwiGLU MLP; embeddings tied by default."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from . import deepseek_v3
from .base import Tensor, common_from_hf, common_to_hf, llama_like, refuse, unsupported_cfg, with_defaults

NAME = "youtu"
MODEL_TYPES = ("youtu",)
ARCHITECTURE = "YoutuForCausalLM"

# The reference config's defaults for the fields a released config.json may leave out (YoutuConfig).
# (q_lora_rank's 1536 only where the field is absent: null is full-rank queries)
DEFAULTS = {"kv_lora_rank": 512, "qk_rope_head_dim": 64, "v_head_dim": 128,
            "qk_nope_head_dim": 128, "tie_word_embeddings": True, "rope_interleave": True}


def from_hf(hf: dict) -> TransformerConfig:
    hf = {"q_lora_rank": hf.get("q_lora_rank", 1536), **with_defaults(hf, DEFAULTS)}
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    refuse(hf, "attention_bias", lambda v: not v, "latent attention projections without biases")
    refuse(hf, "mlp_bias", lambda v: not v, "MLP projections without biases")
    return TransformerConfig(**common_from_hf(hf, NAME, **deepseek_v3.mla_from_hf(hf)))


def to_hf(cfg: TransformerConfig) -> dict:
    a = cfg.mla
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, mla=a is None or bool(a.index_topk),
                    moe=cfg.moe is not None, sliding_window=cfg.sliding_window > 0)
    out = {**common_to_hf(cfg, NAME, ARCHITECTURE), **deepseek_v3.mla_to_hf(a), "attention_bias": False}
    del out["head_dim"]
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    return llama_like(cfg, segs, attention=False) + [t for s in segs for t in deepseek_v3.mla_tensors(s[0], cfg)]
