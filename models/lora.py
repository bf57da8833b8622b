"""LoRA adapters: low-rank updates ``W + (alpha / r) * A @ B`` on chosen projections of any family.

The adapters are ordinary ``nnx.Param``s attached next to the weight they adapt (``q`` gets ``q_lora_a``
[*in, r] and ``q_lora_b`` [r, *out]), stacked over layers like it, with the logical axes of its input dims
(A) and output dims (B), so the sharding rules lay them out exactly as the weight. Params stay one nested
dict: :func:`split` separates the frozen base from the adapters by name, :func:`join` puts them back.

Where a weight is applied the layers call :func:`adapt` (dense projections: ``y + s * (x @ A) @ B``, never
forming the full update, so the backward never computes a full-size weight gradient) or :func:`weight`
(routed experts: merged per layer, which every expert kernel accepts). :func:`merge` folds the adapters into
the base once (the sampler's weights for a policy update; HF export); the model with adapters disabled is
just the base ModelDef on the base params, so a KL reference costs no copy.

Dropout (``lora.dropout`` > 0, as PEFT's ``lora_dropout``): inside a :func:`dropout` scope, which only the
training losses open, :func:`adapt` drops entries of the adapter's input ``x`` before A (scaled by
1 / (1 - rate)); the base product ``x @ W`` never sees it. Masks come from the scope's key folded with the
forward call, the layer index and the target, so a step stays a pure function of its state.

PEFT interop: :func:`save_lora` writes ``adapter_config.json`` + ``adapter_model.safetensors`` that
``peft.PeftModel.from_pretrained`` loads; :func:`load_adapter` reads one written by ``peft``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .config import LoRAConfig, TransformerConfig
from .layers import invariant
from .layers.init import drawn

__all__ = ["LoRAConfig", "LoRAError", "adapt", "attach", "base_mdef", "dropout", "dropout_key", "init_adapters",
           "join", "load_adapter", "merge", "save_lora", "split", "trainable", "weight", "with_lora",
           "with_trainable"]

SUFFIX_A, SUFFIX_B = "_lora_a", "_lora_b"
ATTN_TARGETS = ("q", "k", "v", "o", "q_a", "q_b", "kv_a", "kv_b")
MLP_TARGETS = ("gate", "up", "down")
TARGETS = ATTN_TARGETS + MLP_TARGETS
_N_IN = {"o": 2}  # leading input dims of our weight layout (o: [H, K, d]); every other target has one


class LoRAError(ValueError):
    """A LoRA config or adapter that cannot be applied; the message names the field or file."""


def scale(lc: LoRAConfig) -> float:
    return lc.alpha / math.sqrt(lc.rank) if lc.rslora else lc.alpha / lc.rank


def is_adapter(key: str) -> bool:
    return key.endswith((SUFFIX_A, SUFFIX_B))


# ---------------------------------------------------------------------- attaching (model construction)


def _targets_of(module: Any, lc: LoRAConfig) -> list[tuple[str, int]]:
    """(weight name, leading batch dims) of the targets this module holds: MoE experts [E, ...] only with
    ``experts``; a MoE's shared experts are a dense MLP of their own."""
    from .layers.moe import MoE

    out = []
    for t in lc.targets:
        w = getattr(module, t, None)
        if not isinstance(w, nnx.Param):
            continue
        if isinstance(module, MoE):
            if lc.experts and t in MLP_TARGETS:
                out.append((t, 1))
        else:
            out.append((t, 0))
    return out


def attach(model: Any, cfg: TransformerConfig, rngs: nnx.Rngs) -> None:
    """Give every targeted weight of ``model`` (a Transformer whose layer stacks are built) its A (uniform in
    +-1/sqrt(fan_in), as PEFT) and B (zeros: the adapted model starts equal to the base)."""
    from .transformer import segments

    lc = cfg.lora
    found = set()
    for name, _, n, _ in segments(cfg):
        blk = getattr(model, name)
        mods = [blk.attn] + ([blk.mlp] if blk.mlp is not None else [])  # (none in a mixer-only layer)
        # (a parallel layer's Mamba-2 mixer (Falcon-H1) takes none: its one target would be out_proj, on which peft
        # refuses adapters for these models, so ``o`` adapts the attention beside it only)
        mods += [blk.mlp.shared] if getattr(blk.mlp, "shared", None) is not None else []
        mods += [blk.dense_mlp] if getattr(blk, "dense_mlp", None) is not None else []  # (Gemma 4's, beside experts)
        for mod in mods:
            for t, nb in _targets_of(mod, lc):
                w = getattr(mod, t)
                axes = tuple(w.get_metadata().get("axes", ()))
                shape = w.value.shape[1:]  # drop the layer dim
                ni = _N_IN.get(t, 1)
                lead, ins, outs = shape[:nb], shape[nb:nb + ni], shape[nb + ni:]
                fan_in = math.prod(ins)
                a = drawn(jax.random.uniform(rngs.params(), (n, *lead, *ins, lc.rank), jnp.float32, -1.0, 1.0))
                a = a * fan_in**-0.5
                setattr(mod, t + SUFFIX_A, nnx.Param(a.astype(w.value.dtype),
                                                     axes=axes[:nb + ni] + ("lora_rank",)))
                setattr(mod, t + SUFFIX_B, nnx.Param(jnp.zeros((n, *lead, lc.rank, *outs), w.value.dtype),
                                                     axes=axes[:nb] + ("lora_rank",) + axes[nb + ni:]))
                mod.lora_scale = scale(lc)
                found.add(t)
    missing = [t for t in lc.targets if t not in found]
    if missing:
        raise LoRAError(f"model.lora.targets: {missing} match no weight of this {cfg.family} model "
                        f"(experts need experts: true; MLA has q_a, q_b, kv_a, kv_b)")


