"""Kimi Linear (``model_type`` kimi_linear, Kimi-Linear-48B-A3B): Kimi Delta Attention layers
(``models/layers/gated_deltanet.KimiDeltaAttention``: the gated delta rule with a decay per key dimension through a
low-rank projection, a low-rank sigmoid output gate) among DeepSeek-V3's latent-attention layers, which here
rotate nowhere (the latent's rotary part is kept, unrotated: every layer is NoPE), and DeepSeekMoE (sigmoid
scores with the selection bias, grouped top-k, ``routed_scaling_factor``, shared experts) after the first
``first_k_dense_replace`` dense layers.

config.json: the released files describe the linear layers in ``linear_attn_config`` (1-based
``full_attn_layers`` / ``kda_layers``, ``head_dim``, ``num_heads``, ``short_conv_kernel_size``); transformers
writes ``layer_types``, ``linear_head_dim``, ``linear_num_heads``, ``linear_conv_kernel_dim`` and
``mlp_layer_types``: both are read, and both written. Its experts fields are spelled ``num_experts``,
``num_experts_per_token``, ``num_shared_experts``, ``moe_renormalize``, ``num_expert_group`` (transformers' aliases
``num_local_experts`` ... are read too). Tensors: the released names (the three convolutions ``q/k/v_conv1d``,
the forget gate's ``f_a_proj``/``f_b_proj``/``dt_bias``/``A_log`` on ``self_attn``, experts under
``block_sparse_moe`` as ``w1``/``w3``/``w2``, the dense layers' MLP under ``mlp``), which transformers also writes,
except that it names the dense MLP ``block_sparse_moe`` too: read either way. The output layer is never tied to
the embeddings (the reference reads ``lm_head.weight`` whatever ``tie_word_embeddings`` says)."""

from __future__ import annotations

import re

from ..config import LinearAttnConfig, MoEConfig, TransformerConfig
from ..transformer import segments
from . import deepseek_v3
from .base import (
    ConfigError,
    RenamedView,
    Tensor,
    aliased,
    checked_layer_types,
    common_from_hf,
    common_to_hf,
    expert_tensors,
    llama_like,
    mlp_tensors,
    need,
    refuse,
    unsupported_cfg,
    with_defaults,
)

NAME = "kimi_linear"
MODEL_TYPES = (NAME,)
ARCHITECTURE = "KimiLinearForCausalLM"

# the reference config class's defaults (KimiLinearConfig, over DeepseekV3Config's) for what a config.json leaves out
DEFAULTS = {"vocab_size": 163_840, "hidden_size": 2304, "intermediate_size": 9216, "moe_intermediate_size": 1024,
            "num_hidden_layers": 27, "num_attention_heads": 32, "routed_scaling_factor": 2.446, "q_lora_rank": None,
            "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
            "num_experts": 256, "num_experts_per_token": 8, "num_shared_experts": 1, "moe_renormalize": True,
            "num_expert_group": 1, "topk_group": 1, "model_max_length": 1_048_576, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False, "linear_head_dim": 128, "linear_num_heads": 32,
            "linear_conv_kernel_dim": 4, "first_k_dense_replace": 1}
# transformers' aliases of the released field names (KimiLinearConfig.attribute_map)
ALIASES = {"num_local_experts": "num_experts", "num_experts_per_tok": "num_experts_per_token",
           "n_shared_experts": "num_shared_experts", "norm_topk_prob": "moe_renormalize", "n_group": "num_expert_group",
           "max_position_embeddings": "model_max_length"}
KINDS = ("linear_attention", "full_attention")


def _released(hf: dict) -> dict:
    """config.json with the released spellings: aliases renamed, ``linear_attn_config`` read out."""
    out = aliased(hf, ALIASES)
    lac = hf.get("linear_attn_config") or {}
    if not isinstance(lac, dict):
        raise ConfigError(f"config.json: linear_attn_config={lac!r} is not an object")
    for key, name in (("head_dim", "linear_head_dim"), ("num_heads", "linear_num_heads"),
                      ("short_conv_kernel_size", "linear_conv_kernel_dim")):
        if lac.get(key) is not None:
            out[name] = lac[key]
    return out


