"""OLMo Hybrid (``model_type`` olmo_hybrid): OLMo-3's attention layers (norms on the attention and MLP outputs only,
q/k RMSNorm over the whole projection, no sliding window) among Gated DeltaNet layers (``layer_types``: by default
three linear layers to one attention layer) that put their norms before the mixer and the MLP instead
(``LinearAttnConfig.pre_norm``). The Gated DeltaNet layers project q, k, v, the gate ``g``, ``a`` and ``b`` each on
its own (one tensor per part in the checkpoint), scale beta by 2 with ``linear_allow_neg_eigval`` (beta in
[0, 2]: ``LinearAttnConfig.beta_scale``), and norm their output with eps 1e-5 whatever ``rms_norm_eps`` says."""

from __future__ import annotations

import re

import numpy as np

from ..config import LinearAttnConfig, TransformerConfig
from ..transformer import segments
from . import olmo2
from .base import (
    ConfigError,
    Piece,
    RenamedView,
    Tensor,
    common_from_hf,
    common_to_hf,
    gqa_tensors,
    mlp_tensors,
    need,
    outer_tensors,
    refuse,
    unsupported_cfg,
)

NAME = "olmo_hybrid"
MODEL_TYPES = (NAME,)
ARCHITECTURE = "OlmoHybridForCausalLM"
LINEAR = "linear_attention"
OUT_NORM_EPS = 1e-5  # the reference builds the Gated DeltaNet output norm with this eps
# the linear layers' beta scale, output norm eps and pre-norms (hf_save.SWITCHES)
WRITES = ("linear.beta_scale", "linear.norm_eps", "linear.pre_norm")


def layer_types(hf: dict) -> list[str]:
    n = need(hf, "num_hidden_layers")
    types = hf.get("layer_types")
    if types is None:  # the reference's: every fourth layer attention, the last one attention at least
        types = [LINEAR if i % 4 != 3 else "full_attention" for i in range(n)]
        if "full_attention" not in types:
            types[-1] = "full_attention"
    bad = sorted({repr(t) for t in types if t not in (LINEAR, "full_attention")})
    if len(types) != n or bad:
        raise ConfigError(f"config.json: layer_types must give linear_attention or full_attention for each of the "
                          f"{n} layers (got {len(types)}{', unknown ' + ', '.join(bad) if bad else ''})")
    return list(types)


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "attention_bias", lambda v: not v, "attention biases")
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    hf = {"rms_norm_eps": 1e-6, **hf}
    d, heads = need(hf, "hidden_size"), need(hf, "num_attention_heads")
    types = layer_types(hf)
    k_heads = hf.get("linear_num_key_heads") or heads
    k_dim = hf.get("linear_key_head_dim") or int(0.75 * d / k_heads)
    lin = LinearAttnConfig(layers=tuple(i for i, t in enumerate(types) if t == LINEAR), k_heads=k_heads,
                           v_heads=hf.get("linear_num_value_heads") or heads, k_dim=k_dim,
                           v_dim=hf.get("linear_value_head_dim") or 2 * k_dim, conv=hf.get("linear_conv_kernel_dim", 4),
                           kind="gated_deltanet", beta_scale=2.0 if hf.get("linear_allow_neg_eigval", True) else 1.0,
                           norm_eps=OUT_NORM_EPS, pre_norm=True)
    # (no rope fields: transformers fills in the default rotary, so the reference's rotary-free mode is not
    # reachable from a config.json; neither is it here)
    return TransformerConfig(**common_from_hf(
        hf, NAME, qk_norm=True, qk_norm_whole=True, pre_norm=False, sandwich_norm=True, linear=lin))