# ---------------------------------------------------------------------- dropout (training passes only)

DROPOUT_TAG = 0x10AD0  # folded into the stage key: dropout masks never reuse the sampler's keys


class _Scope:
    """The dropout of one traced training loss: its key, rate, forward calls so far and current layer key."""

    def __init__(self, key: jax.Array, rate: float):
        self.key, self.rate, self.calls = key, rate, 0
        self.forward_key = self.layer_key = key


class _Scopes(threading.local):
    """Per thread: an asynchronous sampler traces its program in its own thread while the trainer's step may be
    tracing inside a dropout scope."""

    def __init__(self):
        self.stack: list[_Scope] = []


_SCOPES = _Scopes()


def dropout_key(cfg: TransformerConfig, rng: jax.Array, step: jax.Array) -> tuple[jax.Array, float] | None:
    """(key, rate) of the LoRA dropout of update ``step`` of a stage whose train state key is ``rng``; None
    without LoRA dropout. Derived from the state only, so a resumed stage draws the same masks."""
    lc = cfg.lora
    if lc is None or not lc.dropout:
        return None
    return jax.random.fold_in(jax.random.fold_in(rng, DROPOUT_TAG), step), float(lc.dropout)


@contextlib.contextmanager
def dropout(drop: tuple[jax.Array, float] | None):
    """Trace-time scope of a training loss: within it :func:`adapt` applies dropout to the adapters' inputs.
    Nothing else opens it, so sampling, old/reference log-probs and evaluation run without dropout."""
    if drop is None or not drop[1]:
        yield
        return
    _SCOPES.stack.append(_Scope(*drop))
    try:
        yield
    finally:
        _SCOPES.stack.pop()


def next_forward() -> None:
    """A model forward starts (``Transformer.hidden``): its masks get their own key (a training loss may run
    the model twice, e.g. a shared prompt and its completions)."""
    if _SCOPES.stack:
        sc = _SCOPES.stack[-1]
        sc.forward_key = sc.layer_key = jax.random.fold_in(sc.key, sc.calls)
        sc.calls += 1


@contextlib.contextmanager
def dropout_layer(layer: jax.Array):
    """The masks of one layer's adapters: the forward's key folded with the (possibly traced) layer index."""
    if not _SCOPES.stack:
        yield
        return
    sc = _SCOPES.stack[-1]
    sc.layer_key = jax.random.fold_in(sc.forward_key, layer)
    try:
        yield
    finally:
        sc.layer_key = sc.forward_key


def drop_input(x: jax.Array, name: str) -> jax.Array:
    """``x`` with entries zeroed with the scope's probability and the rest scaled by 1 / (1 - rate) (inverted
    dropout, as torch's); ``x`` itself outside a dropout scope."""
    if not _SCOPES.stack:
        return x
    sc = _SCOPES.stack[-1]
    keep = jax.random.bernoulli(jax.random.fold_in(sc.layer_key, TARGETS.index(name)), 1.0 - sc.rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - sc.rate, x.dtype), jnp.zeros((), x.dtype))


# ---------------------------------------------------------------------- applying (layer code)


def adapt(module: Any, name: str, x: jax.Array, y: jax.Array) -> jax.Array:
    """``y`` (= x @ W, already computed) plus this weight's LoRA update ``s * (dropout(x) @ A) @ B``; ``y``
    itself when the weight has no adapter. x [..., *in] with W's input dims trailing; y [..., *out]."""
    a = getattr(module, name + SUFFIX_A, None)
    if a is None:
        return y
    x = drop_input(x, name)
    b = getattr(module, name + SUFFIX_B)
    a, b = a[...].astype(y.dtype), b[...].astype(y.dtype)
    r = a.shape[-1]
    n_in = math.prod(a.shape[:-1])
    lead = x.shape[:x.ndim - (a.ndim - 1)]
    matmul = invariant.matmul_for(getattr(module, "invariant", False))  # layers/invariant.py
    h = matmul(x.reshape(-1, n_in).astype(y.dtype), a.reshape(n_in, r))
    d = matmul(h, b.reshape(r, -1)) * jnp.asarray(module.lora_scale, y.dtype)
    return y + d.reshape(*lead, *y.shape[len(lead):])


