"""GLM-4 dense (``model_type`` glm4: GLM-4-0414 and the GLM-Z1 reasoning models; glm: GLM-4-9B-Chat-HF):
grouped-query attention with q/k/v biases (``attention_bias``) and rotary on adjacent pairs of the leading
half of each head (``partial_rotary_factor``, 0.5 by default), the MLP's gate and up rows in one
``gate_up_proj`` (gate first, as Phi-3). GLM-4-0414 adds a norm on the output of attention and of the MLP
(``post_self_attn_layernorm``, ``post_mlp_layernorm``: the sandwich norms of Gemma, without its offset); its
``post_attention_layernorm`` is the norm before the MLP, as in Llama."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from .base import (
    Tensor,
    common_from_hf,
    common_to_hf,
    gate_up_tensors,
    gqa_tensors,
    outer_tensors,
    refuse,
    rotary_dims,
    unsupported_cfg,
)

NAME = "glm4"
MODEL_TYPES = ("glm4", "glm")
ARCHITECTURE = "Glm4ForCausalLM"
GLM_ARCHITECTURE = "GlmForCausalLM"
# what the reference's config classes (both alike) fill in where a config.json leaves a field out: among them
# q/k/v biases and head_dim 128 (not hidden / heads); half the head rotary is rotary_dims' default below
DEFAULTS = {"vocab_size": 151552, "hidden_size": 4096, "intermediate_size": 13696, "num_hidden_layers": 40,
            "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128, "max_position_embeddings": 131072,
            "rms_norm_eps": 1.5625e-07, "tie_word_embeddings": False, "attention_bias": True}


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    hf = {**DEFAULTS, **hf}
    common = common_from_hf(hf, NAME, qkv_bias=bool(hf["attention_bias"]), rope_interleave=True,
                            sandwich_norm=hf.get("model_type") != "glm")
    return TransformerConfig(**common, rope_dim=rotary_dims(hf, common["head_dim"], default=0.5))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, qk_norm=cfg.qk_norm, out_bias=cfg.out_bias, moe=cfg.moe is not None,
                    mla=cfg.mla is not None, sliding_window=any(cfg.sliding_layers),
                    rope_interleave=not cfg.rope_interleave, pre_norm=not cfg.pre_norm,
                    norm_offset=cfg.norm_offset != 0)
    model_type, arch = ("glm4", ARCHITECTURE) if cfg.sandwich_norm else ("glm", GLM_ARCHITECTURE)
    return {**common_to_hf(cfg, model_type, arch), "attention_bias": cfg.qkv_bias,
            "partial_rotary_factor": (cfg.rope_dim or cfg.head_dim) / cfg.head_dim,
            "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}  # not GLM's vocabulary's ids


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = outer_tensors(cfg)
    pre = "model.layers.{i}"
    for seg, *_ in segments(cfg):
        out += [Tensor((seg, "attn_norm", "scale"), f"{pre}.input_layernorm.weight"),
                Tensor((seg, "mlp_norm", "scale"), f"{pre}.post_attention_layernorm.weight"),
                Tensor((seg, "mlp", "down"), f"{pre}.mlp.down_proj.weight", "t1")]
        if cfg.sandwich_norm:
            out += [Tensor((seg, "post_attn_norm", "scale"), f"{pre}.post_self_attn_layernorm.weight"),
                    Tensor((seg, "post_mlp_norm", "scale"), f"{pre}.post_mlp_layernorm.weight")]
        out += gqa_tensors(seg, cfg) + gate_up_tensors(seg, cfg, f"{pre}.mlp")
    return out
