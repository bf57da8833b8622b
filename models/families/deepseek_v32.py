"""DeepSeek-V3.2 (``model_type`` deepseek_v32: DeepSeek-V3.2-Exp, DeepSeek-V3.2, V3.2-Speciale): DeepSeek-V3's
layers with DeepSeek Sparse Attention. Each attention layer has a lightning indexer (``self_attn.indexer``:
``wq_b`` from the query latent, ``wk`` and its LayerNorm ``k_norm``, ``weights_proj``; ``index_n_heads`` heads of
``index_head_dim``) that restricts every query to its ``index_topk`` best keys (``models/layers/dsa``); the
multi-head latent attention, rotary key (interleaved pairs) and DeepSeekMoE are V3's. Which layers are dense is
``mlp_layer_types``, else the first ``first_k_dense_replace`` (3 by default). The multi-token-prediction layer
stored after the last one is not used."""

from __future__ import annotations

import dataclasses

from ..config import TransformerConfig
from . import deepseek_v3, glm4_moe_lite
from .base import ConfigError, Tensor, need, unsupported_cfg

NAME = "deepseek_v32"
MODEL_TYPES = (NAME,)
ARCHITECTURE = "DeepseekV32ForCausalLM"
WRITES = ("mla.index_topk",)  # DeepSeek Sparse Attention (hf_save.SWITCHES)
ignored = deepseek_v3.ignored


def from_hf(hf: dict) -> TransformerConfig:
    n = need(hf, "num_hidden_layers")
    if not hf.get("q_lora_rank"):
        raise ConfigError("config.json: q_lora_rank is required (the sparse-attention indexer reads the query "
                          "latent)")
    if not hf.get("mlp_layer_types"):
        first = min(int(hf.get("first_k_dense_replace", 3)), n)
        hf = {**hf, "mlp_layer_types": ["dense"] * first + ["sparse"] * (n - first)}
    cfg = glm4_moe_lite.from_hf({"rms_norm_eps": 1e-6, **hf, "rope_interleave": True})
    index = {k: hf.get(k, d) for k, d in (("index_topk", 2048), ("index_n_heads", 64), ("index_head_dim", 128))}
    bad = [k for k, v in index.items() if not (isinstance(v, int) and v > 0)]
    if bad or index["index_head_dim"] < cfg.mla.qk_rope_dim:
        key = bad[0] if bad else "index_head_dim"
        raise ConfigError(f"config.json: {key}={index[key]!r}: the indexer needs positive sizes, its head at least "
                          "qk_rope_head_dim wide")
    mla = dataclasses.replace(cfg.mla, index_topk=index["index_topk"], index_heads=index["index_n_heads"],
                              index_dim=index["index_head_dim"])
    return dataclasses.replace(cfg, family=NAME, mla=mla)


def to_hf(cfg: TransformerConfig) -> dict:
    a = cfg.mla
    unsupported_cfg(cfg, NAME, mla=a is None or not a.index_topk or not a.rope_interleave or a.index_rope_interleave)
    out = glm4_moe_lite.to_hf(dataclasses.replace(cfg, family=glm4_moe_lite.NAME,
                                                  mla=dataclasses.replace(a, index_topk=0)))
    del out["rope_interleave"]
    out.update(model_type=NAME, architectures=[ARCHITECTURE], index_topk=a.index_topk, index_n_heads=a.index_heads,
               index_head_dim=a.index_dim,
               first_k_dense_replace=next((i for i in range(cfg.n_layers) if cfg.moe.is_moe(i)), cfg.n_layers))
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = deepseek_v3.tensors(cfg)
    pre = "model.layers.{i}.self_attn.indexer"
    for seg, _, _, _ in deepseek_v3.segments(cfg):
        out += [Tensor((seg, "attn", "idx_q"), f"{pre}.wq_b.weight", "t1"),
                Tensor((seg, "attn", "idx_k"), f"{pre}.wk.weight", "t1"),
                Tensor((seg, "attn", "idx_k_norm"), f"{pre}.k_norm.weight"),
                Tensor((seg, "attn", "idx_k_bias"), f"{pre}.k_norm.bias"),
                Tensor((seg, "attn", "idx_w"), f"{pre}.weights_proj.weight", "t1")]
    return out