def weight(module: Any, name: str, dtype) -> jax.Array:
    """The weight in ``dtype``, with its adapter merged (``W + s * A @ B``) when it has one: batched weights
    such as routed experts [E, d, f] whose products do not go through :func:`adapt`."""
    w = getattr(module, name)[...].astype(dtype)
    a = getattr(module, name + SUFFIX_A, None)
    if a is None:
        return w
    b = getattr(module, name + SUFFIX_B)[...].astype(dtype)
    return w + _delta(a[...].astype(dtype), b, w.ndim, module.lora_scale).astype(dtype)


def _delta(a: jax.Array, b: jax.Array, w_ndim: int, s: float) -> jax.Array:
    """``s * A @ B`` in the weight's layout; A [*lead, *in, r], B [*lead, r, *out] (lead: any stack dims)."""
    n_lead = a.ndim + b.ndim - 2 - w_ndim
    r = a.shape[-1]
    lead = a.shape[:n_lead]
    ins, outs = a.shape[n_lead:-1], b.shape[n_lead + 1:]
    a2 = a.reshape(*lead, math.prod(ins), r)
    b2 = b.reshape(*lead, r, math.prod(outs))
    return (jnp.matmul(a2, b2) * s).reshape(*lead, *ins, *outs)


# ---------------------------------------------------------------------- params trees


def split(params: Mapping) -> tuple[dict, dict]:
    """(base, adapters) of a params tree; either is {} where there is nothing."""
    base, ad = {}, {}
    for k, v in params.items():
        if isinstance(v, Mapping):
            b, a = split(v)
            if b:
                base[k] = b
            if a:
                ad[k] = a
        elif is_adapter(k):
            ad[k] = v
        else:
            base[k] = v
    return base, ad


def join(base: Mapping, adapters: Mapping) -> dict:
    out = dict(base)
    for k, v in adapters.items():
        out[k] = join(out.get(k, {}), v) if isinstance(v, Mapping) else v
    return out


def has_adapters(params: Any) -> bool:
    if not isinstance(params, Mapping):
        return False
    return any(is_adapter(k) or has_adapters(v) for k, v in params.items())


def trainable(params: Any) -> Any:
    """What an optimizer updates: the adapters when there are any, else every parameter."""
    return split(params)[1] if has_adapters(params) else params


def with_trainable(params: Any, new: Any) -> Any:
    """``params`` with its trainable part replaced by ``new`` (the frozen base passed through unchanged)."""
    return join(split(params)[0], new) if has_adapters(params) else new


_BASE_DEFS: dict[str, Any] = {}


def base_mdef(mdef: Any) -> Any:
    """The ModelDef of the same model without adapters (itself when it has none); built once per config."""
    from .transformer import create

    if mdef.cfg.lora is None:
        return mdef
    key = repr(mdef.cfg)
    if key not in _BASE_DEFS:
        _BASE_DEFS[key] = create(dataclasses.replace(mdef.cfg, lora=None), abstract=True)[0]
    return _BASE_DEFS[key]


def with_lora(mdef: Any, lc: LoRAConfig) -> Any:
    from .transformer import create

    return create(dataclasses.replace(mdef.cfg, lora=lc), abstract=True)[0]


def merge(mdef: Any, params: Mapping) -> tuple[Any, dict]:
    """(base ModelDef, params with every adapter folded into its weight). Traceable (jit it to merge on
    device); weights come out in their dtype promoted with the compute dtype, so a bf16 base adapted in
    float32 keeps the adapter's update."""
    if mdef.cfg.lora is None:
        return mdef, dict(params)
    s = scale(mdef.cfg.lora)
    dt = mdef.cfg.jnp_dtype

    def fold(node: Mapping) -> dict:
        out = {}
        for k, v in node.items():
            if isinstance(v, Mapping):
                out[k] = fold(v)
            elif not is_adapter(k):
                out[k] = v
        for k in node:
            if k.endswith(SUFFIX_A):
                t = k[:-len(SUFFIX_A)]
                w = node[t]
                wd = jnp.result_type(w.dtype, dt)
                d = _delta(node[k].astype(wd), node[t + SUFFIX_B].astype(wd), w.ndim, s)
                out[t] = w.astype(wd) + d
        return out

    return base_mdef(mdef), fold(params)


