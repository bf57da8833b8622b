"""Gemma 4 (``model_type`` gemma4_text, and the language model of the ``gemma4`` vision-language wrapper):
Gemma 3's layout (sliding-window and full layers, embeddings scaled by sqrt(d_model), GeGLU, norms before and
after attention and MLP, per-head q/k norms, a final logit softcap) with Gemma 4's own attention: queries
unscaled (the q norm does it), values RMS-normalised without a scale (``v_norm``), the full layers with heads of
their own size and key/value head count (``global_head_dim`` / ``num_global_key_value_heads``, or transformers
5's ``per_layer_config``) and, with ``attention_k_eq_v``, values that are the keys' projection itself
(``full_k_eq_v``); the full layers rotate by proportional rope (the leading quarter of each head's angles turn,
at frequencies of the whole head's width: rope type ``proportional``), the sliding ones by the plain rope at
their own base; every layer's output is scaled by a stored ``layer_scalar``. Its norms store the scale itself
(not Gemma 3's ``1 + w``).

With ``enable_moe_block`` (26B-A4B) every layer runs its dense MLP and a mixture of experts side by side, each
with norms of its own before and after, their outputs summed before the layer's post-MLP norm; the router reads
the layer's input RMS-normalised without a scale, times a learned scale and d_model ** -0.5, takes a softmax
top-k renormalised and scales each chosen expert's weight by a learned per-expert scale; the experts are stored
fused (``experts.gate_up_proj``, ``experts.down_proj``) as transformers releases them.

The small models (E2B, E4B) add per-layer input embeddings (``hidden_size_per_layer_input``: a table of
that many values per token and layer, ``embed_tokens_per_layer``, plus a projection of the token's embedding,
gated into each layer's output after its MLP) and, in their last ``num_kv_shared_layers`` layers, attention over
the keys/values of the last earlier layer of the same kind (no key/value projections: a checkpoint's are
ignored, as the reference ignores them; those layers' MLPs twice as wide with ``use_double_wide_mlp``).

Refused by name: bidirectional attention over text (``use_bidirectional_attention: all``)."""

from __future__ import annotations

from ..config import MoEConfig, TransformerConfig
from ..transformer import segments
from .base import (
    ConfigError,
    Piece,
    Tensor,
    checked_layer_types,
    common_from_hf,
    common_to_hf,
    every_nth_full,
    gqa_tensors,
    mlp_tensors,
    need,
    outer_tensors,
    refuse,
    rope_from_hf,
    sandwich_tensors,
    unsupported_cfg,
    with_defaults,
)

NAME = "gemma4"
MODEL_TYPES = ("gemma4_text",)
ARCHITECTURE = "Gemma4ForCausalLM"
ACTIVATIONS = ("gelu_tanh",)  # the MLP activation its format writes
WRITES = ("full_kv_heads", "full_head_dim", "full_k_eq_v", "v_norm", "layer_scalar", "moe.beside_dense",
          "moe.router_norm", "moe.expert_scale", "ple_dim", "kv_shared_layers", "double_wide_mlp")  # (SWITCHES)

# the reference config's defaults for what a config.json may leave out (Gemma4TextConfig)
DEFAULTS = {"head_dim": 256, "rms_norm_eps": 1e-6, "sliding_window": 512, "tie_word_embeddings": True,
            "hidden_size_per_layer_input": 256, "vocab_size_per_layer_input": 262_144,
            "max_position_embeddings": 131_072}
ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0}}


def _layer_types(hf: dict, n: int) -> list[str]:
    """``layer_types``, or five sliding layers in six; the last layer is always full (the reference forces it)."""
    types = checked_layer_types(hf.get("layer_types") or every_nth_full(n, 6), n)
    return types[:-1] + ["full_attention"]


