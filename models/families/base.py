"""What every family definition is made of: tensor specs (where each of our parameters lives in a Hugging
Face checkpoint and how its layout differs), the shared name maps most families reuse, and config helpers.

Layouts (``Tensor.layout``), per layer and per expert, ours <- checkpoint:
  same   identical shape
  flat   the checkpoint stores it flattened (attention biases [H*D] -> [H, D])
  t1/t2  a torch ``nn.Linear`` weight [out, in]: ours is ``w.T`` reshaped, with the first 1 (t1) or 2 (t2) of
         our dims forming ``in`` (q_proj [H*D, d] -> [d, H, D] is t1; o_proj [d, H*D] -> [H, D, d] is t2)
  conv   a depthwise ``nn.Conv1d`` weight [C, 1, K]: ours is [K, ...] with the channels after the kernel
  x1     every expert's ``nn.Linear`` weight in one tensor [E, out, in] (Granite's input_linear/output_linear):
         ours is [E, in, out], t1 per expert

A checkpoint tensor may hold several of our parameters side by side (``Tensor.piece``): Phi-3's qkv_proj
(q, k, v rows one after the other), gate_up_proj (gate rows then up rows), gpt-oss's expert gate_up_proj
(gate and up columns alternating). Loading cuts the piece out; saving puts the pieces back together.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..config import TransformerConfig
from ..layers.rope import SUPPORTED, rope_kind


class ConfigError(ValueError):
    """config.json asks for something these models cannot represent; the message names the field."""


@dataclass(frozen=True)
class Piece:
    """This parameter is part ``index`` of a checkpoint tensor cut along ``axis`` (of its per-layer/per-expert
    slice, in checkpoint layout) into parts of ``sizes``; ``interleave``: the parts alternate element by
    element (equal sizes) instead of following each other. ``groups`` > 1: the axis holds that many groups one
    after the other, each made of the parts (``sizes`` per group): Qwen3.5's q_proj (each head's queries, then
    its gate), Qwen3-Next's in_proj_qkvz (each key head's q, k, then its value heads' v and z)."""

    axis: int
    index: int
    sizes: tuple[int, ...]
    interleave: bool = False
    groups: int = 1

    def _grouped(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape[:self.axis] + (self.groups, -1) + shape[self.axis + 1:]

    def cut(self, a: np.ndarray) -> np.ndarray:
        lo = sum(self.sizes[:self.index])
        if self.groups > 1:
            b = a.reshape(self._grouped(a.shape))
            part = b[(slice(None),) * (self.axis + 1) + (slice(lo, lo + self.sizes[self.index]),)]
            return part.reshape(a.shape[:self.axis] + (-1,) + a.shape[self.axis + 1:])
        if self.interleave:
            sl = slice(self.index, None, len(self.sizes))
        else:
            sl = slice(lo, lo + self.sizes[self.index])
        return a[(slice(None),) * self.axis + (sl,)]

    def whole(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The checkpoint tensor's shape from one piece's."""
        return shape[:self.axis] + (sum(self.sizes) * self.groups,) + shape[self.axis + 1:]

    def join(self, parts: list[np.ndarray]) -> np.ndarray:
        if self.groups > 1:
            b = np.concatenate([p.reshape(self._grouped(p.shape)) for p in parts], axis=self.axis + 1)
            return b.reshape(self.whole(parts[0].shape))
        if self.interleave:
            a = np.stack(parts, axis=self.axis + 1)
            return a.reshape(self.whole(parts[0].shape))
        return np.concatenate(parts, axis=self.axis)


@dataclass(frozen=True)
class Tensor:
    path: tuple[str, ...]  # our parameter, e.g. ("layers", "attn", "q")
    hf: str  # checkpoint name; "{i}" is the checkpoint's layer index, "{e}" the expert index
    layout: str = "same"
    fused: str | None = None  # fused-experts name ("{i}" only): [E, parts * rows, cols] in memory layout
    part: tuple[int, int] = (0, 1)  # (which, of how many) rows of the fused tensor's expert slice
    zeros: tuple[int, ...] | None = None  # not one of our params: saved as zeros of this per-layer shape
    piece: Piece | None = None  # one part of a checkpoint tensor holding several of our params
    # the checkpoint's layer index of each model layer, where they differ ("{i}" is then index[layer]): Nemotron-H
    # stores a layer's mixer and its MLP as two checkpoint layers
    index: tuple[int, ...] = ()

    def name(self, layer: int | None, expert: int | None = None) -> str:
        """The checkpoint tensor of model layer ``layer`` (None: not a layer's) and ``expert``."""
        return self.hf.format(i=self._at(layer), e=expert)

    def fused_name(self, layer: int) -> str:
        """The fused-experts tensor of model layer ``layer``."""
        return self.fused.format(i=self._at(layer))

    def _at(self, layer: int | None) -> int | None:
        return self.index[layer] if self.index and layer is not None else layer

    def stacked(self) -> tuple[bool, bool]:
        """(has a leading layer dim, has an expert dim) in our parameter."""
        from ..transformer import STACKS

        return self.path[0] in STACKS, "{e}" in self.hf


def hf_shape(layout: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The checkpoint shape of one (layer, expert) slice whose shape in our params is ``shape``."""
    if layout == "same":
        return tuple(shape)
    if layout == "flat":
        return (math.prod(shape),)
    if layout == "scalar":  # a one-element parameter stored as a 0-d tensor (xIELU's fixed beta and eps)
        return ()
    if layout == "conv":
        return math.prod(shape[1:]), 1, shape[0]
    if layout == "heads4":  # a per-head vector stored [1, 1, H, 1] (Kimi Linear's A_log)
        return 1, 1, math.prod(shape), 1
    if layout == "x1":
        return shape[0], math.prod(shape[2:]), shape[1]
    k = int(layout[1:])
    return math.prod(shape[k:]), math.prod(shape[:k])


def to_ours(a: np.ndarray, layout: str, shape: tuple[int, ...]) -> np.ndarray:
    if layout == "same":
        return a
    if layout in ("flat", "scalar", "heads4"):
        return a.reshape(shape)
    if layout == "conv":
        return a[:, 0, :].T.reshape(shape)
    if layout == "x1":
        return np.swapaxes(a, 1, 2).reshape(shape)
    return a.T.reshape(shape)


def to_hf(a: np.ndarray, layout: str, shape: tuple[int, ...]) -> np.ndarray:
    if layout == "same":
        return a
    if layout == "flat":
        return a.reshape(-1)
    if layout == "scalar":
        return a.reshape(())
    if layout == "heads4":
        return a.reshape(1, 1, -1, 1)
    if layout == "conv":
        return a.reshape(shape[0], -1).T[:, None, :]
    if layout == "x1":
        return np.swapaxes(a.reshape(shape[0], shape[1], -1), 1, 2)
    k = int(layout[1:])
    return a.reshape(math.prod(shape[:k]), math.prod(shape[k:])).T


# ---------------------------------------------------------------------- shared name maps


def gqa_tensors(seg: str, cfg: TransformerConfig, prefix: str = "model.layers.{i}.self_attn",
                bias_always: bool = False, values: bool = True, keys: bool = True) -> list[Tensor]:
    """q/k/v/o projections, their biases and q/k norms. ``bias_always``: the format always has q/k/v biases (Qwen2),
    so a config without them saves zeros there. ``values``: off for layers whose values are their keys' projection
    (Gemma 4's full layers: no v_proj). ``keys``: off for layers attending over another layer's keys/values (no
    k/v projections or k norm: Gemma 4 E2B/E4B's shared layers)."""
    names = ("qkv" if values else "qk") if keys else "q"
    out = [Tensor((seg, "attn", n), f"{prefix}.{n}_proj.weight", "t1") for n in names]
    out.append(Tensor((seg, "attn", "o"), f"{prefix}.o_proj.weight", "t2"))
    if cfg.out_bias:
        out.append(Tensor((seg, "attn", "o_bias"), f"{prefix}.o_proj.bias"))
    if cfg.qkv_bias or bias_always:
        heads = {"q": cfg.n_heads, "k": cfg.n_kv_heads, "v": cfg.n_kv_heads}
        out += [Tensor((seg, "attn", f"{n}_bias"), f"{prefix}.{n}_proj.bias", "flat",
                       zeros=None if cfg.qkv_bias else (heads[n], cfg.head_dim)) for n in ("q", "k", "v")]
    if cfg.qk_norm:
        out += [Tensor((seg, "attn", f"{n}_norm", "scale"), f"{prefix}.{n}_norm.weight")
                for n in ("qk" if keys else "q")]
    return out


def sandwich_tensors(seg: str, mlp: tuple[str, str] = ("pre_feedforward_layernorm", "post_feedforward_layernorm"),
                     pre: str = "model.layers.{i}") -> list[Tensor]:
    """The four norms of a layer normed before and after attention and MLP (Gemma's names by default; ``mlp``:
    the MLP's two, e.g. Trinity's pre/post_mlp_layernorm)."""
    return [Tensor((seg, "attn_norm", "scale"), f"{pre}.input_layernorm.weight"),
            Tensor((seg, "post_attn_norm", "scale"), f"{pre}.post_attention_layernorm.weight"),
            Tensor((seg, "mlp_norm", "scale"), f"{pre}.{mlp[0]}.weight"),
            Tensor((seg, "post_mlp_norm", "scale"), f"{pre}.{mlp[1]}.weight")]


def mlp_tensors(path: tuple[str, ...], prefix: str, names=("gate_proj", "up_proj", "down_proj")) -> list[Tensor]:
    return [Tensor(path + (ours,), f"{prefix}.{theirs}.weight", "t1")
            for ours, theirs in zip(("gate", "up", "down"), names)]


def gate_up_tensors(seg: str, cfg: TransformerConfig, prefix: str) -> list[Tensor]:
    """The MLP's gate and up rows in one ``gate_up_proj`` (gate first: Phi-3, GLM-4)."""
    return [Tensor((seg, "mlp", n), f"{prefix}.gate_up_proj.weight", "t1", piece=Piece(0, k, (cfg.ffn_dim,) * 2))
            for k, n in enumerate(("gate", "up"))]


def expert_tensors(seg: str, prefix: str, names=("gate_proj", "up_proj", "down_proj"),
                   router: str = "gate") -> list[Tensor]:
    """Routed experts stored one tensor per expert; the fused layout (``experts.gate_up_proj`` [E, 2I, d],
    ``experts.down_proj`` [E, d, I]) is accepted on load as an alternative."""
    fused_up = "model.layers.{i}.mlp.experts.gate_up_proj"
    fused_down = "model.layers.{i}.mlp.experts.down_proj"
    return [
        Tensor((seg, "mlp", "router"), f"{prefix}.{router}.weight", "t1"),
        Tensor((seg, "mlp", "gate"), f"{prefix}.experts.{{e}}.{names[0]}.weight", "t1", fused_up, (0, 2)),
        Tensor((seg, "mlp", "up"), f"{prefix}.experts.{{e}}.{names[1]}.weight", "t1", fused_up, (1, 2)),
        Tensor((seg, "mlp", "down"), f"{prefix}.experts.{{e}}.{names[2]}.weight", "t1", fused_down, (0, 1)),
    ]


def qwen_moe_dense_layers(hf: dict) -> tuple[int, ...]:
    """Qwen2/3-MoE layers with a dense MLP: those in ``mlp_only_layers`` and, with ``decoder_sparse_step`` s,
    every layer i with (i + 1) % s != 0 (the reference's rule)."""
    n = need(hf, "num_hidden_layers")
    step = 1 if hf.get("decoder_sparse_step") is None else hf["decoder_sparse_step"]
    if not isinstance(step, int) or step < 1:
        raise ConfigError(f"config.json: decoder_sparse_step={step!r} is not a positive integer")
    only = hf.get("mlp_only_layers") or []
    bad = [i for i in only if not (isinstance(i, int) and 0 <= i < n)]
    if bad:
        raise ConfigError(f"config.json: mlp_only_layers entries {bad} are not layers of the {n}")
    dense = tuple(i for i in range(n) if i in only or (i + 1) % step != 0)
    if len(dense) == n:
        raise ConfigError("config.json: mlp_only_layers / decoder_sparse_step leave no MoE layer (a dense model)")
    return dense


def mlp_layer_types_from_hf(hf: dict) -> tuple[int, tuple[int, ...]]:
    """(leading dense layers, the dense layers after the first MoE one) from ``mlp_layer_types`` ("dense" or
    "sparse" per layer; absent: the first layer dense, as GLM-4.7-Flash's, Hy3's and MiMo's references fill it)."""
    n = need(hf, "num_hidden_layers")
    types = hf.get("mlp_layer_types") or ["dense"] + ["sparse"] * (n - 1)
    if not isinstance(types, list) or len(types) != n or any(t not in ("dense", "sparse") for t in types):
        raise ConfigError(f"config.json: mlp_layer_types must name 'dense' or 'sparse' for each of the {n} layers")
    if "sparse" not in types:
        raise ConfigError("config.json: mlp_layer_types has no 'sparse' layer (a dense model)")
    first = types.index("sparse")
    return first, tuple(i for i in range(first, n) if types[i] == "dense")


def mlp_layer_types_to_hf(cfg: TransformerConfig) -> list[str]:
    return ["sparse" if cfg.moe.is_moe(i) else "dense" for i in range(cfg.n_layers)]


def qwen_moe_dense_to_hf(cfg: TransformerConfig) -> dict:
    m = cfg.moe
    return {"decoder_sparse_step": 1,
            "mlp_only_layers": [i for i in range(cfg.n_layers) if not m.is_moe(i)]}


def outer_tensors(cfg: TransformerConfig) -> list[Tensor]:
    out = [Tensor(("embed",), "model.embed_tokens.weight"), Tensor(("final_norm", "scale"), "model.norm.weight")]
    if not cfg.tie_embeddings:
        out.append(Tensor(("lm_head",), "lm_head.weight", "t1"))
    return out


def llama_like(cfg: TransformerConfig, segs: list[tuple[str, int, int, bool]], *, attention: bool = True,
               dense_mlp: bool = True, bias_always: bool = False) -> list[Tensor]:
    """Llama/Qwen naming: input_layernorm before attention, post_attention_layernorm before the MLP, then
    (optionally) GQA attention and, for segments without experts, the dense MLP."""
    out = outer_tensors(cfg)
    for seg, _, _, moe in segs:
        out += [Tensor((seg, "attn_norm", "scale"), "model.layers.{i}.input_layernorm.weight"),
                Tensor((seg, "mlp_norm", "scale"), "model.layers.{i}.post_attention_layernorm.weight")]
        if attention:
            out += gqa_tensors(seg, cfg, bias_always=bias_always)
        if dense_mlp and not moe:
            out += mlp_tensors((seg, "mlp"), "model.layers.{i}.mlp")
    return out


class RenamedView:
    """A checkpoint seen under the names a family's ``tensors`` use: each stored tensor as ``rename(stored)`` (a
    name ``rename`` leaves alone reads as stored). A family whose released files (or transformers' save) name
    tensors otherwise sets ``checkpoint_view`` to a subclass; what the loader asks of a checkpoint (names, shapes,
    reads, and the file and label its errors name) goes through."""

    def __init__(self, ckpt, rename: Callable[[str], str]):
        self.ckpt = ckpt
        self.to_stored: dict[str, str] = {rename(n): n for n in ckpt.names()}

    def __contains__(self, name: str) -> bool:
        return name in self.to_stored

    def names(self) -> list[str]:
        return list(self.to_stored)

    def info(self, name: str):
        return self.ckpt.info(self.to_stored[name])

    def get(self, name: str):
        return self.ckpt.get(self.to_stored[name])

    def file_of(self, name: str):
        return self.ckpt.file_of(self.to_stored.get(name, name))

    def label(self, name: str) -> str:
        return self.ckpt.label(self.to_stored.get(name, name))

    def problems(self) -> list[tuple[str, str]]:
        return getattr(self.ckpt, "problems", list)()

    def close(self) -> None:
        self.ckpt.close()


# ---------------------------------------------------------------------- config.json helpers


def aliased(hf: dict, aliases: dict[str, str]) -> dict:
    """``hf`` with each field another spelling names (``aliases``: that spelling -> ours) under our name; where
    both are set, ours wins (a config class's ``attribute_map`` reads the same field either way)."""
    out = {k: v for k, v in hf.items() if k not in aliases}
    for alias, name in aliases.items():
        if hf.get(alias) is not None and out.get(name) is None:
            out[name] = hf[alias]
    return out


def with_defaults(hf: dict, defaults: dict, theta: float | None = None) -> dict:
    """``hf`` with the reference config class's ``defaults`` for the fields it leaves out or sets to null (as the
    class fills them in); ``theta``: the reference's rope base when neither ``rope_theta`` nor
    ``rope_parameters`` names one."""
    out = {**defaults, **{k: v for k, v in hf.items() if v is not None}}
    params = out.get("rope_parameters")
    if theta is not None and "rope_theta" not in out and not (isinstance(params, dict) and "rope_theta" in params):
        out["rope_theta"] = theta
    return out


def whole_heads(hf: dict, head_dim: int) -> None:
    """Refuse a partial rotary where the reference rotates whole heads (llama's rotary would not run one)."""
    if rotary_dims(hf, head_dim):
        raise ConfigError("config.json: partial_rotary_factor is not supported (the reference rotates whole heads)")


def need(hf: dict, key: str):
    if key not in hf or hf[key] is None:
        raise ConfigError(f"config.json: required field {key!r} is missing")
    return hf[key]


def refuse(hf: dict, key: str, ok, why: str) -> None:
    """Fail naming ``key`` when the checkpoint uses a feature these layers do not implement."""
    if key in hf and hf[key] is not None and not ok(hf[key]):
        raise ConfigError(f"config.json: {key}={hf[key]!r} is not supported ({why})")


def rope_from_hf(hf: dict, layer_type: str | None = None) -> tuple[float, dict | None]:
    """(theta, scaling) from either layout: transformers 4 (``rope_theta`` + ``rope_scaling``) or 5
    (``rope_parameters``, possibly nested per layer type)."""
    params = hf.get("rope_parameters")
    if params and layer_type is not None and layer_type in params:
        params = params[layer_type]
    field = "rope_parameters" if params else "rope_scaling"
    scaling = dict(params) if params else (dict(hf["rope_scaling"]) if hf.get("rope_scaling") else None)
    theta = float((scaling or {}).get("rope_theta", hf.get("rope_theta", 10000.0)))
    if scaling is not None:
        scaling.pop("rope_theta", None)
        kind = rope_kind(scaling)
        if kind != "proportional":  # (whose rotary share is part of its frequencies: the head stays whole)
            scaling.pop("partial_rotary_factor", None)  # a family reads it (TransformerConfig.rope_dim)
        if kind == "dynamic" and scaling.get("alpha"):  # a fixed alpha: static frequencies (Hunyuan)
            return theta, {"rope_type": "ntk_alpha", "alpha": float(scaling["alpha"])}
        if kind == "dynamic":  # dynamic NTK turns its base up only for sequences past max_position_embeddings, the
            # context a checkpoint's runs are held to (model.max_seq_len): within it, the plain rotary exactly
            orig = scaling.get("original_max_position_embeddings")
            if orig is not None and orig != hf.get("max_position_embeddings"):
                raise ConfigError(f"config.json: {field}.original_max_position_embeddings={orig!r} is not supported "
                                  "with rope_type 'dynamic' (the scaling would start inside the model's context)")
            return theta, None
        if kind not in SUPPORTED:
            raise ConfigError(f"config.json: {field}.rope_type={kind!r} is not supported "
                              f"(supported: {', '.join(SUPPORTED)})")
        scaling["rope_type"] = kind
        scaling.pop("type", None)
        if kind == "default":
            return theta, None
        if kind in ("llama3", "yarn", "longrope"):
            scaling.setdefault("original_max_position_embeddings",
                               hf.get("original_max_position_embeddings") or hf.get("max_position_embeddings"))
        if kind in ("yarn", "longrope") and scaling.get("factor") is None:
            scaling["factor"] = hf["max_position_embeddings"] / scaling["original_max_position_embeddings"]
        if kind == "longrope":
            for k in ("short_factor", "long_factor"):
                if not isinstance(scaling.get(k), (list, tuple)):
                    raise ConfigError(f"config.json: {field}.{k} (a list) is required for rope_type 'longrope'")
        if "factor" not in scaling and kind != "proportional":
            raise ConfigError(f"config.json: {field}.factor is required for rope_type {kind!r}")
    return theta, scaling


def layered_rope_from_hf(hf: dict, local_default: float | None) -> tuple[float, dict | None, float | None]:
    """(theta, scaling, local theta) of a model whose sliding and full layers have rope parameters of their
    own (Gemma 3, OLMo-3): ``rope_parameters`` nested by layer type (transformers 5), or the older top-level
    fields, where ``rope_scaling`` is the full layers' and the sliding ones rotate unscaled with
    ``local_default`` (None: the full layers' theta). Scaling on the sliding layers is refused."""
    theta, scaling = rope_from_hf(hf, "full_attention")
    if isinstance(hf.get("rope_parameters"), dict) and "sliding_attention" in hf["rope_parameters"]:
        local_theta, local_scaling = rope_from_hf(hf, "sliding_attention")
        if local_scaling:
            raise ConfigError("config.json: rope_parameters.sliding_attention scaling is not supported")
        return theta, scaling, local_theta
    return theta, scaling, theta if local_default is None else local_default


def rope_by_kind(hf: dict, types: list[str], default: dict) -> dict:
    """``rope_parameters`` nested by layer kind (``default`` when the file gives none), holding an entry for each
    attention kind ``types`` uses, as references that read them per kind (LFM3, Laguna) need; a flat dict is
    refused by name."""
    params = default if hf.get("rope_parameters") is None else hf["rope_parameters"]
    kinds = [k for k in ("full_attention", "sliding_attention") if k in types]
    if not isinstance(params, dict) or not all(isinstance(params.get(k), dict) for k in kinds):
        raise ConfigError(f"config.json: rope_parameters must hold an entry for each attention kind of layer_types "
                          f"({', '.join(kinds)}), as the reference reads them")
    return params


def layered_rope_to_hf(cfg: TransformerConfig) -> dict:
    full = {"rope_type": "default", **(cfg.rope_scaling or {}), "rope_theta": cfg.rope_theta}
    local = {"rope_type": "default", "rope_theta": cfg.rope_local_theta or cfg.rope_theta}
    return {"rope_parameters": {"full_attention": full, "sliding_attention": local}}


def rotary_dims(hf: dict, head_dim: int, default: float = 1.0) -> int:
    """``TransformerConfig.rope_dim`` from ``partial_rotary_factor`` (top level, or in ``rope_parameters`` as
    transformers 5 writes it) or a count of rotary dims (``rotary_dim``, MiniMax-M2's released configs): the
    leading dims of each head that rotate; 0 for all of them."""
    if hf.get("rotary_dim"):
        rot, field = hf["rotary_dim"], f"rotary_dim={hf['rotary_dim']!r}"
    else:
        params = hf.get("rope_parameters") if isinstance(hf.get("rope_parameters"), dict) else {}
        factor = params.get("partial_rotary_factor") or hf.get("partial_rotary_factor") or default
        rot = int(head_dim * float(factor))
        field = f"partial_rotary_factor gives {rot} rotary dims, which"
    if not isinstance(rot, int) or rot % 2 or not 0 < rot <= head_dim:
        raise ConfigError(f"config.json: {field} is not an even number of dims in 1..{head_dim} (the head)")
    return 0 if rot == head_dim else rot


ATTENTION_KINDS = ("sliding_attention", "full_attention")


def checked_layer_types(types, n: int, kinds: tuple[str, ...] = ATTENTION_KINDS) -> list[str]:
    """``types`` (a config's ``layer_types``) when it names one of ``kinds`` for each of the ``n`` layers; else the
    error naming the field, what it may hold and what is wrong."""
    ok = isinstance(types, (list, tuple))
    bad = sorted({str(t) for t in types if t not in kinds}) if ok else []
    if not ok or len(types) != n or bad:
        names = ", ".join(repr(k) for k in kinds[:-1]) + f" or {kinds[-1]!r}"
        got = f"{len(types)} entries" if ok else repr(types)
        raise ConfigError(f"config.json: layer_types must name {names} for each of the {n} layers (got {got}"
                          f"{', unknown ' + ', '.join(map(repr, bad)) if bad else ''})")
    return list(types)


def every_nth_full(n: int, every: int) -> list[str]:
    """``layer_types`` of ``n`` layers in which every ``every``-th is full and the others slide (the default
    schedules of Gemma 3, OLMo-3 and EXAONE 4.0)."""
    return ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(n)]


def rope_to_hf(theta: float, scaling: dict | None) -> dict:
    """``rope_theta`` and ``rope_scaling`` as transformers reads them (a fixed NTK alpha, our ``ntk_alpha``, as
    the ``dynamic`` type with ``alpha`` that Hunyuan's configs carry)."""
    if scaling and scaling.get("rope_type") == "ntk_alpha":
        scaling = {"rope_type": "dynamic", "alpha": scaling["alpha"], "factor": 1.0}
    return {"rope_theta": theta, "rope_scaling": dict(scaling) if scaling else None}


def window_from_hf(hf: dict) -> dict:
    """Sliding-window fields from ``layer_types`` (transformers 5) or the older switches."""
    window = hf.get("sliding_window") or 0
    types = hf.get("layer_types")
    if types:
        kinds = tuple("sliding" if t == "sliding_attention" else "full" for t in types)
        for t in types:
            if t not in ("sliding_attention", "full_attention"):
                raise ConfigError(f"config.json: layer_types entry {t!r} is not supported")
        if "sliding" not in kinds:
            return {}
        if not window:
            raise ConfigError("config.json: sliding_window is required by sliding_attention layer_types")
        return {"sliding_window": int(window), "layer_types": kinds}
    if hf.get("use_sliding_window") is False or not window:
        return {}
    if "max_window_layers" in hf:  # Qwen2/Qwen3 convention: layers from max_window_layers on slide
        n = hf["num_hidden_layers"]
        kinds = tuple("sliding" if i >= hf["max_window_layers"] else "full" for i in range(n))
        return {"sliding_window": int(window), "layer_types": kinds} if "sliding" in kinds else {}
    return {"sliding_window": int(window)}


def window_to_hf(cfg: TransformerConfig) -> dict:
    if not any(cfg.sliding_layers):
        return {}
    types = ["sliding_attention" if s else "full_attention" for s in cfg.sliding_layers]
    return {"sliding_window": cfg.sliding_window, "use_sliding_window": True, "layer_types": types}


def dtype_name(hf: dict) -> str:
    return hf.get("dtype") or hf.get("torch_dtype") or "float32"


def common_from_hf(hf: dict, family: str, **kw) -> dict:
    """The TransformerConfig fields every family reads the same way."""
    heads = need(hf, "num_attention_heads")
    d = need(hf, "hidden_size")
    theta, scaling = rope_from_hf(hf)
    out = {
        "vocab_size": need(hf, "vocab_size"), "d_model": d, "n_layers": need(hf, "num_hidden_layers"),
        "n_heads": heads, "n_kv_heads": hf.get("num_key_value_heads") or heads,
        "head_dim": hf.get("head_dim") or d // heads, "ffn_dim": need(hf, "intermediate_size"),
        "rope_theta": theta, "rope_scaling": scaling, "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "max_seq_len": int(hf.get("max_position_embeddings", 2048)), "family": family,
        "extra": {"hf_config": hf},
    }
    out.update(kw)
    return out


def common_to_hf(cfg: TransformerConfig, model_type: str, arch: str) -> dict:
    return {
        "architectures": [arch], "model_type": model_type, "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn_dim, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
        "max_position_embeddings": cfg.max_seq_len, **rope_to_hf(cfg.rope_theta, cfg.rope_scaling),
    }


def unsupported_cfg(cfg: TransformerConfig, family: str, **checks: bool) -> None:
    """For saving a config the family's checkpoint format cannot express: name the first offending field."""
    for name, bad in checks.items():
        if bad:
            raise ConfigError(f"TransformerConfig.{name}={getattr(cfg, name)!r} cannot be written as a "
                              f"{family} checkpoint")
