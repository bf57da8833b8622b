"""NVIDIA Nemotron-H (``model_type`` nemotron_h: Nemotron-H 4B/8B/47B/56B, the reasoning models
Nemotron-Nano-9B-v2 / 12B-v2, and with routed experts Nemotron-3-Nano-30B-A3B and Nemotron-3-Super).

Its checkpoint layers are each one sub-layer after its own RMSNorm, with a residual add: a Mamba-2 mixer
(``M``), attention without rotary embeddings (``*``), an ungated squared-ReLU MLP (``-``: ``down(relu(up x)^2)``)
or routed experts (``E``), in the order ``layers_block_type`` (or the older ``hybrid_override_pattern``) gives.
A mixer followed by an MLP or experts is the same arithmetic as one of our blocks (norm, mixer, residual; norm,
MLP, residual), so each such pair is one model layer, and a mixer that no MLP follows is a mixer-only layer
(``TransformerConfig.mixer_only_layers``): the released patterns (``M-M-M*-...``, ``MEMEM*E...``) pair up this
way, with a mixer-only layer before each attention one. Each model layer's tensors name the checkpoint layers
it was made of (``Tensor.index``). An MLP that follows no mixer is refused by name.

The experts (``E``) are DeepSeek-V3's router (sigmoid scores, ``e_score_correction_bias`` for selection only,
grouped top-k, renormalised, times ``routed_scaling_factor``) over ungated squared-ReLU experts, plus one
ungated shared expert ``moe_shared_expert_intermediate_size`` wide; with ``moe_latent_size`` (Nemotron-3-Super)
the routed experts work in that narrower space, between ``fc1_latent_proj`` and ``fc2_latent_proj``
(``MoEConfig.latent_dim``), while the router and the shared expert see the full width. Multi-token-prediction
layers (``mtp.*``) are not used (ignored)."""

from __future__ import annotations

import dataclasses

from ..config import LinearAttnConfig, MoEConfig, TransformerConfig
from ..transformer import segments
from .base import ConfigError, Tensor, gqa_tensors, need, refuse, unsupported_cfg
from .granite import mamba_tensors

NAME = "nemotron_h"
MODEL_TYPES = (NAME,)
ARCHITECTURE = "NemotronHForCausalLM"
# a layer type in either spelling: the pattern's character, transformers 5's name, the older one
KINDS = {"M": "M", "linear_attention": "M", "mamba": "M", "*": "*", "full_attention": "*", "attention": "*",
         "-": "-", "mlp": "-", "E": "E", "moe": "E"}
NAMES = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}
MIXERS = "M*"
ACTIVATIONS = ("relu2",)  # the MLP activation its format writes
# the switches its format writes (hf_save.SWITCHES): mixer-only layers (a mixer no MLP layer follows), experts in a
# latent space (moe_latent_size)
WRITES = ("mixer_only_layers", "moe.latent_dim")
# checkpoint modules peft will not adapt in this model type (the Mamba-2 mixer's out_proj: its fused kernels read
# the weight directly); an adapter on one is refused by save_lora, saying so
PEFT_REFUSED = ("out_proj",)


def layer_kinds(hf: dict) -> list[str]:
    """One character per checkpoint layer (M, *, -, E), from ``layers_block_type`` (``layer_types``) or the older
    ``hybrid_override_pattern`` (neither: the reference's default)."""
    types = hf.get("layers_block_type") or hf.get("layer_types")
    field = "layers_block_type"
    if types is None and hf.get("hybrid_override_pattern") is not None:
        types, field = list(str(hf["hybrid_override_pattern"])), "hybrid_override_pattern"
    if types is None:
        types = ["linear_attention", "moe", "full_attention", "mlp"]
    bad = sorted({repr(t) for t in types if not isinstance(t, str) or t not in KINDS})
    if bad or not types:
        raise ConfigError(f"config.json: {field} entries {', '.join(bad) or '(none)'} are not layer types "
                          "(M / linear_attention, * / full_attention, - / mlp, E / moe)")
    return [KINDS[t] for t in types]


def blocks(kinds: list[str]) -> list[tuple[int, int | None]]:
    """Model layers as (checkpoint mixer layer, checkpoint MLP layer or None): each mixer with the MLP or experts
    right after it."""
    out: list[tuple[int, int | None]] = []
    for j, k in enumerate(kinds):
        if k in MIXERS:
            out.append((j, None))
        elif out and out[-1] == (j - 1, None):  # the mixer right before it has no MLP yet
            out[-1] = (j - 1, j)
        else:
            raise ConfigError(f"config.json: layer {j} ({NAMES[k]}) follows no Mamba-2 or attention layer (an MLP "
                              "layer is run with the mixer before it; two MLP layers in a row are not supported)")
    return out


