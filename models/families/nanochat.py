"""nanochat (``model_type`` nanochat: the nanochat-d20 / d32 chat models, whose own recipe ends in RL on GSM8K):
Llama's layout with every RMSNorm weightless (new switch ``norm_weight``: the layers', the q/k norms' and the
final one's; a checkpoint holds no norm tensors), the embeddings normed by that final norm before the first
layer (``embed_norm``), q/k normed after the rotary (``qk_norm_after_rope``), a rotary that turns the other way
(its rotate-half flips the other half's sign: ``rope_reverse``), an ungated squared-ReLU MLP stored as ``fc1`` /
``fc2``, and the logits soft-capped at ``final_logit_softcapping`` (15 unless given). ``attention_bias`` puts
biases on all four attention projections."""

from __future__ import annotations

from ..config import TransformerConfig
from ..transformer import segments
from .base import (
    Tensor,
    common_from_hf,
    common_to_hf,
    gqa_tensors,
    outer_tensors,
    refuse,
    unsupported_cfg,
    with_defaults,
)

NAME = "nanochat"
MODEL_TYPES = ("nanochat",)
ARCHITECTURE = "NanoChatForCausalLM"
ACTIVATIONS = ("relu2",)
WRITES = ("norm_weight", "embed_norm", "rope_reverse")  # (hf_save.SWITCHES)

# the reference config's defaults for what a config.json may leave out (NanoChatConfig)
DEFAULTS = {"rms_norm_eps": 1e-6, "final_logit_softcapping": 15.0, "max_position_embeddings": 2048,
            "hidden_act": "relu2"}


def from_hf(hf: dict) -> TransformerConfig:
    uncapped = "final_logit_softcapping" in hf and hf["final_logit_softcapping"] is None  # (absent: 15)
    hf = with_defaults(hf, DEFAULTS)
    refuse(hf, "hidden_act", lambda v: v == "relu2", "only relu2 (the ungated squared ReLU)")
    bias = bool(hf.get("attention_bias", False))
    return TransformerConfig(**common_from_hf(
        hf, NAME, qkv_bias=bias, out_bias=bias, qk_norm=True, qk_norm_after_rope=True, activation="relu2",
        final_softcap=None if uncapped else float(hf["final_logit_softcapping"]), norm_weight=False,
        embed_norm=True, rope_reverse=True))


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, norm_weight=cfg.norm_weight, embed_norm=not cfg.embed_norm,
                    rope_reverse=not cfg.rope_reverse, qk_norm=not cfg.qk_norm,
                    qk_norm_after_rope=not cfg.qk_norm_after_rope, qkv_bias=cfg.qkv_bias != cfg.out_bias,
                    moe=cfg.moe is not None, mla=cfg.mla is not None, linear=cfg.linear is not None,
                    sliding_window=cfg.sliding_window > 0, nope_layers=bool(cfg.nope_layers),
                    sandwich_norm=cfg.sandwich_norm, norm_offset=cfg.norm_offset != 0.0, embed_scale=cfg.embed_scale,
                    qk_norm_whole=cfg.qk_norm_whole, rope_interleave=cfg.rope_interleave, rope_dim=cfg.rope_dim > 0)
    return {**common_to_hf(cfg, "nanochat", ARCHITECTURE), "hidden_act": "relu2", "attention_bias": cfg.qkv_bias,
            "final_logit_softcapping": cfg.final_softcap}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = [t for t in outer_tensors(cfg) if t.path != ("final_norm", "scale")]
    for seg, *_ in segments(cfg):
        out += [t for t in gqa_tensors(seg, cfg) if not t.path[-2].endswith("_norm")]
        out += [Tensor((seg, "mlp", "up"), "model.layers.{i}.mlp.fc1.weight", "t1"),
                Tensor((seg, "mlp", "down"), "model.layers.{i}.mlp.fc2.weight", "t1")]
    return out
