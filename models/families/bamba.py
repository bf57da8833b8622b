"""IBM Bamba (``model_type`` bamba: Bamba-9B v1/v2): Mamba-2 layers (``models/layers/mamba2``, Granite 4.0-H's
mixer and weight names) with grouped-query attention at ``attn_layer_indices``, each followed by Llama's SwiGLU
MLP (``feed_forward``) after ``pre_ff_layernorm``; the final norm is ``final_layernorm``. The attention rotates
the first half of each head (``partial_rotary_factor`` is fixed at 0.5 by the reference, whatever the config
says)."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from .base import (
    ConfigError,
    Tensor,
    common_from_hf,
    common_to_hf,
    gqa_tensors,
    mlp_tensors,
    need,
    outer_tensors,
    refuse,
    rotary_dims,
    unsupported_cfg,
)
from .granite import mamba_from_hf, mamba_hf_fields, mamba_tensors

NAME = "bamba"
MODEL_TYPES = ("bamba",)
ARCHITECTURE = "BambaForCausalLM"


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "attention_bias", lambda v: not v, "attention biases")
    refuse(hf, "mlp_bias", lambda v: not v, "MLP biases")
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    n = need(hf, "num_hidden_layers")
    attn = hf.get("attn_layer_indices") or []
    bad = [i for i in attn if not (isinstance(i, int) and 0 <= i < n)]
    if bad:
        raise ConfigError(f"config.json: attn_layer_indices entries {bad} are not layers of the {n}")
    mamba = [i for i in range(n) if i not in attn]
    common = common_from_hf(hf, NAME, linear=mamba_from_hf(hf, mamba) if mamba else None)
    return TransformerConfig(**common, rope_dim=rotary_dims({"partial_rotary_factor": 0.5}, common["head_dim"]))


def to_hf(cfg: TransformerConfig) -> dict:
    lin = cfg.linear
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias, qk_norm=cfg.qk_norm,
                    moe=cfg.moe is not None, mla=cfg.mla is not None, sliding_window=cfg.sliding_window > 0,
                    linear=lin is not None and lin.kind != "mamba2", rope_dim=cfg.rope_dim * 2 != cfg.head_dim)
    out = {**common_to_hf(cfg, NAME, ARCHITECTURE), "attention_bias": False, "mlp_bias": False,
           "attn_layer_indices": list(cfg.attention_layers)}
    if lin is not None:
        out.update(mamba_hf_fields(cfg))
    return out


def layout_tensors(cfg: TransformerConfig) -> list[Tensor]:
    """What Bamba's layout shares with Falcon-H1's: embeddings, ``final_layernorm``, the head, and in each layer
    ``input_layernorm``, ``pre_ff_layernorm`` and the ``feed_forward`` MLP (the mixers are each family's)."""
    out = [Tensor(("final_norm", "scale"), "model.final_layernorm.weight") if t.path[0] == "final_norm" else t
           for t in outer_tensors(cfg)]
    pre = "model.layers.{i}"
    for seg, _, _, _ in segments(cfg):
        out += [Tensor((seg, "attn_norm", "scale"), f"{pre}.input_layernorm.weight"),
                Tensor((seg, "mlp_norm", "scale"), f"{pre}.pre_ff_layernorm.weight")]
        out += mlp_tensors((seg, "mlp"), f"{pre}.feed_forward")
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = layout_tensors(cfg)
    for seg, _, _, _ in segments(cfg):
        out += mamba_tensors(seg, cfg) if seg.startswith("linear") else gqa_tensors(seg, cfg)
    return out