def from_hf(hf: dict) -> TransformerConfig:
    for key, why in (("mlp_bias", "MLP biases"), ("use_bias", "Mamba-2 in_proj/out_proj biases"),
                     ("sliding_window", "sliding windows"),
                     ("attention_bias", "attention biases: the reference builds its projections without them")):
        refuse(hf, key, lambda v: not v, why)
    refuse(hf, "mlp_hidden_act", lambda v: v == "relu2", "only relu2, the released activation")
    refuse(hf, "mamba_hidden_act", lambda v: v == "silu", "only silu")
    kinds = layer_kinds(hf)
    pairs = blocks(kinds)
    d = need(hf, "hidden_size")
    heads = need(hf, "num_attention_heads")
    mixer = [kinds[m] for m, _ in pairs]
    mamba = tuple(b for b, k in enumerate(mixer) if k == "M")
    attention = tuple(b for b, k in enumerate(mixer) if k == "*")
    lin = None
    if mamba:
        m_heads, m_head = hf.get("mamba_num_heads", 128), hf.get("mamba_head_dim", 64)
        groups = hf.get("n_groups", hf.get("mamba_n_groups", 8))
        if m_heads % groups:
            raise ConfigError(f"config.json: n_groups={groups} does not divide mamba_num_heads={m_heads}")
        limit = hf.get("time_step_limit", hf.get("mamba_dt_limit")) or (0.0, float("inf"))
        lin = LinearAttnConfig(layers=mamba, k_heads=groups, v_heads=m_heads, k_dim=hf.get("ssm_state_size", 128),
                               v_dim=m_head, conv=hf.get("conv_kernel", hf.get("mamba_d_conv", 4)), kind="mamba2",
                               conv_bias=bool(hf.get("use_conv_bias", hf.get("mamba_conv_bias", True))),
                               dt_limit=(float(limit[0]), float(limit[1])))
    moe = None
    if "E" in kinds:
        moe = MoEConfig(n_experts=hf.get("n_routed_experts", 8), top_k=hf.get("num_experts_per_tok", 2),
                        ffn_dim=hf.get("moe_intermediate_size", 7688), n_shared=1,
                        shared_ffn=hf.get("moe_shared_expert_intermediate_size", 7688), score="sigmoid",
                        norm_topk=bool(hf.get("norm_topk_prob", True)),
                        scaling=float(hf.get("routed_scaling_factor", 1.0)), n_group=int(hf.get("n_group") or 1),
                        topk_group=int(hf.get("topk_group") or 1), score_bias=True,
                        dense_layers=tuple(b for b, (_, f) in enumerate(pairs) if f is not None and kinds[f] == "-"),
                        latent_dim=int(hf.get("moe_latent_size") or 0))
    return TransformerConfig(
        vocab_size=need(hf, "vocab_size"), d_model=d, n_layers=len(pairs), n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads", 8) or heads, head_dim=hf.get("head_dim", 128) or d // heads,
        ffn_dim=hf.get("intermediate_size", 21504), norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_seq_len=int(hf.get("max_position_embeddings", 4096)), family=NAME, extra={"hf_config": hf},
        activation="relu2", linear=lin, moe=moe, nope_layers=attention,
        mixer_only_layers=tuple(b for b, (_, f) in enumerate(pairs) if f is None))


def layer_types(cfg: TransformerConfig) -> list[str]:
    """The checkpoint's layer types of ``cfg``'s layers: each layer's mixer, then its MLP or experts."""
    lin = set(cfg.linear.layers) if cfg.linear is not None else set()
    out = []
    for b in range(cfg.n_layers):
        out.append("M" if b in lin else "*")
        if b not in cfg.mixer_only_layers:
            out.append("E" if cfg.moe is not None and cfg.moe.is_moe(b) else "-")
    return out


