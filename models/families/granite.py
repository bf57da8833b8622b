"""IBM Granite 3.x (``model_type`` granite; Granite 3.2/3.3 instruct models reason in ``<think>`` when their chat
template is asked to): the Llama layout with the four scalars of its muP parametrisation: embeddings times
``embedding_multiplier``, each layer's attention and MLP outputs times ``residual_multiplier`` before their
residual adds, ``attention_multiplier`` as the softmax scale (in place of 1/sqrt(head_dim)), and logits divided
by ``logits_scaling``. ``attention_bias`` puts biases on all four attention projections, as Llama's.

Granite 4.0's format (``granitemoehybrid``) is the same model with its MLP under another name
(``shared_mlp.input_linear``: gate then up rows; ``output_linear``), rotary embeddings only with
``position_embedding_type: rope``, and optionally Mamba-2 layers (``layer_types`` ``mamba``: the "H" models,
``models/layers/mamba2``; their ``in_proj`` holds z, x, B, C and dt rows one after the other, ``conv1d`` the
x, B and C channels) and routed experts beside the shared MLP (``block_sparse_moe``: softmax top-k
renormalised, every expert's gate/up rows in one ``input_linear``): Granite-4.0-Micro (all attention),
H-Micro, H-1B, H-350M (hybrids) and H-Tiny, H-Small (hybrids with experts) load here."""

from __future__ import annotations

from ..config import LinearAttnConfig, MoEConfig, TransformerConfig
from ..transformer import segments
from .base import (
    ConfigError,
    Piece,
    Tensor,
    common_from_hf,
    common_to_hf,
    llama_like,
    need,
    outer_tensors,
    refuse,
    unsupported_cfg,
)

NAME = "granite"
MODEL_TYPES = ("granite", "granitemoehybrid")
ARCHITECTURE = "GraniteForCausalLM"
HYBRID, HYBRID_ARCHITECTURE = "granitemoehybrid", "GraniteMoeHybridForCausalLM"
MAMBA = ("mamba", "linear_attention")  # a Mamba-2 layer's layer_types entry (transformers 4, 5)
ATTENTION = ("attention", "full_attention")


def mamba_from_hf(hf: dict, layers: list[int]) -> LinearAttnConfig:
    """The Mamba-2 layers' shapes (``mamba_*`` fields; head size "auto": expand * hidden / heads)."""
    refuse(hf, "mamba_proj_bias", lambda v: not v, "Mamba-2 in_proj/out_proj biases")
    d, heads = need(hf, "hidden_size"), hf.get("mamba_n_heads", 128)
    inner = hf.get("mamba_expand", 2) * d
    head = hf.get("mamba_d_head", "auto")
    head = inner // heads if head in ("auto", None) else head
    groups = hf.get("mamba_n_groups", 1)
    if head * heads != inner or heads % groups:
        raise ConfigError(f"config.json: mamba_n_heads={heads} x mamba_d_head={head} must equal mamba_expand x "
                          f"hidden_size={inner}, with mamba_n_groups={groups} dividing the heads")
    limit = hf.get("time_step_limit") or (0.0, float("inf"))
    return LinearAttnConfig(layers=tuple(layers), k_heads=groups, v_heads=heads, k_dim=hf.get("mamba_d_state", 256),
                            v_dim=head, conv=hf.get("mamba_d_conv", 4), kind="mamba2",
                            conv_bias=bool(hf.get("mamba_conv_bias", True)),
                            dt_limit=(float(limit[0]), float(limit[1])))