def init_adapters(mdef: Any, seed: int) -> dict:
    """Fresh adapters for a LoRA ModelDef (A as :func:`attach` draws it, B zero) without building the base."""
    _, abstract = split(mdef.abstract_params())
    leaves, tree = jax.tree.flatten_with_path(abstract)
    key = jax.random.key(seed ^ 0x10A4)
    out = []
    for i, (path, s) in enumerate(leaves):
        name = path[-1].key
        if name.endswith(SUFFIX_B):
            out.append(jnp.zeros(s.shape, s.dtype))
            continue
        t = name[:-len(SUFFIX_A)]
        ni = _N_IN.get(t, 1)
        fan_in = math.prod(s.shape[-1 - ni:-1])
        a = drawn(jax.random.uniform(jax.random.fold_in(key, i), s.shape, jnp.float32, -1.0, 1.0)) * fan_in**-0.5
        out.append(a.astype(s.dtype))
    return jax.tree.unflatten(tree, out)


def hf_save_flat(tree: Mapping) -> dict:
    """{path tuple: leaf} of a nested params dict."""
    from .hf_save import flatten

    return flatten(tree)


def count(params: Any) -> tuple[int, int]:
    """(adapter parameters, base parameters)."""
    base, ad = split(params)
    n = lambda t: sum(math.prod(x.shape) for x in jax.tree.leaves(t))
    return n(ad), n(base)


# ---------------------------------------------------------------------- PEFT files

PEFT_PREFIX = "base_model.model."


def _peft_map(cfg: TransformerConfig) -> dict[tuple[str, ...], Any]:
    """Our weight path -> its family Tensor spec (torch Linear layouts only)."""
    from .families import for_family

    return {t.path: t for t in for_family(cfg.family).tensors(cfg) if t.layout in ("t1", "t2")}


def _module(hf_name: str) -> str:
    return hf_name[:-len(".weight")]


def _fused_piece_tensors(mod: str, parts: dict[int, tuple]) -> dict[str, np.ndarray]:
    """PEFT's adapter of a fused checkpoint tensor from ours on some of its parts ({part index: (A [in, r],
    B [rows, r], Piece)}): one adapter of rank n r whose A stacks the parts' A and whose B holds each part's B in
    that part's rows and its own rank columns (zero elsewhere), which is exactly the parts' adapters side by side."""
    piece = next(iter(parts.values()))[2]
    order = sorted(parts)
    r = parts[order[0]][0].shape[1]
    blocks = []
    for j, size in enumerate(piece.sizes):
        blk = np.zeros((size * piece.groups, len(order) * r), np.float32)
        if j in parts:
            k = order.index(j)
            blk[:, k * r:(k + 1) * r] = parts[j][1]
        blocks.append(blk)
    return {f"{PEFT_PREFIX}{mod}.lora_A.weight": np.concatenate([parts[j][0].T for j in order], axis=0),
            f"{PEFT_PREFIX}{mod}.lora_B.weight": piece.join(blocks)}


# transformers 5 fuses the routed experts into parameters of ``...mlp.experts`` (gate_up_proj [E, 2I, H],
# down_proj [E, H, I]); PEFT adapts them with ``target_parameters`` (a ParamWrapper per parameter, nested in
# the order the module registers them: the first is innermost, reached through ``.base_layer``).
EXPERT_PARAMS = ("gate_up_proj", "down_proj")


def _expert_keys(module: str, params: list[str]) -> dict[str, str]:
    """PEFT's tensor prefix of each wrapped expert parameter of ``module``."""
    n = len(params)
    return {p: module + ".base_layer" * (n - 1 - j) for j, p in enumerate(params)}


def _pattern(patterns: Mapping, key: str, default):
    """PEFT's rank/alpha pattern lookup (``get_pattern_key``)."""
    import re

    for k, v in (patterns or {}).items():
        if re.match(rf"(.*\.)?({k})$", key):
            return v
    return default


