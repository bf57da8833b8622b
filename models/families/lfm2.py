"""Liquid LFM2 (``model_type`` lfm2: LFM2-350M/700M/1.2B/2.6B and their fine-tunes): gated
short-convolution layers (``layer_types`` conv: ``models/layers/short_conv``) among grouped-query attention
layers with per-head q/k RMSNorm (``q_layernorm``, ``k_layernorm``), pre-norm blocks (``operator_norm``,
``ffn_norm``) with a SwiGLU MLP (``w1`` gate, ``w3`` up, ``w2`` down) whose width the config derives
(``block_auto_adjust_ff_dim``: 2/3 of ``block_ff_dim``, times ``block_ffn_dim_multiplier``, rounded up to
``block_multiple_of``), the final norm named ``embedding_norm``, tied embeddings by default. The convolution's
in_proj holds the B, C and x rows one after the other.

LFM2-MoE (``lfm2_moe``: LFM2-8B-A1B): the same layers with routed experts after ``num_dense_layers`` dense ones:
sigmoid scores, top-k chosen by score plus the per-expert ``expert_bias`` (selection only), renormalised
(``norm_topk_prob``), times ``routed_scaling_factor``; its dense MLPs are ``intermediate_size`` wide as given."""

from __future__ import annotations

from ..config import LinearAttnConfig, MoEConfig, TransformerConfig
from ..transformer import segments
from .base import (
    Piece,
    Tensor,
    checked_layer_types,
    common_from_hf,
    common_to_hf,
    expert_tensors,
    gqa_tensors,
    mlp_tensors,
    need,
    refuse,
    unsupported_cfg,
)

NAME = "lfm2"
MOE = "lfm2_moe"
MODEL_TYPES = (NAME, MOE)
ARCHITECTURE, MOE_ARCHITECTURE = "Lfm2ForCausalLM", "Lfm2MoeForCausalLM"


def layer_types(hf: dict) -> list[str]:
    """``layer_types`` (conv / full_attention), or the older ``full_attn_idxs`` (none given: all attention, as the
    reference reads it)."""
    n = need(hf, "num_hidden_layers")
    types = hf.get("layer_types")
    if types is None:
        full = hf.get("full_attn_idxs")
        full = range(n) if full is None else full
        types = ["full_attention" if i in full else "conv" for i in range(n)]
    return checked_layer_types(types, n, ("conv", "full_attention"))


def ffn_dim(hf: dict) -> int:
    """The MLP's width as the reference derives it from the config."""
    width = int(hf.get("block_ff_dim", hf.get("intermediate_size", 12288)))
    if hf.get("block_auto_adjust_ff_dim", True):
        width = int(2 * width / 3)
        mult = hf.get("block_ffn_dim_multiplier", 1.0)
        if mult is not None:
            of = int(hf.get("block_multiple_of", 256))
            width = of * ((int(mult * width) + of - 1) // of)
    return width


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "conv_bias", lambda v: not v, "biases on the short convolution and its projections")
    types = layer_types(hf)
    conv = tuple(i for i, t in enumerate(types) if t == "conv")
    d = need(hf, "hidden_size")
    lin = LinearAttnConfig(layers=conv, k_heads=0, v_heads=1, k_dim=0, v_dim=d, conv=int(hf.get("conv_L_cache", 3)),
                           kind="shortconv") if conv else None
    tied = hf.get("tie_word_embeddings", hf.get("tie_embedding", True))
    moe = None
    if hf.get("model_type") == MOE:
        moe = MoEConfig(n_experts=hf.get("num_experts", 32), top_k=hf.get("num_experts_per_tok", 4),
                        ffn_dim=hf.get("moe_intermediate_size", 1792), first_dense=hf.get("num_dense_layers", 2),
                        score="sigmoid", norm_topk=bool(hf.get("norm_topk_prob", True)),
                        scaling=float(hf.get("routed_scaling_factor", 1.0)),
                        score_bias=bool(hf.get("use_expert_bias", True)))
        width = hf.get("intermediate_size", 7168)
    else:
        width = ffn_dim(hf)
    hf = {**hf, "intermediate_size": width, "tie_word_embeddings": tied}
    return TransformerConfig(**common_from_hf(hf, NAME, qk_norm=True, linear=lin, moe=moe,
                                              norm_eps=float(hf.get("norm_eps", 1e-5))))