def _full_overrides(hf: dict, types: list[str]) -> dict:
    """The full layers' head size and key/value heads: ``per_layer_config`` (transformers 5, by layer index; the
    same for every full layer, nothing for the sliding ones) or ``global_head_dim`` (512 unless given) and, with
    ``attention_k_eq_v``, ``num_global_key_value_heads``."""
    per = hf.get("per_layer_config")
    if per is None:
        out = {"head_dim": hf.get("global_head_dim") or 512}
        if hf.get("attention_k_eq_v") and hf.get("num_global_key_value_heads"):
            out["num_key_value_heads"] = hf["num_global_key_value_heads"]
        return out
    if not isinstance(per, dict):
        raise ConfigError("config.json: per_layer_config must map layer indices to field overrides")
    seen = {}
    for key, over in per.items():
        i = int(key)
        if not 0 <= i < len(types) or types[i] != "full_attention" or not isinstance(over, dict) or \
                set(over) - {"head_dim", "num_key_value_heads"}:
            raise ConfigError(f"config.json: per_layer_config[{key!r}]={over!r} is not supported (head_dim and "
                              "num_key_value_heads of full-attention layers)")
        seen[i] = over
    full = [i for i, t in enumerate(types) if t == "full_attention"]
    first = seen.get(full[0], {})
    if any(seen.get(i, {}) != first for i in full):
        raise ConfigError("config.json: per_layer_config gives the full-attention layers different overrides (one "
                          "set for all of them is supported)")
    return first


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(hf, DEFAULTS)
    refuse(hf, "use_bidirectional_attention", lambda v: v != "all", "text attending both ways")
    refuse(hf, "attention_bias", lambda v: not v, "attention biases")
    refuse(hf, "hidden_activation", lambda v: v in ("gelu_pytorch_tanh", "gelu_tanh"), "only gelu_pytorch_tanh")
    n = need(hf, "num_hidden_layers")
    types = _layer_types(hf, n)
    ple = hf.get("hidden_size_per_layer_input") or 0
    vocab = need(hf, "vocab_size")
    ple_vocab = hf["vocab_size_per_layer_input"] if ple else 0
    if ple and ple_vocab < vocab:
        raise ConfigError(f"config.json: vocab_size_per_layer_input={ple_vocab} is below vocab_size={vocab}: the "
                          "tokens past it would have no per-layer inputs")
    shared = hf.get("num_kv_shared_layers") or 0
    if not isinstance(shared, int) or not 0 <= shared < n:
        raise ConfigError(f"config.json: num_kv_shared_layers={shared!r} must leave some of the {n} layers their "
                          "own keys/values")
    if set(types[n - shared:]) - set(types[:n - shared]):
        raise ConfigError("config.json: num_kv_shared_layers: a layer type among the last "
                          f"{shared} layers has no earlier layer computing its keys/values")
    over = _full_overrides(hf, types)
    params = hf.get("rope_parameters") if isinstance(hf.get("rope_parameters"), dict) else {}
    rope = {k: {**ROPE[k], **(params.get(k) or {})} for k in ROPE}
    theta, scaling = rope_from_hf({"rope_parameters": rope["full_attention"]})
    local, local_scaling = rope_from_hf({"rope_parameters": rope["sliding_attention"]})
    if local_scaling:
        raise ConfigError("config.json: rope_parameters.sliding_attention scaling is not supported")
    kv = hf.get("num_key_value_heads") or need(hf, "num_attention_heads")
    moe = None
    if hf.get("enable_moe_block"):
        moe = MoEConfig(n_experts=need(hf, "num_experts"), top_k=need(hf, "top_k_experts"),
                        ffn_dim=need(hf, "moe_intermediate_size"), score="softmax", norm_topk=True,
                        beside_dense=True, router_norm=True, expert_scale=True)
    k_eq_v = bool(hf.get("attention_k_eq_v", False))
    common = common_from_hf(hf, NAME, rope_theta=theta, rope_scaling=scaling, embed_scale=True,
                            activation="gelu_tanh", query_scale=1.0, sandwich_norm=True, qk_norm=True,
                            final_softcap=hf.get("final_logit_softcapping"), sliding_window=int(hf["sliding_window"]),
                            layer_types=tuple("sliding" if t == "sliding_attention" else "full" for t in types),
                            rope_local_theta=local, v_norm=True, layer_scalar=True,
                            full_head_dim=over.get("head_dim", hf["head_dim"]),
                            full_kv_heads=over.get("num_key_value_heads", kv), full_k_eq_v=k_eq_v, moe=moe,
                            ple_dim=ple, ple_vocab=0 if ple_vocab == vocab else ple_vocab, kv_shared_layers=shared,
                            double_wide_mlp=bool(shared and hf.get("use_double_wide_mlp")))
    return TransformerConfig(**common)


