"""EXAONE 3.0 / 3.5 and the EXAONE Deep reasoning models (``model_type`` exaone: LG AI's EXAONE-3.5-2.4B/7.8B/32B
and EXAONE-Deep-2.4B/7.8B/32B, which think in ``<thought>`` before answering): Llama's layers under GPT-2's
names (``transformer.wte``, ``transformer.h.N.ln_1``, ``attn.attention.{q,k,v,out}_proj``, ``ln_2``,
``mlp.c_fc_0`` (gate), ``c_fc_1`` (up), ``c_proj`` (down), ``transformer.ln_f``), which transformers also writes.
config.json spells three fields its own way (``num_layers``, ``layer_norm_epsilon``, ``activation_function``:
transformers' names read too) and leaves the rope base to the class (500,000)."""

from __future__ import annotations

import dataclasses
import re

from ..config import TransformerConfig
from ..transformer import segments
from . import llama
from .base import Tensor, aliased, llama_like, refuse, unsupported_cfg, with_defaults

NAME = "exaone"
MODEL_TYPES = (NAME,)
ARCHITECTURE = "ExaoneForCausalLM"

# the reference config class's defaults (ExaoneConfig) for what a config.json may leave out
DEFAULTS = {"vocab_size": 102_400, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
            "max_position_embeddings": 4096}
ALIASES = {"num_layers": "num_hidden_layers", "layer_norm_epsilon": "rms_norm_eps",
           "activation_function": "hidden_act"}  # released name -> transformers' (ExaoneConfig.attribute_map)
# transformers' (Llama's) tensor names -> the released ones
RENAMES = ((r"^model\.embed_tokens\.", "transformer.wte."), (r"^model\.norm\.", "transformer.ln_f."),
           (r"^model\.layers\.", "transformer.h."), (r"\.self_attn\.o_proj\.", ".attn.attention.out_proj."),
           (r"\.self_attn\.", ".attn.attention."), (r"\.input_layernorm\.", ".ln_1."),
           (r"\.post_attention_layernorm\.", ".ln_2."), (r"\.mlp\.gate_proj\.", ".mlp.c_fc_0."),
           (r"\.mlp\.up_proj\.", ".mlp.c_fc_1."), (r"\.mlp\.down_proj\.", ".mlp.c_proj."))


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(aliased(hf, ALIASES), DEFAULTS, theta=500_000.0)
    refuse(hf, "mlp_bias", lambda v: not v, "MLP biases")
    cfg = llama.from_hf({**hf, "model_type": llama.NAME})
    return dataclasses.replace(cfg, family=NAME)


def to_hf(cfg: TransformerConfig) -> dict:
    unsupported_cfg(cfg, NAME, sliding_window=cfg.sliding_window > 0)
    out = llama.to_hf(dataclasses.replace(cfg, family=llama.NAME))
    out.update(model_type=NAME, architectures=[ARCHITECTURE])
    return out


def _released(name: str) -> str:
    for pattern, repl in RENAMES:
        name = re.sub(pattern, repl, name)
    return name


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    return [dataclasses.replace(t, hf=_released(t.hf)) for t in llama_like(cfg, segments(cfg))]