def from_hf(hf: dict) -> TransformerConfig:
    refuse(hf, "mlp_bias", lambda v: not v, "MLP biases")
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    bias = bool(hf.get("attention_bias", False))
    kw = {}
    if hf.get("model_type") == HYBRID:
        n = need(hf, "num_hidden_layers")
        types = list(hf.get("layer_types") or hf.get("layers_block_type") or ["mamba"] * n)  # (the reference's)
        bad = sorted({str(t) for t in types if t not in MAMBA + ATTENTION})
        if len(types) != n or bad:
            raise ConfigError(f"config.json: layer_types must give mamba or attention for each of the {n} layers "
                              f"(got {len(types)} entries{', unknown ' + repr(bad) if bad else ''})")
        mamba = [i for i, t in enumerate(types) if t in MAMBA]
        if mamba:
            kw["linear"] = mamba_from_hf(hf, mamba)
        shared = hf.get("shared_intermediate_size", 1024)  # (the reference's defaults, here and for the experts)
        experts = hf.get("num_local_experts", 8)
        if experts:
            kw["moe"] = MoEConfig(n_experts=experts, top_k=hf.get("num_experts_per_tok", 2),
                                  ffn_dim=hf.get("intermediate_size", 11008), n_shared=1, shared_ffn=shared,
                                  aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)))
        hf = {**hf, "intermediate_size": shared}
        if hf.get("position_embedding_type") != "rope":
            kw["nope_layers"] = tuple(i for i in range(n) if i not in mamba)
    return TransformerConfig(**common_from_hf(
        hf, NAME, qkv_bias=bias, out_bias=bias, embed_multiplier=float(hf.get("embedding_multiplier", 1.0)),
        residual_multiplier=float(hf.get("residual_multiplier", 1.0)),
        query_scale=float(hf.get("attention_multiplier", 1.0)), logits_scaling=float(hf.get("logits_scaling", 1.0)),
        **kw))


def _hybrid(cfg: TransformerConfig) -> bool:
    """Written in Granite 4.0's format: read from one, or with what only it expresses (no rotary embeddings,
    Mamba-2 layers, routed experts)."""
    return (bool(cfg.nope_layers) or cfg.linear is not None or cfg.moe is not None
            or cfg.extra.get("hf_config", {}).get("model_type") == HYBRID)


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    moe_bad = m is not None and (m.score != "softmax" or not m.norm_topk or m.n_group > 1 or m.scaling != 1.0
                                 or m.score_bias or m.router_bias or m.expert_bias or m.n_shared != 1 or m.shared_gate
                                 or m.first_dense > 0 or bool(m.dense_layers))
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias != cfg.out_bias, qk_norm=cfg.qk_norm, moe=moe_bad,
                    mla=cfg.mla is not None, sliding_window=cfg.sliding_window > 0,
                    linear=cfg.linear is not None and cfg.linear.kind != "mamba2",
                    nope_layers=bool(cfg.nope_layers) and set(cfg.nope_layers) != set(cfg.attention_layers))
    out = {**common_to_hf(cfg, "granite", ARCHITECTURE), "attention_bias": cfg.qkv_bias, "mlp_bias": False,
           "embedding_multiplier": cfg.embed_multiplier, "residual_multiplier": cfg.residual_multiplier,
           "attention_multiplier": cfg.query_scale if cfg.query_scale is not None else cfg.head_dim ** -0.5,
           "logits_scaling": cfg.logits_scaling}
    if _hybrid(cfg):
        out.update({"model_type": HYBRID, "architectures": [HYBRID_ARCHITECTURE],
                    "layer_types": ["mamba" if i not in cfg.attention_layers else "attention"
                                    for i in range(cfg.n_layers)], "num_local_experts": 0,
                    "shared_intermediate_size": cfg.ffn_dim,
                    "position_embedding_type": None if cfg.nope_layers else "rope"})
        if m is not None:
            out.update({"num_local_experts": m.n_experts, "num_experts_per_tok": m.top_k,
                        "intermediate_size": m.ffn_dim, "shared_intermediate_size": m.shared_ffn or m.ffn_dim,
                        "router_aux_loss_coef": m.aux_loss_coef})
        if cfg.linear is not None:
            out.update(mamba_hf_fields(cfg))
    return out


