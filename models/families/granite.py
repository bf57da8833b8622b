"""IBM Granite 3.x (``model_type`` granite; Granite 3.2/3.3 instruct models reason in ``<think>`` when their chat
template is asked to): the Llama layout with the four scalars of its muP parametrisation: embeddings times
``embedding_multiplier``, each layer's attention and MLP outputs times ``residual_multiplier`` before their
residual adds, ``attention_multiplier`` as the softmax scale (in place of 1/sqrt(head_dim)), and logits divided
by ``logits_scaling``. ``attention_bias`` puts biases on all four attention projections, as Llama's.

Granite 4.0's format (``granitemoehybrid``) is the same model with its MLP under another name
(``shared_mlp.input_linear``: gate then up rows; ``output_linear``), rotary embeddings only with
``position_embedding_type: rope``, and optionally Mamba-2 layers and routed experts: its all-attention,
expert-free checkpoints (Granite-4.0-Micro) load here; Mamba-2 layers (the "H" models) and experts are
refused by name."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from .base import (
    ConfigError,
    Piece,
    Tensor,
    common_from_hf,
    common_to_hf,
    llama_like,
    refuse,
    unsupported_cfg,
)

NAME = "granite"
MODEL_TYPES = ("granite", "granitemoehybrid")
ARCHITECTURE = "GraniteForCausalLM"
HYBRID, HYBRID_ARCHITECTURE = "granitemoehybrid", "GraniteMoeHybridForCausalLM"
MAMBA = ("mamba", "linear_attention")  # a Mamba-2 layer's layer_types entry (transformers 4, 5)


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "mlp_bias", lambda v: not v, "MLP biases")
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    bias = bool(hf.get("attention_bias", False))
    kw = {}
    if hf.get("model_type") == HYBRID:
        types = list(hf.get("layer_types") or hf.get("layers_block_type") or [])
        mamba = [i for i, t in enumerate(types) if t in MAMBA]
        if mamba or not types:
            raise ConfigError(f"config.json: model_type {HYBRID!r} with Mamba-2 layers (layer_types, layers "
                              f"{mamba[:4] or 'all'}) is not supported: their recurrent state is of a kind not "
                              "implemented here (an all-attention Granite 4.0 checkpoint is)")
        refuse(hf, "num_local_experts", lambda v: v == 0, "routed experts")
        hf = {**hf, "intermediate_size": hf.get("shared_intermediate_size")}
        if hf.get("position_embedding_type") != "rope":
            kw["nope_layers"] = tuple(range(len(types)))
    return TransformerConfig(**common_from_hf(
        hf, NAME, qkv_bias=bias, out_bias=bias, embed_multiplier=float(hf.get("embedding_multiplier", 1.0)),
        residual_multiplier=float(hf.get("residual_multiplier", 1.0)),
        query_scale=float(hf.get("attention_multiplier", 1.0)), logits_scaling=float(hf.get("logits_scaling", 1.0)),
        **kw))


def _hybrid(cfg: TransformerConfig) -> bool:
    """Written in Granite 4.0's format: read from one, or without rotary embeddings (which only it expresses)."""
    return bool(cfg.nope_layers) or cfg.extra.get("hf_config", {}).get("model_type") == HYBRID


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias != cfg.out_bias, qk_norm=cfg.qk_norm, moe=cfg.moe is not None,
                    mla=cfg.mla is not None, sliding_window=cfg.sliding_window > 0,
                    nope_layers=0 < len(cfg.nope_layers) < cfg.n_layers)
    out = {**common_to_hf(cfg, "granite", ARCHITECTURE), "attention_bias": cfg.qkv_bias, "mlp_bias": False,
           "embedding_multiplier": cfg.embed_multiplier, "residual_multiplier": cfg.residual_multiplier,
           "attention_multiplier": cfg.query_scale if cfg.query_scale is not None else cfg.head_dim ** -0.5,
           "logits_scaling": cfg.logits_scaling}
    if _hybrid(cfg):
        out.update({"model_type": HYBRID, "architectures": [HYBRID_ARCHITECTURE],
                    "layer_types": ["attention"] * cfg.n_layers, "num_local_experts": 0,
                    "shared_intermediate_size": cfg.ffn_dim,
                    "position_embedding_type": None if cfg.nope_layers else "rope"})
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    if not _hybrid(cfg):
        return llama_like(cfg, segments(cfg))
    out = llama_like(cfg, segments(cfg), dense_mlp=False)
    pre = "model.layers.{i}.shared_mlp"
    for seg, _, _, _ in segments(cfg):
        out += [Tensor((seg, "mlp", n), f"{pre}.input_linear.weight", "t1", piece=Piece(0, k, (cfg.ffn_dim,) * 2))
                for k, n in enumerate(("gate", "up"))]
        out.append(Tensor((seg, "mlp", "down"), f"{pre}.output_linear.weight", "t1"))
    return out