def to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    unsupported_cfg(cfg, NAME, qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias, qk_norm=not cfg.qk_norm,
                    qk_norm_whole=cfg.qk_norm_whole, mla=cfg.mla is not None,
                    moe=m is not None and (m != MoEConfig(m.n_experts, m.top_k, m.ffn_dim, score="softmax",
                                                          norm_topk=True, beside_dense=True, router_norm=True,
                                                          expert_scale=True, impl=m.impl,
                                                          capacity_factor=m.capacity_factor)),
                    attn_softcap=cfg.attn_softcap is not None, norm_offset=cfg.norm_offset != 0.0,
                    embed_scale=not cfg.embed_scale, sandwich_norm=not cfg.sandwich_norm,
                    query_scale=cfg.query_scale != 1.0, v_norm=not cfg.v_norm, layer_scalar=not cfg.layer_scalar,
                    rope_dim=cfg.rope_dim > 0, nope_layers=bool(cfg.nope_layers),
                    layer_types=cfg.sliding_layers[-1])  # (the reference makes the last layer full)
    out = common_to_hf(cfg, "gemma4_text", ARCHITECTURE)
    del out["hidden_act"], out["rope_theta"], out["rope_scaling"]
    full = {"rope_type": "default", **(cfg.rope_scaling or {}), "rope_theta": cfg.rope_theta}
    over = {"head_dim": cfg.full_head_dim or cfg.head_dim, "num_key_value_heads": cfg.full_kv_heads or cfg.n_kv_heads}
    out.update(hidden_activation="gelu_pytorch_tanh", final_logit_softcapping=cfg.final_softcap,
               sliding_window=cfg.sliding_window or DEFAULTS["sliding_window"], attention_k_eq_v=cfg.full_k_eq_v,
               hidden_size_per_layer_input=cfg.ple_dim, vocab_size_per_layer_input=cfg.ple_vocab or cfg.vocab_size,
               num_kv_shared_layers=cfg.kv_shared_layers, use_double_wide_mlp=cfg.double_wide_mlp,
               enable_moe_block=m is not None, num_experts=m and m.n_experts, top_k_experts=m and m.top_k,
               moe_intermediate_size=m and m.ffn_dim,
               layer_types=["sliding_attention" if s else "full_attention" for s in cfg.sliding_layers],
               rope_parameters={"full_attention": full,
                                "sliding_attention": {"rope_type": "default",
                                                      "rope_theta": cfg.rope_local_theta or cfg.rope_theta}},
               per_layer_config={str(i): over for i, s in enumerate(cfg.sliding_layers) if not s})
    return out


def ignored(name: str, cfg: TransformerConfig) -> bool:
    """A shared layer's key/value projections and norms, as the reference skips them (its checkpoints may hold
    them)."""
    head, _, rest = name.partition("model.layers.")
    i, _, tail = rest.partition(".")
    return (not head and i.isdigit() and int(i) < cfg.n_layers and cfg.kv_owners[int(i)] != int(i)
            and tail in {f"self_attn.{n}.weight" for n in ("k_proj", "v_proj", "k_norm", "v_norm")})


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = outer_tensors(cfg)
    pre = "model.layers.{i}"
    if cfg.ple_dim:
        out += [Tensor(("ple_embed",), "model.embed_tokens_per_layer.weight"),
                Tensor(("ple_in",), "model.per_layer_model_projection.weight", "t1"),
                Tensor(("ple_norm", "scale"), "model.per_layer_projection_norm.weight")]
    for seg, _, _, moe in segments(cfg):
        out += sandwich_tensors(seg) + [Tensor((seg, "layer_scalar"), f"{pre}.layer_scalar")]
        out += gqa_tensors(seg, cfg, values=not (cfg.full_k_eq_v and seg.startswith("full_")),
                           keys="shared_" not in seg)
        if cfg.ple_dim:
            out += [Tensor((seg, "ple_gate"), f"{pre}.per_layer_input_gate.weight", "t1"),
                    Tensor((seg, "ple_proj"), f"{pre}.per_layer_projection.weight", "t1"),
                    Tensor((seg, "ple_norm", "scale"), f"{pre}.post_per_layer_input_norm.weight")]
        if not moe:
            out += mlp_tensors((seg, "mlp"), f"{pre}.mlp")
            continue
        i = cfg.moe.ffn_dim
        out += mlp_tensors((seg, "dense_mlp"), f"{pre}.mlp")
        out += [Tensor((seg, "post_dense_norm", "scale"), f"{pre}.post_feedforward_layernorm_1.weight"),
                Tensor((seg, "moe_norm", "scale"), f"{pre}.pre_feedforward_layernorm_2.weight"),
                Tensor((seg, "post_moe_norm", "scale"), f"{pre}.post_feedforward_layernorm_2.weight"),
                Tensor((seg, "mlp", "router"), f"{pre}.router.proj.weight", "t1"),
                Tensor((seg, "mlp", "router_scale"), f"{pre}.router.scale"),
                Tensor((seg, "mlp", "expert_scale"), f"{pre}.router.per_expert_scale"),
                Tensor((seg, "mlp", "down"), f"{pre}.experts.down_proj", "x1")]
        out += [Tensor((seg, "mlp", n), f"{pre}.experts.gate_up_proj", "x1", piece=Piece(1, k, (i, i)))
                for k, n in enumerate(("gate", "up"))]
    return out