def mamba_hf_fields(cfg: TransformerConfig) -> dict:
    """The ``mamba_*`` fields of config.json (Granite 4.0's and Bamba's)."""
    lin = cfg.linear
    if (lin.v_heads * lin.v_dim) % cfg.d_model:
        raise ConfigError(f"TransformerConfig.linear: {lin.v_heads} Mamba-2 heads of {lin.v_dim} are not a "
                          f"multiple of d_model={cfg.d_model} (mamba_expand is an integer)")
    return {"mamba_n_heads": lin.v_heads, "mamba_n_groups": lin.k_heads, "mamba_d_state": lin.k_dim,
            "mamba_d_head": lin.v_dim, "mamba_d_conv": lin.conv, "mamba_conv_bias": lin.conv_bias,
            "mamba_proj_bias": False, "time_step_limit": list(lin.dt_limit),
            "mamba_expand": lin.v_heads * lin.v_dim // cfg.d_model}


def mamba_tensors(seg: str, cfg: TransformerConfig, prefix: str = "model.layers.{i}.mamba",
                  module: str = "attn") -> list[Tensor]:
    """A Mamba-2 mixer (the block's ``module``): in_proj rows z, x, B, C, dt; conv1d (and its bias) channels x,
    B, C; the output norm's weight unless the mixer has none."""
    lin = cfg.linear
    hp, gn = lin.v_heads * lin.v_dim, lin.k_heads * lin.k_dim
    rows, chans = (hp, hp, gn, gn, lin.v_heads), (hp, gn, gn)
    out = [Tensor((seg, module, n), f"{prefix}.in_proj.weight", "t1", piece=Piece(0, j, rows))
           for j, n in enumerate(("z", "x", "B", "C", "dt"))]
    out += [Tensor((seg, module, f"conv_{n}"), f"{prefix}.conv1d.weight", "conv", piece=Piece(0, j, chans))
            for j, n in enumerate("xBC")]
    if lin.conv_bias:
        out += [Tensor((seg, module, f"conv_{n}_bias"), f"{prefix}.conv1d.bias", "flat", piece=Piece(0, j, chans))
                for j, n in enumerate("xBC")]
    out += [Tensor((seg, module, n), f"{prefix}.{n}") for n in ("dt_bias", "A_log", "D")]
    if lin.norm != "none":
        out.append(Tensor((seg, module, "norm"), f"{prefix}.norm.weight", "flat"))
    return out + [Tensor((seg, module, "o"), f"{prefix}.out_proj.weight", "t2")]


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    if not _hybrid(cfg):
        return llama_like(cfg, segments(cfg))
    segs = segments(cfg)
    out = llama_like(cfg, [s for s in segs if not s[0].startswith("linear")], dense_mlp=False)
    out += llama_like(cfg, [s for s in segs if s[0].startswith("linear")], attention=False, dense_mlp=False)[
        len(outer_tensors(cfg)):]
    out += [t for s in segs if s[0].startswith("linear") for t in mamba_tensors(s[0], cfg)]
    for seg, _, _, moe in segs:
        own = (seg, "mlp", "shared") if moe else (seg, "mlp")  # the MoE layers' shared expert is this MLP
        out += shared_mlp_tensors(own, (cfg.moe.shared_ffn or cfg.moe.ffn_dim) if moe else cfg.ffn_dim)
        if moe:
            out += expert_tensors(seg, cfg)
    return out


def shared_mlp_tensors(own: tuple[str, ...], width: int) -> list[Tensor]:
    """Granite's MLP under ``shared_mlp``: ``input_linear`` gate then up rows of ``width``, ``output_linear``."""
    pre = "model.layers.{i}.shared_mlp"
    return [Tensor((*own, n), f"{pre}.input_linear.weight", "t1", piece=Piece(0, k, (width,) * 2))
            for k, n in enumerate(("gate", "up"))] + [Tensor((*own, "down"), f"{pre}.output_linear.weight", "t1")]


def expert_tensors(seg: str, cfg: TransformerConfig) -> list[Tensor]:
    """Granite-MoE's experts: every expert's weights in one tensor per layer, ``input_linear`` [E, 2I, d] (gate
    rows, then up) and ``output_linear`` [E, d, I], and the router's ``router.layer``."""
    ex = "model.layers.{i}.block_sparse_moe"
    i = cfg.moe.ffn_dim
    return [Tensor((seg, "mlp", "router"), f"{ex}.router.layer.weight", "t1"),
            Tensor((seg, "mlp", "down"), f"{ex}.output_linear.weight", "x1")] + [
        Tensor((seg, "mlp", n), f"{ex}.input_linear.weight", "x1", piece=Piece(1, k, (i, i)))
        for k, n in enumerate(("gate", "up"))]
