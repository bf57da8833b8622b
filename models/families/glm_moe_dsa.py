"""GLM-5 (``model_type`` glm_moe_dsa): DeepSeek-V3.2's layers (multi-head latent attention with DeepSeek Sparse
Attention, DeepSeekMoE) under GLM's defaults, its indexer rotating interleaved pairs. Layers that reuse an
earlier layer's key selection instead of running their own indexer (``indexer_types`` "shared", from
``index_topk_freq`` / ``index_skip_topk_offset`` or ``index_topk_pattern``: GLM-5.2's IndexShare) are refused by
name; every layer running its own indexer (the default) loads."""

from __future__ import annotations

import dataclasses

from ..config import TransformerConfig
from . import deepseek_v32
from .base import ConfigError, Tensor, need, unsupported_cfg

NAME = "glm_moe_dsa"
MODEL_TYPES = (NAME,)
ARCHITECTURE = "GlmMoeDsaForCausalLM"
WRITES = ("mla.index_topk",)  # DeepSeek Sparse Attention (hf_save.SWITCHES)
ignored = deepseek_v32.ignored


def indexer_types(hf: dict) -> list[str]:
    """Per layer "full" (its own indexer) or "shared" (the previous full layer's selection), as the reference
    derives them."""
    n = need(hf, "num_hidden_layers")
    if hf.get("indexer_types") is not None:
        return list(hf["indexer_types"])
    pattern = hf.get("index_topk_pattern")
    if pattern is not None:
        return [{"F": "full", "S": "shared"}.get(c, c) for c in pattern] if isinstance(pattern, str) else list(pattern)
    freq, offset = max(int(hf.get("index_topk_freq") or 1), 1), int(hf.get("index_skip_topk_offset", 2))
    return ["full" if max(i - offset + 1, 0) % freq == 0 else "shared" for i in range(n)]


def from_hf(hf: dict) -> TransformerConfig:
    types = indexer_types(hf)
    shared = [i for i, t in enumerate(types) if t != "full"]
    if shared or len(types) != need(hf, "num_hidden_layers"):
        raise ConfigError(f"config.json: indexer_types: layers {shared} reuse another layer's key selection "
                          "(IndexShare), which is not supported here: every layer must run its own indexer")
    defaults = {"rms_norm_eps": 1e-5, "index_n_heads": 32, "first_k_dense_replace": 3}
    cfg = deepseek_v32.from_hf({**defaults, **hf})
    return dataclasses.replace(cfg, family=NAME, mla=dataclasses.replace(cfg.mla, index_rope_interleave=True))


def to_hf(cfg: TransformerConfig) -> dict:
    a = cfg.mla
    unsupported_cfg(cfg, NAME, mla=a is None or not a.index_topk or not a.index_rope_interleave)
    out = deepseek_v32.to_hf(dataclasses.replace(cfg, family=deepseek_v32.NAME,
                                                 mla=dataclasses.replace(a, index_rope_interleave=False)))
    out.update(model_type=NAME, architectures=[ARCHITECTURE], indexer_types=["full"] * cfg.n_layers)
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    return deepseek_v32.tensors(cfg)
