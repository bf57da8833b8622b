"""Lara Mini (``model_type`` lara_mini): Qwen3.5's Gated DeltaNet layers (``qwen3_5``) among sliding-window
attention layers with rotary and full attention layers without (``layer_types``; by default the pattern linear,
sliding, linear, full, sliding), plain-weight RMSNorms (not Qwen3.5's ``1 + w``), per-head q/k norms, no output
gate; every layer routes over softmax top-k experts (renormalised with ``norm_topk_prob``) beside an ungated shared
expert. The released files fuse each linear layer's input projections into one ``in_proj`` (rows q, k, v, z, b,
a) and name its gated norm ``out_norm``, and hold the routed experts fused (``experts.gate_up_proj`` [E, 2I, d],
``experts.down_proj`` [E, d, I]), as transformers saves them too: read and written so."""

from __future__ import annotations

from ..config import MoEConfig, TransformerConfig
from ..transformer import segments
from . import qwen3_5
from .base import (
    ConfigError,
    Piece,
    Tensor,
    checked_layer_types,
    common_from_hf,
    common_to_hf,
    gqa_tensors,
    mlp_tensors,
    need,
    outer_tensors,
    refuse,
    rope_from_hf,
    unsupported_cfg,
    with_defaults,
)

NAME = "lara_mini"
MODEL_TYPES = (NAME,)
ARCHITECTURE = "LaraMiniForCausalLM"

# the reference config's defaults for what a config.json may leave out (LaraMiniConfig)
DEFAULTS = {"vocab_size": 151_936, "hidden_size": 1024, "num_hidden_layers": 34, "num_attention_heads": 16,
            "num_key_value_heads": 4, "head_dim": 128, "max_position_embeddings": 131_072, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128,
            "linear_value_head_dim": 128, "linear_num_key_heads": 8, "linear_num_value_heads": 16,
            "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512, "num_experts_per_tok": 4,
            "num_experts": 128, "norm_topk_prob": True, "router_aux_loss_coef": 0.001, "sliding_window": 512}
PATTERN = ("linear_attention", "sliding_attention", "linear_attention", "full_attention", "sliding_attention")
KINDS = ("linear_attention", "sliding_attention", "full_attention")


def _layer_types(hf: dict, n: int) -> list[str]:
    types = checked_layer_types(hf.get("layer_types") or [PATTERN[i % len(PATTERN)] for i in range(n)], n, KINDS)
    if all(t == "linear_attention" for t in types):
        raise ConfigError("config.json: layer_types has no attention layer (at least one is needed)")
    return list(types)


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(hf, DEFAULTS, theta=10_000.0)
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    refuse(hf, "attention_bias", lambda v: not v, "attention biases")
    n = need(hf, "num_hidden_layers")
    types = _layer_types(hf, n)
    lin = qwen3_5.linear_from_hf({**hf, "layer_types": ["linear_attention" if t == "linear_attention" else
                                                        "full_attention" for t in types]})
    theta, scaling = rope_from_hf(hf)
    shared = int(hf["shared_expert_intermediate_size"] or 0)
    moe = MoEConfig(n_experts=need(hf, "num_experts"), top_k=need(hf, "num_experts_per_tok"),
                    ffn_dim=need(hf, "moe_intermediate_size"), score="softmax", norm_topk=bool(hf["norm_topk_prob"]),
                    n_shared=1 if shared else 0, shared_ffn=shared,
                    aux_loss_coef=float(hf["router_aux_loss_coef"]))
    sliding = tuple("sliding" if t == "sliding_attention" else "full" for t in types)
    common = common_from_hf({**hf, "intermediate_size": hf.get("intermediate_size") or shared or hf[
        "moe_intermediate_size"]}, NAME, qk_norm=True, linear=lin, moe=moe, rope_theta=theta, rope_scaling=scaling,
        nope_layers=tuple(i for i, t in enumerate(types) if t == "full_attention"),
        sliding_window=int(hf["sliding_window"]) if "sliding" in sliding else 0,
        layer_types=sliding if "sliding" in sliding else None)
    return TransformerConfig(**common)