def save_lora(model: Any, out_dir: str | Path, params: Mapping | None = None, *,
              base_model_name_or_path: str | None = None) -> Path:
    """Write the adapters of ``model`` (a PretrainedModel or a ``(mdef, params)`` pair) as a PEFT LoRA adapter:
    ``adapter_config.json`` + ``adapter_model.safetensors`` (float32), loadable by
    ``peft.PeftModel.from_pretrained`` onto the base checkpoint.

    Routed experts' adapters (``experts: true``) go to PEFT's ``target_parameters`` on transformers' fused
    ``mlp.experts.gate_up_proj`` / ``down_proj``. Our gate and up adapters (rank r each) are one rank-2r
    adapter of the fused gate_up there, A stacked and B block-diagonal (exact), declared by ``rank_pattern`` /
    ``alpha_pattern`` so its scale stays ours. PEFT has no dropout on expert parameters: with them the file says
    ``lora_dropout: 0`` (dropout only shapes training, the adapter's function is the same). Params that are
    parts of one fused checkpoint tensor (Phi-3's qkv_proj, Qwen3.5's q_proj and in_proj_qkv) go to that module
    the same way: the parts side by side (``_fused_piece_tensors``), the rank pattern n r when n are adapted."""
    from .families import for_family
    from .hf_save import _host, _resolve, flatten
    from .safetensors_io import NAMES, write_file
    from .transformer import stack_layers

    mdef, params, out = _resolve(model, out_dir, params)
    cfg, lc = mdef.cfg, mdef.cfg.lora
    if lc is None:
        raise LoRAError("save_lora: the model has no LoRA adapters")
    specs = _peft_map(cfg)
    refused = getattr(for_family(cfg.family), "PEFT_REFUSED", ())  # modules peft will not adapt in this model
    layers = stack_layers(cfg)
    flat = flatten(split(params)[1])
    tensors: dict[str, np.ndarray] = {}
    modules, experts, pieces = set(), {}, {}
    for path, a in flat.items():
        if not path[-1].endswith(SUFFIX_A):
            continue
        wpath = path[:-1] + (path[-1][:-len(SUFFIX_A)],)
        t = specs.get(wpath)
        if t is None or ("{e}" in t.hf and not t.fused):
            raise LoRAError(f"save_lora: adapter on {'.'.join(wpath)} has no PEFT equivalent")
        if t.hf.rsplit(".", 2)[-2] in refused:
            raise LoRAError(f"save_lora: adapter on {'.'.join(wpath)} ({t.hf.rsplit('.', 2)[-2]}): peft refuses "
                            f"adapters on {', '.join(sorted(refused))} of a {cfg.family} model (its fused Mamba "
                            "kernels bypass them); export the model with its adapters merged (reasoning-rl export), "
                            "or train without that target")
        b = _host(flat[path[:-1] + (wpath[-1] + SUFFIX_B,)]).astype(np.float32)
        a = _host(a).astype(np.float32)
        if "{e}" in t.hf:
            experts.setdefault(path[0], {})[wpath[-1]] = (a, b, t)
            continue
        r = a.shape[-1]
        if t.piece is not None:  # part of a fused checkpoint tensor (Phi-3's qkv_proj, Qwen3.5's in_proj_qkv)
            for i in range(a.shape[0]):
                mod = _module(t.name(layers[path[0]][i]))
                pieces.setdefault(mod, {})[t.piece.index] = (a[i].reshape(-1, r), b[i].reshape(r, -1).T, t.piece)
            continue
        for i in range(a.shape[0]):
            mod = _module(t.name(layers[path[0]][i]))
            tensors[f"{PEFT_PREFIX}{mod}.lora_A.weight"] = a[i].reshape(-1, r).T.copy()
            tensors[f"{PEFT_PREFIX}{mod}.lora_B.weight"] = b[i].reshape(r, -1).T.copy()
            modules.add(mod.rsplit(".", 1)[1])
    conf_extra: dict[str, Any] = {"target_parameters": None, "rank_pattern": {}, "alpha_pattern": {}}
    for mod, parts in pieces.items():
        tensors.update(_fused_piece_tensors(mod, parts))
        name = mod.rsplit(".", 1)[1]
        modules.add(name)
        if len(parts) > 1:  # the parts side by side, each at its own rank: the scale kept by the patterns
            conf_extra["rank_pattern"][name] = len(parts) * lc.rank
            conf_extra["alpha_pattern"][name] = lc.alpha * (math.sqrt(len(parts)) if lc.rslora else len(parts))
    if experts:
        tps = set()
        for seg, parts in experts.items():
            tensors.update(_expert_tensors(parts, layers[seg], lc.rank))
            for _, _, t in parts.values():
                tps.add(t.fused.split("{i}.", 1)[1])
        conf_extra["target_parameters"] = sorted(tps)
        for tp in tps:
            if tp.endswith("gate_up_proj") and any({"gate", "up"} <= set(p) for p in experts.values()):
                conf_extra["rank_pattern"][tp] = 2 * lc.rank  # gate and up side by side: scale kept
                conf_extra["alpha_pattern"][tp] = lc.alpha * (math.sqrt(2.0) if lc.rslora else 2.0)
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    write_file(out / "adapter_model.safetensors",
               [(n, NAMES[np.dtype(np.float32)], tensors[n].shape) for n in names], lambda n: tensors[n])
    conf = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lc.rank, "lora_alpha": lc.alpha,
        "lora_dropout": 0.0 if experts else lc.dropout, "target_modules": sorted(modules), "bias": "none",
        "use_rslora": lc.rslora, "fan_in_fan_out": False, "init_lora_weights": True, "modules_to_save": None,
        "use_dora": False, "layers_to_transform": None, "layers_pattern": None, **conf_extra,
        "base_model_name_or_path": base_model_name_or_path or cfg.extra.get("hf_dir"), "inference_mode": True,
    }
    (out / "adapter_config.json").write_text(json.dumps(conf, indent=2, sort_keys=True))
    return out