def to_hf(cfg: TransformerConfig) -> dict:
    lin, m = cfg.linear, cfg.moe
    moe_bad = m is not None and (m.score != "sigmoid" or m.n_group > 1 or m.n_shared > 0 or m.shared_gate
                                 or m.router_bias or m.expert_bias or bool(m.dense_layers))
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias, qk_norm=not cfg.qk_norm,
                    moe=moe_bad, mla=cfg.mla is not None, sliding_window=cfg.sliding_window > 0,
                    linear=lin is not None and lin.kind != "shortconv", norm_offset=cfg.norm_offset != 0.0)
    out = {**common_to_hf(cfg, NAME, ARCHITECTURE), "norm_eps": cfg.norm_eps, "conv_bias": False,
           "conv_L_cache": lin.conv if lin is not None else 3, "block_auto_adjust_ff_dim": False,
           "block_ff_dim": cfg.ffn_dim, "layer_types": ["full_attention" if i in cfg.attention_layers else "conv"
                                                        for i in range(cfg.n_layers)]}
    out.pop("rms_norm_eps", None)
    if m is not None:
        for k in ("block_auto_adjust_ff_dim", "block_ff_dim"):
            out.pop(k)
        out.update({"model_type": MOE, "architectures": [MOE_ARCHITECTURE], "num_experts": m.n_experts,
                    "num_experts_per_tok": m.top_k, "moe_intermediate_size": m.ffn_dim,
                    "num_dense_layers": m.first_dense, "use_expert_bias": m.score_bias,
                    "norm_topk_prob": m.norm_topk, "routed_scaling_factor": m.scaling})
    return out


def outer_tensors(cfg: TransformerConfig) -> list[Tensor]:
    """The embedding, the final norm (``embedding_norm``) and an untied head (LFM2's and LFM3's)."""
    out = [Tensor(("embed",), "model.embed_tokens.weight"),
           Tensor(("final_norm", "scale"), "model.embedding_norm.weight")]
    return out + ([] if cfg.tie_embeddings else [Tensor(("lm_head",), "lm_head.weight", "t1")])


def conv_tensors(seg: str, d: int, pre: str = "model.layers.{i}") -> list[Tensor]:
    """A short-convolution layer's: in_proj's B, C and x rows, the depthwise kernel, out_proj (LFM2's and LFM3's)."""
    out = [Tensor((seg, "attn", n), f"{pre}.conv.in_proj.weight", "t1", piece=Piece(0, j, (d, d, d)))
           for j, n in enumerate(("B", "C", "x"))]
    return out + [Tensor((seg, "attn", "conv"), f"{pre}.conv.conv.weight", "conv"),
                  Tensor((seg, "attn", "out"), f"{pre}.conv.out_proj.weight", "t1")]


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = outer_tensors(cfg)
    pre = "model.layers.{i}"
    for seg, _, _, moe in segments(cfg):
        out += [Tensor((seg, "attn_norm", "scale"), f"{pre}.operator_norm.weight"),
                Tensor((seg, "mlp_norm", "scale"), f"{pre}.ffn_norm.weight")]
        if not moe:
            out += mlp_tensors((seg, "mlp"), f"{pre}.feed_forward", ("w1", "w3", "w2"))
        else:
            out += expert_tensors(seg, f"{pre}.feed_forward", ("w1", "w3", "w2"))
            if cfg.moe.score_bias:
                out.append(Tensor((seg, "mlp", "score_bias"), f"{pre}.feed_forward.expert_bias"))
        if seg.startswith("linear"):
            out += conv_tensors(seg, cfg.d_model)
            continue
        att = [t for t in gqa_tensors(seg, cfg, f"{pre}.self_attn") if "_norm" not in t.hf]
        att = [Tensor(t.path, t.hf.replace("o_proj", "out_proj"), t.layout) if t.path[-1] == "o" else t for t in att]
        out += att + [Tensor((seg, "attn", f"{n}_norm", "scale"), f"{pre}.self_attn.{n}_layernorm.weight")
                      for n in ("q", "k")]
    return out