def _layer_types(hf: dict, n: int) -> tuple[str, ...]:
    lac = hf.get("linear_attn_config") or {}
    types = hf.get("layer_types")
    if types is None and "full_attn_layers" in lac and "kda_layers" in lac:  # 1-based layer numbers
        listed = {int(i) - 1: "full_attention" for i in lac["full_attn_layers"]}
        listed.update({int(i) - 1: "linear_attention" for i in lac["kda_layers"]})
        if sorted(listed) != list(range(n)):
            raise ConfigError(f"config.json: linear_attn_config's full_attn_layers and kda_layers do not name each "
                              f"of the {n} layers (1 to {n}) once")
        types = [listed[i] for i in range(n)]
    if types is None:  # the reference's default: full attention at every fourth layer after the first
        types = ["full_attention" if i and i % 4 == 0 else "linear_attention" for i in range(n)]
    return checked_layer_types(types, n, KINDS)


def _first_dense(hf: dict, n: int) -> int:
    types = hf.get("mlp_layer_types")
    if types is None:
        refuse(hf, "moe_layer_freq", lambda v: v in (None, 1), "MoE only every n-th layer")
        return int(hf["first_k_dense_replace"] or 0)
    if not isinstance(types, (list, tuple)) or len(types) != n or set(types) - {"dense", "sparse"}:
        raise ConfigError(f"config.json: mlp_layer_types must name 'dense' or 'sparse' for each of the {n} layers "
                          f"(got {types!r})")
    types = list(types)
    k = types.index("sparse") if "sparse" in types else n
    if any(t == "dense" for t in types[k:]):
        raise ConfigError(f"config.json: mlp_layer_types has dense layers after sparse ones ({list(types)}): only "
                          "the first layers may be dense")
    return k


def from_hf(hf: dict) -> TransformerConfig:
    hf = with_defaults(_released(hf), DEFAULTS)
    refuse(hf, "hidden_act", lambda v: v == "silu", "only silu")
    refuse(hf, "attention_bias", lambda v: not v, "MLA projection biases")
    refuse(hf, "moe_router_activation_func", lambda v: v == "sigmoid", "only sigmoid routing scores")
    n = need(hf, "num_hidden_layers")
    types = _layer_types(hf, n)
    if "full_attention" not in types:
        raise ConfigError("config.json: layer_types has no attention layer (at least one is needed)")
    heads, dim = int(hf["linear_num_heads"]), int(hf["linear_head_dim"])
    lin = LinearAttnConfig(layers=tuple(i for i, t in enumerate(types) if t == "linear_attention"), k_heads=heads,
                           v_heads=heads, k_dim=dim, v_dim=dim, conv=int(hf["linear_conv_kernel_dim"]), kind="kda")
    moe = MoEConfig(n_experts=need(hf, "num_experts"), top_k=need(hf, "num_experts_per_token"),
                    ffn_dim=need(hf, "moe_intermediate_size"), n_shared=int(hf["num_shared_experts"] or 0),
                    first_dense=_first_dense(hf, n), score="sigmoid", norm_topk=bool(hf["moe_renormalize"]),
                    scaling=float(hf["routed_scaling_factor"]), n_group=int(hf["num_expert_group"]),
                    topk_group=int(hf["topk_group"]), score_bias=True, aux_loss_coef=0.0)
    # (the reference never ties the output layer to the embeddings, whatever tie_word_embeddings says: it reads
    # and writes lm_head.weight)
    common = common_from_hf({**hf, "max_position_embeddings": hf["model_max_length"], "tie_word_embeddings": False},
                            NAME,
                            **deepseek_v3.mla_from_hf(hf), moe=moe, linear=lin, nope_layers=tuple(range(n)))
    return TransformerConfig(**common)