def to_hf(cfg: TransformerConfig) -> dict:
    m, lin = cfg.moe, cfg.linear
    moe_bad = m is None or m != MoEConfig(
        m.n_experts, m.top_k, m.ffn_dim, score="softmax", norm_topk=m.norm_topk, n_shared=m.n_shared,
        shared_ffn=m.shared_ffn, aux_loss_coef=m.aux_loss_coef, impl=m.impl,
        capacity_factor=m.capacity_factor) or m.n_shared > 1 or (m.n_shared == 1 and not m.shared_ffn)
    lin_layers = set(lin.layers) if lin is not None else set()
    full = [i for i in range(cfg.n_layers) if i not in lin_layers and not cfg.sliding_layers[i]]
    unsupported_cfg(cfg, NAME, moe=moe_bad, qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias, qk_norm=not cfg.qk_norm,
                    qk_norm_whole=cfg.qk_norm_whole, mla=cfg.mla is not None, attn_gate=cfg.attn_gate,
                    linear=lin is None or lin.kind != "gated_deltanet" or lin.parallel,
                    norm_offset=cfg.norm_offset != 0.0, sandwich_norm=cfg.sandwich_norm, rope_dim=cfg.rope_dim > 0,
                    rope_local_theta=cfg.rope_local_theta is not None,
                    nope_layers=sorted(cfg.nope_layers) != full)  # (the full layers and only they rotate nowhere)
    out = {**common_to_hf(cfg, NAME, ARCHITECTURE), **qwen3_5.linear_to_hf(cfg)}
    out.update(layer_types=["linear_attention" if i in lin_layers else "sliding_attention" if s else "full_attention"
                            for i, s in enumerate(cfg.sliding_layers)],
               sliding_window=cfg.sliding_window or DEFAULTS["sliding_window"], attention_bias=False,
               num_experts=m.n_experts, num_experts_per_tok=m.top_k, moe_intermediate_size=m.ffn_dim,
               shared_expert_intermediate_size=m.shared_ffn if m.n_shared else 0, norm_topk_prob=m.norm_topk,
               router_aux_loss_coef=m.aux_loss_coef, pad_token_id=None, bos_token_id=None,
               eos_token_id=None)  # (not Lara Mini's vocabulary's ids)
    out.pop("intermediate_size", None)
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = outer_tensors(cfg)
    lin = cfg.linear
    pre = "model.layers.{i}"
    i = cfg.moe.ffn_dim
    for seg, _, _, _ in segments(cfg):
        out += [Tensor((seg, "attn_norm", "scale"), f"{pre}.input_layernorm.weight"),
                Tensor((seg, "mlp_norm", "scale"), f"{pre}.post_attention_layernorm.weight"),
                Tensor((seg, "mlp", "router"), f"{pre}.mlp.gate.weight", "t1"),
                Tensor((seg, "mlp", "down"), f"{pre}.mlp.experts.down_proj", "x1")]
        out += [Tensor((seg, "mlp", n), f"{pre}.mlp.experts.gate_up_proj", "x1", piece=Piece(1, k, (i, i)))
                for k, n in enumerate(("gate", "up"))]
        if cfg.moe.n_shared:
            out += mlp_tensors((seg, "mlp", "shared"), f"{pre}.mlp.shared_expert")
        if not seg.startswith("linear"):
            out += gqa_tensors(seg, cfg, f"{pre}.self_attn")
            continue
        kd, vd = lin.k_heads * lin.k_dim, lin.v_heads * lin.v_dim
        rows = (kd, kd, vd, vd, lin.v_heads, lin.v_heads)
        out += [Tensor((seg, "attn", n), f"{pre}.linear_attn.in_proj.weight", "t1", piece=Piece(0, j, rows))
                for j, n in enumerate(("q", "k", "v", "z", "b", "a"))]
        out += [t for t in qwen3_5.linear_tensors(seg, cfg, f"{pre}.linear_attn") if ".in_proj_" not in t.hf
                and not t.hf.endswith(".norm.weight")]
        out.append(Tensor((seg, "attn", "norm"), f"{pre}.linear_attn.out_norm.weight"))
    return out
