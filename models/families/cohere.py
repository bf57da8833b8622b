"""Command R and Aya (``model_type`` cohere: Command R 35B, Aya 23, Aya Expanse 8B / 32B): Command R7B's layers
(``cohere2``: one LayerNorm without a bias feeding attention and the MLP side by side, rotary embedding on
adjacent pairs, logits times ``logit_scale``, head size ``hidden_size / heads``) with every layer full and
rotating. ``use_qk_norm`` (Command R+'s LayerNorm of each head's queries and keys, with weights per head) is
refused by name: no such norm here."""

from __future__ import annotations

import dataclasses

from ..config import TransformerConfig
from . import cohere2
from .base import Tensor, refuse, unsupported_cfg

NAME = "cohere"
MODEL_TYPES = (NAME,)
ARCHITECTURE = "CohereForCausalLM"
WRITES = cohere2.WRITES  # (hf_save.SWITCHES)


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "use_qk_norm", lambda v: not v, "per-head LayerNorm of queries and keys (Command R+)")
    n = hf.get("num_hidden_layers")
    cfg = cohere2.from_hf({**{k: v for k, v in hf.items() if k not in ("layer_types", "sliding_window")},
                           "layer_types": ["full_attention"] * (n if isinstance(n, int) else 0)})
    return dataclasses.replace(cfg, family=NAME, nope_layers=())  # (every layer rotates)


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, sliding_window=cfg.sliding_window > 0, nope_layers=bool(cfg.nope_layers))
    out = cohere2.to_hf(dataclasses.replace(cfg, family=cohere2.NAME,
                                            nope_layers=tuple(range(cfg.n_layers))))  # (cohere2's full layers)
    for k in ("layer_types", "sliding_window"):
        out.pop(k, None)
    out.update(model_type=NAME, architectures=[ARCHITECTURE], use_qk_norm=False)
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    return cohere2.tensors(cfg)