def to_hf(cfg: TransformerConfig) -> dict:
    m, lin = cfg.moe, cfg.linear
    moe_bad = m is not None and (m.score != "sigmoid" or not m.score_bias or m.group_score != "top2"
                                 or m.n_shared != 1 or m.shared_gate or m.router_bias or m.expert_bias)
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias, qk_norm=cfg.qk_norm,
                    mla=cfg.mla is not None, moe=moe_bad, sliding_window=cfg.sliding_window > 0,
                    linear=lin is not None and lin.kind != "mamba2", norm_offset=cfg.norm_offset != 0.0,
                    nope_layers=set(cfg.nope_layers) != set(cfg.attention_layers), sandwich_norm=cfg.sandwich_norm,
                    pre_norm=not cfg.pre_norm, attn_gate=cfg.attn_gate, attn_sinks=cfg.attn_sinks,
                    embed_multiplier=cfg.embed_multiplier != 1.0, residual_multiplier=cfg.residual_multiplier != 1.0,
                    logits_scaling=cfg.logits_scaling != 1.0, query_scale=cfg.query_scale is not None,
                    rope_dim=cfg.rope_dim != 0, attn_softcap=cfg.attn_softcap is not None,
                    final_softcap=cfg.final_softcap is not None, embed_scale=cfg.embed_scale)
    types = layer_types(cfg)
    out = {"architectures": [ARCHITECTURE], "model_type": NAME, "vocab_size": cfg.vocab_size,
           "hidden_size": cfg.d_model, "layers_block_type": [NAMES[k] for k in types],
           "num_hidden_layers": len(types), "num_attention_heads": cfg.n_heads,
           "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "intermediate_size": cfg.ffn_dim,
           "mlp_hidden_act": "relu2", "mlp_bias": False, "attention_bias": False, "use_bias": False,
           "layer_norm_epsilon": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
           "max_position_embeddings": cfg.max_seq_len, "mamba_hidden_act": "silu", "sliding_window": None,
           "num_nextn_predict_layers": 0}
    if lin is not None:
        out.update({"mamba_num_heads": lin.v_heads, "mamba_head_dim": lin.v_dim, "ssm_state_size": lin.k_dim,
                    "n_groups": lin.k_heads, "conv_kernel": lin.conv, "use_conv_bias": lin.conv_bias,
                    "time_step_limit": list(lin.dt_limit)})
    if m is not None:
        out.update({"n_routed_experts": m.n_experts, "num_experts_per_tok": m.top_k,
                    "moe_intermediate_size": m.ffn_dim, "n_shared_experts": 1,
                    "moe_shared_expert_intermediate_size": m.shared_ffn or m.ffn_dim, "norm_topk_prob": m.norm_topk,
                    "routed_scaling_factor": m.scaling, "n_group": m.n_group, "topk_group": m.topk_group,
                    "moe_latent_size": m.latent_dim or None})
    return out


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    pairs = blocks(layer_types(cfg))  # per model layer, its checkpoint mixer and MLP layers (as read)
    at_mixer, at_mlp = tuple(m for m, _ in pairs), tuple(-1 if f is None else f for _, f in pairs)
    out = [Tensor(("embed",), "backbone.embeddings.weight"), Tensor(("final_norm", "scale"), "backbone.norm_f.weight")]
    if not cfg.tie_embeddings:
        out.append(Tensor(("lm_head",), "lm_head.weight", "t1"))
    pre = "backbone.layers.{i}"
    for seg, _, _, moe in segments(cfg):
        mixer = [Tensor((seg, "attn_norm", "scale"), f"{pre}.norm.weight")]
        mixer += (mamba_tensors(seg, cfg, f"{pre}.mixer") if seg.startswith("linear")
                  else gqa_tensors(seg, cfg, f"{pre}.mixer"))
        out += [dataclasses.replace(t, index=at_mixer) for t in mixer]
        if "mixer" in seg:  # a mixer-only layer
            continue
        mlp = [Tensor((seg, "mlp_norm", "scale"), f"{pre}.norm.weight")]
        if moe:
            mlp += [Tensor((seg, "mlp", "router"), f"{pre}.mixer.gate.weight", "t1"),
                    Tensor((seg, "mlp", "score_bias"), f"{pre}.mixer.gate.e_score_correction_bias"),
                    Tensor((seg, "mlp", "up"), f"{pre}.mixer.experts.{{e}}.up_proj.weight", "t1"),
                    Tensor((seg, "mlp", "down"), f"{pre}.mixer.experts.{{e}}.down_proj.weight", "t1")]
            if cfg.moe.latent_dim:  # the experts' narrower space (Nemotron-3-Super)
                mlp += [Tensor((seg, "mlp", "latent_in"), f"{pre}.mixer.fc1_latent_proj.weight", "t1"),
                        Tensor((seg, "mlp", "latent_out"), f"{pre}.mixer.fc2_latent_proj.weight", "t1")]
        own = (seg, "mlp", "shared") if moe else (seg, "mlp")
        mlp += [Tensor((*own, n), f"{pre}.{'mixer.shared_experts' if moe else 'mixer'}.{n}_proj.weight", "t1")
                for n in ("up", "down")]
        out += [dataclasses.replace(t, index=at_mlp) for t in mlp]
    return out


def ignored(name: str, cfg: TransformerConfig) -> bool:
    """Multi-token-prediction layers (``mtp.*``) are not used."""
    return name.startswith("mtp.")