def to_hf(cfg: TransformerConfig) -> dict:
    lin = cfg.linear
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias, qk_norm=not cfg.qk_norm,
                    qk_norm_whole=not cfg.qk_norm_whole, pre_norm=cfg.pre_norm, sandwich_norm=not cfg.sandwich_norm,
                    moe=cfg.moe is not None, mla=cfg.mla is not None, sliding_window=cfg.sliding_window > 0,
                    head_dim=cfg.head_dim * cfg.n_heads != cfg.d_model,  # (the format has no head_dim)
                    linear=lin is None or lin.kind != "gated_deltanet" or not lin.pre_norm
                    or lin.beta_scale not in (1.0, 2.0) or lin.norm_eps != OUT_NORM_EPS,
                    nope_layers=bool(cfg.nope_layers))
    out = common_to_hf(cfg, NAME, ARCHITECTURE)
    del out["head_dim"]  # (the reference's attention heads are hidden_size / num_attention_heads)
    return {**out, "attention_bias": False, "pad_token_id": None, "bos_token_id": None,
            "eos_token_id": None,  # (not OLMo's vocabulary's ids)
            "layer_types": [LINEAR if i in lin.layers else "full_attention" for i in range(cfg.n_layers)],
            "linear_num_key_heads": lin.k_heads, "linear_num_value_heads": lin.v_heads,
            "linear_key_head_dim": lin.k_dim, "linear_value_head_dim": lin.v_dim, "linear_conv_kernel_dim": lin.conv,
            "linear_allow_neg_eigval": lin.beta_scale == 2.0}


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    """transformers' names for the layers (the released ones are read through ``ReleasedView``)."""
    out = outer_tensors(cfg)
    pre = "model.layers.{i}"
    lin = cfg.linear
    for seg, *_ in segments(cfg):
        out += mlp_tensors((seg, "mlp"), f"{pre}.mlp")
        if not seg.startswith("linear"):  # OLMo-3's: norms on the outputs
            out += olmo2.post_norm_tensors(seg) + gqa_tensors(seg, cfg)
            continue
        la = f"{pre}.linear_attn"
        kd, vd = lin.k_heads * lin.k_dim, lin.v_heads * lin.v_dim
        out += [Tensor((seg, "attn_norm", "scale"), f"{pre}.input_layernorm.weight"),
                Tensor((seg, "mlp_norm", "scale"), f"{pre}.post_attention_layernorm.weight")]
        out += [Tensor((seg, "attn", n), f"{la}.{n}_proj.weight", "t1") for n in ("q", "k", "v", "b", "a")]
        out += [Tensor((seg, "attn", "z"), f"{la}.g_proj.weight", "t1"),
                Tensor((seg, "attn", "o"), f"{la}.o_proj.weight", "t2"),
                Tensor((seg, "attn", "dt_bias"), f"{la}.dt_bias"), Tensor((seg, "attn", "A_log"), f"{la}.A_log"),
                Tensor((seg, "attn", "norm"), f"{la}.o_norm.weight")]
        out += [Tensor((seg, "attn", f"conv_{n}"), f"{la}.conv1d.weight", "conv", piece=Piece(0, j, (kd, kd, vd)))
                for j, n in enumerate("qkv")]
    return out


# the released files' names of what transformers calls input_layernorm / post_attention_layernorm, and their
# convolution stored as three tensors (q, k, v channels) that transformers concatenates into one conv1d
RENAMES = ((".attention_layer_norm.", ".input_layernorm."), (".feedforward_layer_norm.", ".post_attention_layernorm."))
_CONV = re.compile(r"(.*\.linear_attn\.)([qkv])_conv1d\.weight$")


def _renamed(name: str) -> str:
    for a, b in RENAMES:
        name = name.replace(a, b)
    return name


class ReleasedView(RenamedView):
    """A checkpoint in the released layout seen with transformers' names (``tensors``); one already in that layout
    reads unchanged. The three convolution tensors are concatenated in q, k, v order, as transformers does (the
    split it writes back need not fall on the q/k/v boundaries: only the concatenation is meaningful)."""

    def __init__(self, ckpt, cfg: TransformerConfig):
        super().__init__(ckpt, _renamed)
        self.parts: dict[str, list[str]] = {}  # conv1d name -> its stored q, k, v tensors
        found: dict[str, dict[str, str]] = {}
        for name in ckpt.names():
            m = _CONV.match(name)
            if m:
                found.setdefault(m.group(1) + "conv1d.weight", {})[m.group(2)] = name
        for ours, parts in found.items():
            if set(parts) == set("qkv"):  # (an incomplete set stays named as stored, reported by the loader's check)
                self.parts[ours] = [parts[c] for c in "qkv"]
                for p in parts.values():
                    del self.to_stored[_renamed(p)]

    def __contains__(self, name: str) -> bool:
        return name in self.parts or super().__contains__(name)

    def names(self) -> list[str]:
        return super().names() + list(self.parts)

    def info(self, name: str):
        if name in self.parts:
            infos = [self.ckpt.info(p) for p in self.parts[name]]
            return infos[0][0], (sum(s[0] for _, s in infos), *infos[0][1][1:])
        return super().info(name)

    def get(self, name: str):
        if name in self.parts:
            return np.concatenate([np.asarray(self.ckpt.get(p)) for p in self.parts[name]], axis=0)
        return super().get(name)

    def file_of(self, name: str):
        return self.ckpt.file_of(self.parts[name][0]) if name in self.parts else super().file_of(name)

    def label(self, name: str) -> str:
        if name in self.parts:
            return "+".join(self.ckpt.label(p) for p in self.parts[name])
        return super().label(name)


checkpoint_view = ReleasedView  # (the hook models.hf.open_checkpoint looks for)