def _expert_tensors(parts: dict, model_layers: tuple[int, ...], r: int) -> dict[str, np.ndarray]:
    """PEFT tensors of one MoE stack's expert adapters: ``parts`` {gate|up|down: (A [n, E, in, r],
    B [n, E, r, out], spec)}. PEFT's layout: lora_A [R*E, in] (expert-major), lora_B [out, R*E] (rank-major)."""
    out = {}
    gu = [k for k in ("gate", "up") if k in parts]
    wrapped = [p for p, on in zip(EXPERT_PARAMS, (bool(gu), "down" in parts)) if on]
    for i, layer in enumerate(model_layers):
        spec = next(iter(parts.values()))[2]
        module = spec.fused_name(layer).rsplit(".", 1)[0]
        keys = _expert_keys(module, wrapped)
        blocks = {}
        if gu:
            a0, b0, _ = parts[gu[0]]
            e, f = a0.shape[1], b0.shape[-1]
            big = r * len(gu)
            ap = np.concatenate([np.swapaxes(parts[k][0][i], 1, 2) for k in gu], axis=1)  # [E, R, H]
            bp = np.zeros((e, 2 * f, big), np.float32)  # [E, 2I, R]: block-diagonal over gate / up
            for j, k in enumerate(gu):
                row = parts[k][2].part[0] * f
                bp[:, row:row + f, j * r:(j + 1) * r] = np.swapaxes(parts[k][1][i], 1, 2)
            blocks["gate_up_proj"] = (ap, bp)
        if "down" in parts:
            a, b, _ = parts["down"]
            blocks["down_proj"] = (np.swapaxes(a[i], 1, 2), np.swapaxes(b[i], 1, 2))  # [E, r, I], [E, H, r]
        for name, (ap, bp) in blocks.items():
            e, big = ap.shape[:2]
            pre = f"{PEFT_PREFIX}{keys[name]}"
            out[f"{pre}.lora_A.weight"] = np.ascontiguousarray(ap.reshape(e * big, -1))
            out[f"{pre}.lora_B.weight"] = np.ascontiguousarray(np.transpose(bp, (1, 2, 0)).reshape(bp.shape[1], -1))
    return out