def to_hf(cfg: TransformerConfig) -> dict:
    m, a, lin = cfg.moe, cfg.mla, cfg.linear
    unsupported_cfg(cfg, NAME, tie_embeddings=cfg.tie_embeddings, qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm,
                    mla=a is None,
                    moe=deepseek_v3.moe_unsupported(m), linear=lin is None or lin.kind != "kda" or lin.norm_eps != 0.0,
                    nope_layers=tuple(cfg.nope_layers) != tuple(range(cfg.n_layers)))
    out = common_to_hf(cfg, NAME, ARCHITECTURE)
    for k in ("head_dim", "max_position_embeddings"):  # (num_key_value_heads stays: the reference's groups)
        out.pop(k, None)
    kda = set(lin.layers)
    types = ["linear_attention" if i in kda else "full_attention" for i in range(cfg.n_layers)]
    out.update(deepseek_v3.mla_to_hf(a))
    out.pop("rope_interleave", None)
    out.update(layer_types=types, mlp_layer_types=["dense" if i < m.first_dense else "sparse"
                                                   for i in range(cfg.n_layers)],
               linear_head_dim=lin.k_dim, linear_num_heads=lin.k_heads, linear_conv_kernel_dim=lin.conv,
               # (the released layout too, which the release's own code and serving engines read)
               linear_attn_config={"full_attn_layers": [i + 1 for i in range(cfg.n_layers) if i not in kda],
                                   "kda_layers": [i + 1 for i in sorted(kda)], "head_dim": lin.k_dim,
                                   "num_heads": lin.k_heads, "short_conv_kernel_size": lin.conv},
               model_max_length=cfg.max_seq_len, num_experts=m.n_experts, num_experts_per_token=m.top_k,
               moe_intermediate_size=m.ffn_dim, num_shared_experts=m.n_shared, moe_renormalize=m.norm_topk,
               routed_scaling_factor=m.scaling, num_expert_group=m.n_group, topk_group=m.topk_group,
               first_k_dense_replace=m.first_dense, moe_layer_freq=1, moe_router_activation_func="sigmoid",
               attention_bias=False, pad_token_id=None, bos_token_id=None, eos_token_id=None)
    return out


def kda_tensors(seg: str, pre: str = "model.layers.{i}.self_attn") -> list[Tensor]:
    """A Kimi Delta Attention layer under the released names."""
    out = [Tensor((seg, "attn", n), f"{pre}.{n}_proj.weight", "t1") for n in ("q", "k", "v", "b", "f_a", "f_b",
                                                                                 "g_a", "g_b")]
    out += [Tensor((seg, "attn", f"conv_{n}"), f"{pre}.{n}_conv1d.weight", "conv") for n in "qkv"]
    return out + [Tensor((seg, "attn", "dt_bias"), f"{pre}.dt_bias", "flat"),
                  Tensor((seg, "attn", "A_log"), f"{pre}.A_log", "heads4"),
                  Tensor((seg, "attn", "norm"), f"{pre}.o_norm.weight"),
                  Tensor((seg, "attn", "o"), f"{pre}.o_proj.weight", "t2")]


def tensors(cfg: TransformerConfig) -> list[Tensor]:
    segs = segments(cfg)
    out = llama_like(cfg, segs, attention=False)
    pre = "model.layers.{i}.block_sparse_moe"
    for seg, _, _, moe in segs:
        out += kda_tensors(seg) if seg.startswith("linear") else deepseek_v3.mla_tensors(seg, cfg)
        if moe:
            out += expert_tensors(seg, pre, ("w1", "w3", "w2"))
            out.append(Tensor((seg, "mlp", "score_bias"), f"{pre}.gate.e_score_correction_bias"))
            if cfg.moe.n_shared:
                out += mlp_tensors((seg, "mlp", "shared"), f"{pre}.shared_experts")
    return out


_DENSE = re.compile(r"^(model\.layers\.\d+\.)block_sparse_moe\.((?:gate|up|down)_proj\.weight)$")


class DenseMLPView(RenamedView):
    """transformers' save of a dense layer's MLP (under ``block_sparse_moe``) seen under the released ``mlp``."""

    def __init__(self, ckpt, cfg: TransformerConfig):
        super().__init__(ckpt, lambda name: _DENSE.sub(r"\1mlp.\2", name))


checkpoint_view = DenseMLPView
ignored = deepseek_v3.ignored
