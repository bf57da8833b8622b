"""StableLM (``model_type`` stablelm: StableLM 2 1.6B / 12B and their chat and Zephyr models, StableLM-3B-4E1T):
Llama's attention and SwiGLU MLP with LayerNorms (a mean subtracted, a scale and a bias: ``norm_center``,
``norm_bias``; epsilon ``layer_norm_eps``), rotary embedding on the leading quarter of each head by default
(``partial_rotary_factor``), biases on q, k and v only with ``use_qkv_bias``, and with ``use_parallel_residual``
attention and the MLP side by side on one normed input (``parallel_block``: no ``post_attention_layernorm``).
``qk_layernorm`` (StableLM 2 12B's per-head LayerNorms of queries and keys, with weights per head) is refused by
name: no such norm here."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from .base import (
    Tensor,
    common_from_hf,
    common_to_hf,
    gqa_tensors,
    mlp_tensors,
    outer_tensors,
    refuse,
    rotary_dims,
    unsupported_cfg,
    with_defaults,
)

NAME = "stablelm"
MODEL_TYPES = (NAME,)
ARCHITECTURE = "StableLmForCausalLM"
WRITES = ("norm_center", "norm_bias", "parallel_block")  # (hf_save.SWITCHES)

# the reference config class's defaults (StableLmConfig) for what a config.json may leave out
DEFAULTS = {"vocab_size": 50_304, "layer_norm_eps": 1e-5, "tie_word_embeddings": False,
            "max_position_embeddings": 4096, "use_qkv_bias": False, "use_parallel_residual": False}


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(hf, DEFAULTS, theta=10_000.0)
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    refuse(hf, "qk_layernorm", lambda v: not v, "per-head LayerNorm of queries and keys (StableLM 2 12B)")
    head_dim = hf["hidden_size"] // hf["num_attention_heads"]
    return TransformerConfig(**common_from_hf(
        {**hf, "rms_norm_eps": hf["layer_norm_eps"], "head_dim": head_dim}, NAME,
        qkv_bias=bool(hf["use_qkv_bias"]), norm_center=True, norm_bias=True,
        parallel_block=bool(hf["use_parallel_residual"]), rope_dim=rotary_dims(hf, head_dim, 0.25)))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, norm_center=not cfg.norm_center, norm_bias=not cfg.norm_bias, out_bias=cfg.out_bias,
                    qk_norm=cfg.qk_norm, moe=cfg.moe is not None, mla=cfg.mla is not None,
                    linear=cfg.linear is not None, sliding_window=cfg.sliding_window > 0,
                    nope_layers=bool(cfg.nope_layers), rope_interleave=cfg.rope_interleave,
                    norm_offset=cfg.norm_offset != 0.0, head_dim=cfg.head_dim * cfg.n_heads != cfg.d_model)
    out = common_to_hf(cfg, NAME, ARCHITECTURE)
    eps = out.pop("rms_norm_eps")
    out.pop("head_dim", None)
    out.update(layer_norm_eps=eps, use_qkv_bias=cfg.qkv_bias, use_parallel_residual=cfg.parallel_block,
               qk_layernorm=False, partial_rotary_factor=(cfg.rope_dim or cfg.head_dim) / cfg.head_dim)
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = outer_tensors(cfg) + [Tensor(("final_norm", "bias"), "model.norm.bias")]
    pre = "model.layers.{i}"
    for seg, *_ in segments(cfg):
        out += [Tensor((seg, "attn_norm", "scale"), f"{pre}.input_layernorm.weight"),
                Tensor((seg, "attn_norm", "bias"), f"{pre}.input_layernorm.bias")]
        if not cfg.parallel_block:
            out += [Tensor((seg, "mlp_norm", "scale"), f"{pre}.post_attention_layernorm.weight"),
                    Tensor((seg, "mlp_norm", "bias"), f"{pre}.post_attention_layernorm.bias")]
        out += gqa_tensors(seg, cfg) + mlp_tensors((seg, "mlp"), f"{pre}.mlp")
    return out