def load_adapter(adapter_dir: str | Path, mdef: Any) -> tuple[Any, dict]:
    """(LoRA ModelDef over ``mdef``, adapters in its param dtype) from a PEFT LoRA adapter directory. Every layer must carry the
    same adapted modules (PEFT's default); what cannot be represented fails naming the field or tensor.

    Expert adapters (``target_parameters`` on transformers' fused ``mlp.experts`` parameters) load as
    ``experts: true``: the fused gate_up adapter splits into gate and up adapters sharing A, each keeping the
    rank components its half of B uses. Adapters of different ranks or scales are padded with zero components
    to one rank and their scale ratio folded into B (exact up to float32 rounding)."""
    from .hf_save import flatten
    from .safetensors_io import Checkpoint
    from .transformer import stack_layers

    d = Path(adapter_dir)
    conf_file = d / "adapter_config.json"
    if not conf_file.is_file():
        raise LoRAError(f"{d}: no adapter_config.json")
    conf = json.loads(conf_file.read_text())
    where = f"{conf_file}"
    if conf.get("peft_type", "LORA") != "LORA":
        raise LoRAError(f"{where}: peft_type {conf.get('peft_type')!r} is not supported (only LORA)")
    base = mdef if mdef.cfg.lora is None else base_mdef(mdef)
    cfg = base.cfg
    tps = list(conf.get("target_parameters") or [])
    # patterns name fused expert parameters or fused tensors holding several of our params (their adapters are
    # cut per param, each at the rank it uses); any other module's rank must be r
    fused_modules = {t.hf.rsplit(".", 2)[-2] for t in _peft_map(cfg).values() if t.piece is not None}
    pattern_ok = lambda v: not v or all((tps and any(k.endswith(p) for p in EXPERT_PARAMS))
                                        or k.rsplit(".", 1)[-1] in fused_modules for k in v)
    for key, ok in (("use_dora", lambda v: not v), ("bias", lambda v: v in (None, "none")),
                    ("rank_pattern", pattern_ok), ("alpha_pattern", pattern_ok),
                    ("layers_to_transform", lambda v: v is None), ("fan_in_fan_out", lambda v: not v),
                    ("modules_to_save", lambda v: not v), ("use_qalora", lambda v: not v)):
        if key in conf and not ok(conf[key]):
            raise LoRAError(f"{where}: {key}={conf[key]!r} is not supported")
    rank = int(conf.get("r", 8))
    alpha = float(conf.get("lora_alpha", rank))
    rslora = bool(conf.get("use_rslora", False))
    s0 = alpha / math.sqrt(rank) if rslora else alpha / rank
    layers = stack_layers(cfg)
    by_module: dict[str, tuple[tuple[str, ...], int]] = {}
    by_piece: dict[str, list] = {}  # a fused module -> [(path, layer in stack, Piece)] of the params it holds
    by_experts: dict[str, tuple[str, int, dict]] = {}  # module -> (stack, layer in stack, {param: [specs]})
    for path, t in _peft_map(cfg).items():
        if "{i}" not in t.hf:
            continue
        for i, layer in enumerate(layers[path[0]]):
            if "{e}" not in t.hf and t.piece is not None:
                by_piece.setdefault(_module(t.name(layer)), []).append((path, i, t.piece))
            elif "{e}" not in t.hf:
                by_module[_module(t.name(layer))] = (path, i)
            elif t.fused:
                module, _, param = t.fused_name(layer).rpartition(".")
                by_experts.setdefault(module, (path[0], i, {}))[2].setdefault(param, []).append(t)
    wrapped = {m: [p for p in EXPERT_PARAMS if p in specs and
                   any(f"{m}.{p}" == tp or f"{m}.{p}".endswith("." + tp) for tp in tps)]
               for m, (_, _, specs) in by_experts.items()}
    expert_key = {keys: (m, p) for m, ps in wrapped.items() for p, keys in _expert_keys(m, ps).items()}
    ckpt = Checkpoint(d)
    try:
        found: dict[tuple[str, ...], dict[int, dict[str, np.ndarray]]] = {}
        fused: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        whole: dict[str, dict[str, np.ndarray]] = {}  # adapters of fused modules, cut into their params below
        for name in ckpt.names():
            body = name.removeprefix(PEFT_PREFIX)
            mod, _, kind = body.rpartition(".lora_")
            if kind in ("A.weight", "B.weight") and mod in expert_key:
                fused.setdefault(expert_key[mod], {})[kind[0]] = ckpt.get(name)
                continue
            if kind in ("A.weight", "B.weight") and mod in by_piece:
                whole.setdefault(mod, {})[kind[0]] = ckpt.get(name)
                continue
            if kind not in ("A.weight", "B.weight") or mod not in by_module:
                raise LoRAError(f"{d}: tensor {name} is not a LoRA A/B of a {cfg.family} projection")
            path, i = by_module[mod]
            found.setdefault(path, {}).setdefault(i, {})[kind[0]] = ckpt.get(name)
    finally:
        ckpt.close()
    _cut_fused_adapters(d, whole, by_piece, conf, s0, rslora, found)
    if not found and not fused:
        raise LoRAError(f"{d}: adapter_model.safetensors holds no LoRA tensors")
    # dense projections: [in, r] / [r, out] per layer, as PEFT's rank r
    dense: dict[tuple[str, ...], list[tuple[np.ndarray, np.ndarray]]] = {}
    for path, per_layer in found.items():
        n = len(layers[path[0]])
        if sorted(per_layer) != list(range(n)) or any(set(v) != {"A", "B"} for v in per_layer.values()):
            raise LoRAError(f"{d}: {path[-1]} is adapted in only some layers (or lacks A or B); every layer "
                            "must carry it")
        dense[path] = [(per_layer[i]["A"].astype(np.float32).T, per_layer[i]["B"].astype(np.float32).T)
                       for i in range(n)]
    experts = _split_expert_adapters(d, fused, by_experts, wrapped, conf, s0, rslora, cfg)
    big = max([rank] + [a.shape[-1] for per in experts.values() for a, _ in per.values()]
              + [a.shape[1] for per in dense.values() for a, _ in per])
    targets = sorted({p[-1] for p in found} | {k for per in experts.values() for k in per}, key=TARGETS.index)
    lc = LoRAConfig(rank=big, alpha=s0 * (math.sqrt(big) if rslora else big), dropout=0.0,
                    targets=tuple(targets), experts=bool(experts), rslora=rslora)
    try:
        lmdef = with_lora(base, lc)
    except LoRAError as e:
        raise LoRAError(f"{d}: {e}") from None
    fshapes = flatten(split(lmdef.abstract_params())[1])
    pad = lambda a, axis: np.pad(a, [(0, big - a.shape[axis]) if k == axis else (0, 0) for k in range(a.ndim)])
    values: dict[tuple[str, ...], np.ndarray] = {}
    for path, per in dense.items():
        sa = fshapes.get(path[:-1] + (path[-1] + SUFFIX_A,))
        if sa is None:  # e.g. gate on a MoE layer without experts adapters
            raise LoRAError(f"{d}: adapter on {'.'.join(path)} cannot be represented")
        sb = fshapes[path[:-1] + (path[-1] + SUFFIX_B,)]
        try:
            values[path[:-1] + (path[-1] + SUFFIX_A,)] = np.stack([pad(a, 1).reshape(sa.shape[1:]) for a, _ in per])
            values[path[:-1] + (path[-1] + SUFFIX_B,)] = np.stack([pad(b, 0).reshape(sb.shape[1:]) for _, b in per])
        except ValueError:
            got = per[0][0].shape, per[0][1].shape
            raise LoRAError(f"{d}: {path[-1]} adapter shapes {got} do not fit rank {rank} on this model") from None
    for seg, per in experts.items():
        for name, (a, b) in per.items():
            values[(seg, "mlp", name + SUFFIX_A)] = pad(a, a.ndim - 1)
            values[(seg, "mlp", name + SUFFIX_B)] = pad(b, b.ndim - 2)
    out: dict = {}
    for path, s in fshapes.items():  # adapters the file leaves out (e.g. shared experts' gate) are zero
        v = values.get(path)
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = jnp.zeros(s.shape, s.dtype) if v is None else jnp.asarray(v, s.dtype)
    return lmdef, out


