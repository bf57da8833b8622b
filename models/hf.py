"""Hugging Face checkpoints in and out: config.json <-> TransformerConfig, safetensors <-> params.

Loading streams one tensor at a time from memory-mapped files, converts it to the target dtype and, with a
mesh, builds each device's shard directly (only the layers/experts/rows that shard needs), so peak host memory
is about one tensor (or one shard of one stacked parameter), never the model. Checkpoints that do not match
their config fail before anything is allocated, with one error naming the offending tensors or field.

Saving writes what transformers itself writes (per-expert MoE tensors, the original config.json when the
model came from a checkpoint) so transformers and vLLM load the result unchanged.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from reasoning_rl.sharding import DEFAULT_RULES, ShardingContext, use

from .config import TransformerConfig
from .families import ConfigError, Tensor, for_family, for_model_type
from .families.base import hf_shape, to_hf, to_ours
from .safetensors_io import FLOAT_DTYPES, NAMES, Checkpoint, write_file
from .transformer import ModelDef, create, positions_from_valid, segments

NP_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
             "float16": np.dtype(np.float16)}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")


class CheckpointError(ValueError):
    """The safetensors files do not match config.json; the message names the tensors."""


def _read_config(src: str | Path | Mapping) -> tuple[dict, Path | None]:
    if isinstance(src, Mapping):
        return dict(src), None
    path = Path(src)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no config.json")
    return json.loads(file.read_text()), file.parent


def config_from_hf(hf_dir: str | Path | Mapping) -> TransformerConfig:
    """TransformerConfig from a checkpoint directory (or a config.json dict). The original config.json is
    kept in ``extra["hf_config"]`` (and the directory in ``extra["hf_dir"]``) so saving can write it back."""
    hf, directory = _read_config(hf_dir)
    cfg = for_model_type(hf.get("model_type")).from_hf(hf)
    extra = {"hf_config": hf, **({"hf_dir": str(directory)} if directory else {})}
    return dataclasses.replace(cfg, extra=extra)


# ---------------------------------------------------------------------- loading


@dataclass
class _Slot:
    """One of our parameters and the checkpoint tensors that fill it."""

    t: Tensor
    shape: tuple[int, ...]  # ours, global
    first: int  # checkpoint index of the stack's first layer
    n_stack: int  # leading stacked dims (layer and/or expert)

    @property
    def slice_shape(self) -> tuple[int, ...]:
        return self.shape[self.n_stack:]

    def index(self, idx: tuple[int, ...]) -> tuple[int | None, int | None]:
        has_layer, has_expert = self.t.stacked()
        layer = self.first + idx[0] if has_layer else None
        expert = idx[-1] if has_expert else None
        return layer, expert

    def stack_ranges(self) -> list[range]:
        return [range(n) for n in self.shape[:self.n_stack]]


def _flat(tree: dict, prefix: tuple = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _slots(mdef: ModelDef) -> list[_Slot]:
    cfg = mdef.cfg
    fam = for_family(cfg.family)
    firsts = {name: first for name, first, _, _ in segments(cfg)}
    shapes = _flat(mdef.abstract_params())
    slots, seen = [], set()
    for t in fam.tensors(cfg):
        if t.path not in shapes:
            if t.zeros is not None:
                continue
            raise RuntimeError(f"family {cfg.family}: weight map names {'.'.join(t.path)}, which the model lacks")
        has_layer, has_expert = t.stacked()
        slots.append(_Slot(t, tuple(shapes[t.path].shape), firsts.get(t.path[0], 0), has_layer + has_expert))
        seen.add(t.path)
    missing = set(shapes) - seen
    if missing:
        raise RuntimeError(f"family {cfg.family}: weight map lacks {sorted('.'.join(p) for p in missing)}")
    return slots


def _reader(slot: _Slot, ckpt: Checkpoint, layer, expert) -> Callable[[], np.ndarray]:
    name = slot.t.hf.format(i=layer, e=expert)
    if name in ckpt:
        return lambda: ckpt.get(name)
    which, parts = slot.t.part
    fused = slot.t.fused.format(i=layer)

    def read():
        a = ckpt.get(fused)[expert]
        rows = a.shape[0] // parts
        return a[which * rows:(which + 1) * rows]

    return read


def _check(slots: list[_Slot], ckpt: Checkpoint, cfg: TransformerConfig, directory: Path) -> None:
    """Every tensor present with its expected shape and a float dtype, and nothing unexplained left over."""
    problems: list[str] = []
    used: set[str] = set()
    for slot in slots:
        want = hf_shape(slot.t.layout, slot.slice_shape)
        for idx in itertools.product(*slot.stack_ranges()):
            layer, expert = slot.index(idx)
            name = slot.t.hf.format(i=layer, e=expert)
            if name in ckpt:
                got_dtype, got = ckpt.info(name)
                used.add(name)
            elif slot.t.fused and slot.t.fused.format(i=layer) in ckpt:
                name = slot.t.fused.format(i=layer)
                got_dtype, got = ckpt.info(name)
                used.add(name)
                n_exp = slot.shape[slot.n_stack - 1]
                want_f = (n_exp, want[0] * slot.t.part[1], *want[1:])
                if got != want_f:
                    problems.append(f"{name}: shape {list(got)} in the checkpoint, config.json implies {list(want_f)}")
                    break
                continue
            else:
                problems.append(f"{name}: missing from the checkpoint")
                continue
            if got != want:
                problems.append(f"{name}: shape {list(got)} in the checkpoint, config.json implies {list(want)}")
            elif got_dtype not in FLOAT_DTYPES:
                problems.append(f"{name}: dtype {got_dtype} is not supported (quantized checkpoints are not)")
    fam = for_family(cfg.family)
    zero_names = {t.hf for t in fam.tensors(cfg) if t.zeros is not None}
    ignore = getattr(fam, "ignored", lambda name, cfg: False)
    for name in ckpt.names():
        if name in used or name.endswith("rotary_emb.inv_freq") or ignore(name, cfg):
            continue
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue
        if any(_matches(z, name) for z in zero_names):
            continue
        problems.append(f"{name}: unexpected tensor (not part of a {cfg.family} model with this config.json)")
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise CheckpointError(f"{directory}: checkpoint does not match config.json: " + "; ".join(problems[:8]) + more)


def _matches(template: str, name: str) -> bool:
    head, _, tail = template.partition("{i}")
    return name.startswith(head) and name.endswith(tail) and name[len(head):len(name) - len(tail)].isdigit()


def _build(slot: _Slot, ckpt: Checkpoint, region: tuple[slice, ...], dtype: np.dtype) -> np.ndarray:
    """The part ``region`` of one parameter, reading only the (layer, expert) tensors inside it."""
    out = np.empty(tuple(s.stop - s.start for s in region), dtype)
    stack, rest = region[:slot.n_stack], region[slot.n_stack:]
    for idx in itertools.product(*(range(s.start, s.stop) for s in stack)):
        layer, expert = slot.index(idx)
        a = to_ours(_reader(slot, ckpt, layer, expert)(), slot.t.layout, slot.slice_shape)
        out[tuple(i - s.start for i, s in zip(idx, stack))] = a[rest].astype(dtype)
    return out


def _full(shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(0, n) for n in shape)


def _normalize(idx: tuple, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(*s.indices(n)[:2]) for s, n in zip(idx, shape))


def _place(slot: _Slot, ckpt: Checkpoint, dtype: np.dtype, sharding) -> jax.Array:
    if sharding is None:
        return jax.device_put(_build(slot, ckpt, _full(slot.shape), dtype))
    index_map = sharding.addressable_devices_indices_map(slot.shape)
    shards: dict[tuple, np.ndarray] = {}
    arrays = []
    for dev, idx in index_map.items():
        region = _normalize(idx, slot.shape)
        key = tuple((s.start, s.stop) for s in region)
        if key not in shards:  # replicas of a shard read the checkpoint once
            shards[key] = _build(slot, ckpt, region, dtype)
        arrays.append(jax.device_put(shards[key], dev))
    return jax.make_array_from_single_device_arrays(slot.shape, sharding, arrays)


def _target_dtype(template_dtype, cfg: TransformerConfig, dtype: str | None) -> np.dtype:
    # Parameters the model keeps in float32 whatever param_dtype says (router weights) stay float32.
    if dtype is None or np.dtype(template_dtype) != np.dtype(cfg.jnp_param_dtype):
        return np.dtype(template_dtype)
    if dtype not in NP_DTYPES:
        raise ValueError(f"dtype: unsupported value {dtype!r} (supported: {', '.join(NP_DTYPES)})")
    return NP_DTYPES[dtype]


def load_params(hf_dir: str | Path, mdef: ModelDef, dtype: str | None = None, mesh=None, *,
                rules: Mapping | None = None) -> dict:
    """Params (a pure dict shaped like ``mdef.abstract_params()``) from the checkpoint's safetensors.

    ``dtype``: target parameter dtype (default: the ModelDef's param_dtype). ``mesh``: place each tensor
    straight into the sharding its logical axes get under ``rules`` (default DEFAULT_RULES)."""
    directory = Path(hf_dir)
    ckpt = Checkpoint(directory)
    try:
        slots = _slots(mdef)
        _check(slots, ckpt, mdef.cfg, directory)
        axes = _flat(mdef.param_axes())
        templ = _flat(mdef.abstract_params())
        ctx = ShardingContext(mesh, dict(rules or DEFAULT_RULES)) if mesh is not None else None
        params: dict = {}
        for slot in slots:
            sharding = ctx.sharding(axes[slot.t.path], slot.shape) if ctx is not None else None
            x = _place(slot, ckpt, _target_dtype(templ[slot.t.path].dtype, mdef.cfg, dtype), sharding)
            node = params
            for p in slot.t.path[:-1]:
                node = node.setdefault(p, {})
            node[slot.t.path[-1]] = x
        return params
    finally:
        ckpt.close()


class PretrainedModel:
    """A loaded checkpoint: callable on token ids, and usable functionally through ``.mdef``/``.params``."""

    def __init__(self, mdef: ModelDef, params: dict, mesh=None, rules: Mapping | None = None):
        self.mdef, self.params, self.mesh = mdef, params, mesh
        self.ctx = ShardingContext(mesh, dict(rules or DEFAULT_RULES)) if mesh is not None else None
        self._forward = jax.jit(lambda p, t, v: mdef.bind(p)(t, positions_from_valid(v), v))

    @property
    def cfg(self) -> TransformerConfig:
        return self.mdef.cfg

    def __call__(self, input_ids, attention_mask=None) -> jax.Array:
        """Logits [B, T, V] (float32) for int token ids [B, T]; ``attention_mask`` marks real tokens (left
        padding gets positions starting at each row's first real token)."""
        ids = jnp.asarray(input_ids, jnp.int32)
        valid = jnp.ones(ids.shape, bool) if attention_mask is None else jnp.asarray(attention_mask, bool)
        with use(self.ctx):
            return self._forward(self.params, ids, valid)

    def save_pretrained(self, out_dir: str | Path, **kw) -> Path:
        return save_pretrained(self, out_dir, **kw)


def load_pretrained(hf_dir: str | Path, dtype: str = "float32", mesh=None, *,
                    rules: Mapping | None = None) -> PretrainedModel:
    """Load a Hugging Face checkpoint directory (config.json + safetensors) as a :class:`PretrainedModel`;
    ``dtype`` is both the parameter and the compute dtype."""
    cfg = dataclasses.replace(config_from_hf(hf_dir), param_dtype=dtype, dtype=dtype)
    mdef, _ = create(cfg, abstract=True)
    return PretrainedModel(mdef, load_params(hf_dir, mdef, dtype, mesh, rules=rules), mesh, rules)


# ---------------------------------------------------------------------- saving


def _runtime_neutral(cfg: TransformerConfig, like: TransformerConfig) -> TransformerConfig:
    """``cfg`` with the fields that do not change the checkpoint format taken from ``like``."""
    moe = cfg.moe if cfg.moe is None or like.moe is None else dataclasses.replace(cfg.moe, impl=like.moe.impl)
    return dataclasses.replace(cfg, param_dtype=like.param_dtype, dtype=like.dtype, remat=like.remat,
                               scan_layers=like.scan_layers, extra=like.extra, max_seq_len=like.max_seq_len, moe=moe)


def hf_config(cfg: TransformerConfig) -> dict:
    """The config.json to write: the checkpoint's own when ``cfg`` still describes it, else generated."""
    fam = for_family(cfg.family)
    stored = cfg.extra.get("hf_config")
    if stored is not None:
        try:
            if _runtime_neutral(fam.from_hf(stored), cfg) == cfg:
                return json.loads(json.dumps(stored))
        except ConfigError:
            pass
    return fam.to_hf(cfg)


def _resolve(model, out_dir, params) -> tuple[ModelDef, dict, Path]:
    if isinstance(out_dir, Mapping):  # save_pretrained(mdef, params, out_dir)
        out_dir, params = params, out_dir
    if isinstance(model, PretrainedModel):
        return model.mdef, model.params if params is None else params, Path(out_dir)
    if isinstance(model, tuple):
        return model[0], model[1], Path(out_dir)
    if params is None:
        raise TypeError("save_pretrained(mdef, ...) needs params")
    return model, params, Path(out_dir)


def _host(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def save_pretrained(model, out_dir, params: dict | None = None, *, dtype: str | None = None,
                    max_shard_bytes: int = 5 * 2**30, tokenizer_from: str | Path | None = None) -> Path:
    """Write config.json + safetensors (sharded with an index above ``max_shard_bytes``) that transformers
    loads unchanged. ``model``: a PretrainedModel, a ``(mdef, params)`` pair, or a ModelDef with ``params``
    (``save_pretrained(mdef, params, out_dir)`` also works). ``dtype`` defaults to the model's param_dtype.
    Tokenizer and generation files are copied from ``tokenizer_from`` (default: the checkpoint the config was
    read from, if any). Multi-host: every process must call this; process 0 writes."""
    mdef, params, out = _resolve(model, out_dir, params)
    cfg = mdef.cfg
    dtype = dtype or cfg.param_dtype
    if dtype not in NP_DTYPES:
        raise ValueError(f"dtype: unsupported value {dtype!r} (supported: {', '.join(NP_DTYPES)})")
    st_dtype = NAMES[NP_DTYPES[dtype]]
    flat = _flat(params)
    firsts = {name: (first, n) for name, first, n, _ in segments(cfg)}

    # Every checkpoint tensor: (name, checkpoint shape, spec, stack index).
    plan: list[tuple[str, tuple[int, ...], Tensor, tuple[int, ...]]] = []
    for t in for_family(cfg.family).tensors(cfg):
        has_layer, has_expert = t.stacked()
        first, n = firsts.get(t.path[0], (0, 0))
        if t.path in flat:
            shape = tuple(flat[t.path].shape)
        else:
            shape = ((n,) if has_layer else ()) + t.zeros
        stack = shape[:has_layer + has_expert]
        for idx in itertools.product(*(range(k) for k in stack)):
            layer = first + idx[0] if has_layer else None
            expert = idx[-1] if has_expert else None
            plan.append((t.hf.format(i=layer, e=expert), hf_shape(t.layout, shape[len(stack):]), t, idx))

    shards: list[list] = [[]]
    size = 0
    itemsize = NP_DTYPES[dtype].itemsize
    for entry in plan:
        nbytes = math.prod(entry[1]) * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes

    writer = jax.process_index() == 0
    cache: dict[tuple, np.ndarray] = {}

    def produce(entry) -> np.ndarray:
        _, _, t, idx = entry
        if t.path not in flat:
            return np.zeros(entry[1], NP_DTYPES[dtype])
        if t.path not in cache:
            cache.clear()  # one parameter on the host at a time
            cache[t.path] = _host(flat[t.path])
        a = cache[t.path][idx]
        return to_hf(a, t.layout, a.shape).astype(NP_DTYPES[dtype])

    out.mkdir(parents=True, exist_ok=True)
    n_files = len(shards)
    weight_map, total = {}, 0
    for k, entries in enumerate(shards):
        fname = "model.safetensors" if n_files == 1 else f"model-{k + 1:05d}-of-{n_files:05d}.safetensors"
        by_name = {e[0]: e for e in entries}
        specs = [(e[0], st_dtype, e[1]) for e in entries]
        if writer:
            total += write_file(out / fname, specs, lambda name, by_name=by_name: produce(by_name[name]))
        else:
            for e in entries:
                produce(e)  # take part in the gathers
        weight_map.update({e[0]: fname for e in entries})
    if not writer:
        return out
    if n_files > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    conf = hf_config(cfg)
    conf["dtype"] = dtype
    if "torch_dtype" in conf:
        conf["torch_dtype"] = dtype
    (out / "config.json").write_text(json.dumps(conf, indent=2, sort_keys=True))
    src = tokenizer_from or cfg.extra.get("hf_dir")
    if src and Path(src).resolve() != out.resolve():
        for f in TOKENIZER_FILES:
            if (Path(src) / f).is_file():
                shutil.copyfile(Path(src) / f, out / f)
    return out


__all__ = ["CheckpointError", "ConfigError", "PretrainedModel", "config_from_hf", "hf_config", "load_params",
           "load_pretrained", "save_pretrained"]