def _cut_fused_adapters(d: Path, whole: dict, by_piece: dict, conf: dict, s0: float, rslora: bool,
                        found: dict) -> None:
    """Adapters of fused checkpoint tensors (Phi-3's qkv_proj, Qwen3.5's q_proj and in_proj_qkv) as adapters of
    the params they hold, into ``found``: each param takes A and its rows of B, keeps the rank components its
    rows use (ours, written side by side, come back at their own rank) and B scaled by the module's scale over
    ``s0``. A param none of whose rows the adapter touches gets no adapter."""
    for mod, got in whole.items():
        if set(got) != {"A", "B"}:
            raise LoRAError(f"{d}: {mod} lacks its LoRA A or B")
        a, b = got["A"].astype(np.float32), got["B"].astype(np.float32)
        r_m = a.shape[0]
        alpha_m = float(_pattern(conf.get("alpha_pattern") or {}, mod, conf.get("lora_alpha", r_m)))
        scale = alpha_m / (math.sqrt(r_m) if rslora else r_m)
        for path, i, piece in by_piece[mod]:
            try:
                bp = piece.cut(b)
            except ValueError:
                raise LoRAError(f"{d}: {mod} adapter B {list(b.shape)} does not fit the fused tensor") from None
            used = np.flatnonzero(np.abs(bp).sum(axis=0) > 0)
            if used.size:
                found.setdefault(path, {})[i] = {"A": a[used], "B": bp[:, used] * (scale / s0)}


def _split_expert_adapters(d: Path, fused: dict, by_experts: dict, wrapped: dict, conf: dict, s0: float,
                           rslora: bool, cfg: TransformerConfig) -> dict[str, dict[str, tuple]]:
    """{stack: {gate|up|down: (A [n, E, in, k], B [n, E, k, out])}} from PEFT's fused-expert adapters, B
    scaled by the parameter's scale over ``s0``; each keeps the rank components its part of B uses (so our
    gate + up written as one block-diagonal adapter comes back at its own rank)."""
    if not fused:
        return {}
    e = cfg.moe.n_experts
    per_layer: dict[str, dict[str, dict[int, tuple]]] = {}
    for module, params in wrapped.items():
        seg, i, specs = by_experts[module]
        for param in params:
            got = fused.get((module, param), {})
            if set(got) != {"A", "B"}:
                raise LoRAError(f"{d}: {module}.{param} is adapted in only some layers (or lacks A or B); every "
                                "layer must carry it")
            a, b = got["A"].astype(np.float32), got["B"].astype(np.float32)
            big = a.shape[0] // e
            key = f"{module}.{param}"
            r_m = _pattern(conf.get("rank_pattern"), key, int(conf.get("r", 8)))
            if a.shape[0] != big * e or b.shape[1] != big * e or big != r_m:
                raise LoRAError(f"{d}: {key} adapter shapes {tuple(a.shape)}, {tuple(b.shape)} are not rank {r_m} "
                                f"over {e} experts")
            alpha_m = float(_pattern(conf.get("alpha_pattern"), key, conf.get("lora_alpha", r_m)))
            ratio = (alpha_m / (math.sqrt(big) if rslora else big)) / s0
            ap = a.reshape(e, big, -1)  # [E, R, in]
            bp = np.transpose(b.reshape(b.shape[0], big, e), (2, 0, 1)) * np.float32(ratio)  # [E, out, R]
            for t in specs[param]:
                which, parts = t.part
                rows = bp.shape[1] // parts
                bt = bp[:, which * rows:(which + 1) * rows]  # this target's rows of the fused weight
                used = np.flatnonzero(np.abs(bt).max(axis=(0, 1)) > 0)
                per_layer.setdefault(seg, {}).setdefault(t.path[-1], {})[i] = (
                    np.swapaxes(ap[:, used], 1, 2), np.swapaxes(bt[:, :, used], 1, 2))
    out: dict[str, dict[str, tuple]] = {}
    for seg, per in per_layer.items():
        for name, by_i in per.items():  # every layer's module is targeted (a missing one failed above)
            n = len(by_i)
            k = max(by_i[i][0].shape[-1] for i in range(n))
            padk = lambda x, ax, k=k: np.pad(x, [(0, k - x.shape[ax]) if j == ax else (0, 0) for j in range(x.ndim)])
            out.setdefault(seg, {})[name] = (np.stack([padk(by_i[i][0], 2) for i in range(n)]),
                                            np.stack([padk(by_i[i][1], 1) for i in range(n)]))
    return out
