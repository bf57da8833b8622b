"""Hugging Face checkpoints in and out: config.json <-> TransformerConfig, safetensors <-> params.

Loading streams one tensor at a time from memory-mapped files, converts it to the target dtype and, with a
mesh, builds each device's shard directly (only the layers/experts/rows that shard needs), so peak host memory
is about one tensor (or one shard of one stacked parameter), never the model. Checkpoints that do not match
their config fail before anything is allocated, with one error naming the offending tensors or field.
Saving lives in ``hf_save`` and is re-exported here.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from reasoning_rl.sharding import DEFAULT_RULES, ShardingContext, use

from .config import TransformerConfig
from .families import ConfigError, Tensor, for_family, for_model_type
from .families.base import hf_shape, to_ours
from .families.multimodal import TextView, text_config
from .hf_save import NP_DTYPES, flatten, hf_config, save_pretrained
from .quantized import open_dequantized, quantization
from .safetensors_io import FLOAT_DTYPES, Checkpoint, ModelDirError
from .transformer import ModelDef, create, positions_from_valid, stack_layers
from .value import VALUE_HEAD_NAMES, is_value_model


class CheckpointError(ModelDirError):
    """The safetensors files do not match config.json; the message names the file and the tensors."""


class HFConfigError(ConfigError, ModelDirError):
    """config.json of a directory asks for something these models cannot represent: ``<path>: <field> ...``."""


def _json_float(obj: dict):
    """transformers writes a non-finite float of a config as ``{"__float__": "Infinity"}`` (strict JSON has no
    infinity): read back as the float, for every field of every family."""
    return float(obj["__float__"]) if obj.keys() == {"__float__"} else obj


def _read_config(src: str | Path | Mapping) -> tuple[dict, Path | None]:
    if isinstance(src, Mapping):
        return dict(src), None
    path = Path(src)
    if not path.exists():
        raise ModelDirError(f"{path}: no such model directory")
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ModelDirError(f"{file}: missing (a Hugging Face model directory needs its config.json)")
    try:
        hf = json.loads(file.read_text(), object_hook=_json_float)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else f"not valid JSON: {e}"
        raise ModelDirError(f"{file}: cannot be read ({why})") from None
    if not isinstance(hf, dict):
        raise ModelDirError(f"{file}: expected a JSON object, got {type(hf).__name__}")
    return hf, file.parent


def config_from_hf(hf_dir: str | Path | Mapping) -> TransformerConfig:
    """TransformerConfig from a checkpoint directory (or a config.json dict). The original config.json is
    kept in ``extra["hf_config"]`` (and the directory in ``extra["hf_dir"]``) so saving can write it back.
    A directory's problems raise ModelDirError (an unsupported field: HFConfigError, also a ConfigError)
    naming the file. A vision-language checkpoint of a known kind (``families.multimodal``) gives its language
    model's config, the one kept for saving (an export is the text model); ``extra["hf_wrapper"]`` names the
    wrapper, whose tensor names ``open_checkpoint`` translates; ``extra["hf_quant"]`` a quantization_config
    (FP8 blocks, MXFP4) whose tensors ``open_checkpoint`` dequantizes (``models.quantized``)."""
    hf, directory = _read_config(hf_dir)
    wrapper = None
    try:
        quant = quantization(hf)  # a wrapper's (vision-language) is its top level's
        text = text_config(hf)
        if text is not None:
            hf, wrapper = text, hf["model_type"]
            quant = quant or quantization(hf)
        cfg = for_model_type(hf.get("model_type")).from_hf(hf)
    except ConfigError as e:
        if directory is None:
            raise
        msg = str(e).removeprefix("config.json: ")
        raise HFConfigError(f"{directory / 'config.json'}: {msg}") from None
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:  # a field of the wrong type or value
        if directory is None:
            raise
        raise HFConfigError(f"{directory / 'config.json'}: unusable value ({type(e).__name__}: {e})") from None
    extra = {"hf_config": hf, **({"hf_dir": str(directory)} if directory else {}),
             **({"hf_wrapper": wrapper} if wrapper else {}), **({"hf_quant": quant} if quant else {})}
    return dataclasses.replace(cfg, extra=extra)


def open_checkpoint(directory: str | Path, cfg: TransformerConfig):
    """The safetensors of ``directory`` as ``cfg``'s model names its tensors (a vision-language wrapper's
    language model: ``families.multimodal.TextView``), quantized ones dequantized (``quantized.Dequantized``)."""
    ckpt = open_dequantized(Checkpoint(directory), cfg.extra.get("hf_quant"))
    view = getattr(for_family(cfg.family), "checkpoint_view", None)  # a family whose files use other names
    if view is not None:
        ckpt = view(ckpt, cfg)
    wrapper = cfg.extra.get("hf_wrapper")
    return TextView(ckpt, wrapper, cfg) if wrapper else ckpt


def check_model_dir(hf_dir: str | Path, *, weights: bool | None = True, tokenizer: bool = True) -> TransformerConfig:
    """Everything about a model directory that can be checked without reading the weights, so a bad one
    stops a command before any compute with one line naming the file: config.json readable and supported,
    a tokenizer present (``tokenizer``), and (``weights``; None: only if there are any) safetensors headers
    consistent with the files' sizes and every tensor present with the shape and dtype config.json implies.
    Returns the directory's TransformerConfig."""
    from .hf_tokenizer import check_tokenizer_dir

    path = Path(hf_dir)
    if not path.is_dir():
        raise ModelDirError(f"{path}: no such model directory" if not path.exists() else f"{path}: not a directory")
    cfg = config_from_hf(path)
    if tokenizer:
        check_tokenizer_dir(path)
    has_weights = any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file()
    if weights or (weights is None and has_weights):
        if not has_weights and any(path.glob("*.bin")):
            raise ModelDirError(f"{path}: only PyTorch *.bin weights; convert them to safetensors "
                                "(transformers: model.save_pretrained(dir, safe_serialization=True))")
        mdef, _ = create(cfg, abstract=True)
        ckpt = open_checkpoint(path, cfg)
        try:
            _check(_slots(mdef), ckpt, cfg, path)
        finally:
            ckpt.close()
    return cfg


# ---------------------------------------------------------------------- loading


@dataclass
class _Slot:
    """One of our parameters and the checkpoint tensors that fill it."""

    t: Tensor
    shape: tuple[int, ...]  # ours, global
    layers: tuple[int, ...]  # checkpoint layer index of each entry of the stack
    n_stack: int  # leading stacked dims (layer and/or expert)

    @property
    def slice_shape(self) -> tuple[int, ...]:
        return self.shape[self.n_stack:]

    def index(self, idx: tuple[int, ...]) -> tuple[int | None, int | None]:
        has_layer, has_expert = self.t.stacked()
        layer = self.layers[idx[0]] if has_layer else None
        expert = idx[-1] if has_expert else None
        return layer, expert

    def stack_ranges(self) -> list[range]:
        return [range(n) for n in self.shape[:self.n_stack]]


def _slots(mdef: ModelDef) -> list[_Slot]:
    cfg = mdef.cfg
    fam = for_family(cfg.family)
    layers = stack_layers(cfg)
    shapes = flatten(mdef.abstract_params())
    slots, seen = [], set()
    for t in fam.tensors(cfg):
        if t.path not in shapes:
            if t.zeros is not None:
                continue
            raise RuntimeError(f"family {cfg.family}: weight map names {'.'.join(t.path)}, which the model lacks")
        has_layer, has_expert = t.stacked()
        slots.append(_Slot(t, tuple(shapes[t.path].shape), layers.get(t.path[0], ()), has_layer + has_expert))
        seen.add(t.path)
    missing = set(shapes) - seen
    if missing:
        raise RuntimeError(f"family {cfg.family}: weight map lacks {sorted('.'.join(p) for p in missing)}")
    return slots


def _reader(slot: _Slot, ckpt: Checkpoint, layer, expert) -> Callable[[], np.ndarray]:
    name = slot.t.name(layer, expert)
    if name in ckpt and slot.t.piece is not None:
        return lambda: slot.t.piece.cut(ckpt.get(name))
    if name in ckpt:
        return lambda: ckpt.get(name)
    which, parts = slot.t.part
    fused = slot.t.fused_name(layer)

    def read():
        a = ckpt.get(fused)[expert]
        rows = a.shape[0] // parts
        return a[which * rows:(which + 1) * rows]

    return read


def _check(slots: list[_Slot], ckpt: Checkpoint, cfg: TransformerConfig, directory: Path) -> None:
    """Every tensor present with its expected shape and a float dtype, and nothing unexplained left over."""
    quantized = getattr(ckpt, "problems", list)()  # tensors a quantization_config describes but cannot decode
    problems: list[str] = [f"{label}: {why}" for label, why in quantized]
    flagged = {label for label, _ in quantized}
    files: set[Path] = {directory} if quantized else set()  # the files the problems are in (None: missing)
    used: set[str] = set()
    for slot in slots:
        want = hf_shape(slot.t.layout, slot.slice_shape)
        if slot.t.piece is not None:
            want = slot.t.piece.whole(want)
        for idx in itertools.product(*slot.stack_ranges()):
            layer, expert = slot.index(idx)
            name = slot.t.name(layer, expert)
            if name in ckpt:
                got_dtype, got = ckpt.info(name)
                used.add(name)
            elif slot.t.fused and slot.t.fused_name(layer) in ckpt:
                name = slot.t.fused_name(layer)
                got_dtype, got = ckpt.info(name)
                used.add(name)
                n_exp = slot.shape[slot.n_stack - 1]
                want_f = (n_exp, want[0] * slot.t.part[1], *want[1:])
                if got != want_f:
                    problems.append(f"{ckpt.label(name)}: shape {list(got)} in the checkpoint, config.json implies "
                                    f"{list(want_f)}")
                    files.add(ckpt.file_of(name))
                    break
                continue
            else:
                problems.append(f"{ckpt.label(name)}: missing from the checkpoint")
                files.add(None)
                continue
            if got != want:
                problems.append(f"{ckpt.label(name)}: shape {list(got)} in the checkpoint, config.json implies "
                                f"{list(want)}")
                files.add(ckpt.file_of(name))
            elif got_dtype not in FLOAT_DTYPES and ckpt.label(name) not in flagged:
                problems.append(f"{ckpt.label(name)}: dtype {got_dtype} is not supported (floating-point weights, "
                                "or FP8 / MXFP4 ones that config.json's quantization_config describes)")
                files.add(ckpt.file_of(name))
    fam = for_family(cfg.family)
    zero_names = {t.hf for t in fam.tensors(cfg) if t.zeros is not None}
    ignore = getattr(fam, "ignored", lambda name, cfg: False)
    for name in ckpt.names():
        if name in used or name.endswith("rotary_emb.inv_freq") or ignore(name, cfg):
            continue
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue
        if name in VALUE_HEAD_NAMES and is_value_model(cfg):  # a value model's head (models.value)
            continue
        if any(_matches(z, name) for z in zero_names):
            continue
        if 0 in ckpt.info(name)[1]:  # holds nothing: a zero-wide shared expert (the references build and store
            continue  # one of ``moe_intermediate_size * 0`` when a DeepSeekMoE config has no shared experts)
        problems.append(f"{ckpt.label(name)}: unexpected tensor (not part of a {cfg.family} model with this "
                        "config.json)")
        files.add(ckpt.file_of(name))
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        where = next(iter(files)) if len(files) == 1 and None not in files else directory
        raise CheckpointError(f"{where}: does not match config.json: " + "; ".join(problems[:8]) + more)


def _matches(template: str, name: str) -> bool:
    head, _, tail = template.partition("{i}")
    return name.startswith(head) and name.endswith(tail) and name[len(head):len(name) - len(tail)].isdigit()


def _build(slot: _Slot, ckpt: Checkpoint, regions: list[tuple[slice, ...]], dtype: np.dtype) -> list[np.ndarray]:
    """The parts ``regions`` of one parameter (one per device shard), reading only the (layer, expert) tensors
    inside them, each once whatever the number of regions it falls in (a dequantized tensor is computed
    whole: once, not once per shard)."""
    outs = [np.empty(tuple(s.stop - s.start for s in r), dtype) for r in regions]
    n = slot.n_stack
    wanted = sorted({idx for r in regions for idx in itertools.product(*(range(s.start, s.stop) for s in r[:n]))})
    for idx in wanted:
        layer, expert = slot.index(idx)
        a = to_ours(_reader(slot, ckpt, layer, expert)(), slot.t.layout, slot.slice_shape)
        for r, out in zip(regions, outs):
            if all(s.start <= i < s.stop for i, s in zip(idx, r[:n])):
                out[tuple(i - s.start for i, s in zip(idx, r[:n]))] = a[r[n:]].astype(dtype)
    return outs


def _full(shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(0, n) for n in shape)


def _normalize(idx: tuple, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(*s.indices(n)[:2]) for s, n in zip(idx, shape))


def _place(slot: _Slot, ckpt: Checkpoint, dtype: np.dtype, sharding) -> jax.Array:
    if sharding is None:
        return jax.device_put(_build(slot, ckpt, [_full(slot.shape)], dtype)[0])
    index_map = sharding.addressable_devices_indices_map(slot.shape)
    keys = {dev: tuple((s.start, s.stop) for s in _normalize(idx, slot.shape)) for dev, idx in index_map.items()}
    unique = list(dict.fromkeys(keys.values()))  # replicas of a shard read the checkpoint once
    shards = dict(zip(unique, _build(slot, ckpt, [tuple(slice(*k) for k in key) for key in unique], dtype)))
    arrays = [jax.device_put(shards[keys[dev]], dev) for dev in index_map]
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
    ckpt = open_checkpoint(directory, mdef.cfg)
    try:
        slots = _slots(mdef)
        _check(slots, ckpt, mdef.cfg, directory)
        axes = flatten(mdef.param_axes())
        templ = flatten(mdef.abstract_params())
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
                    rules: Mapping | None = None, adapter: str | Path | None = None) -> PretrainedModel:
    """Load a Hugging Face checkpoint directory (config.json + safetensors) as a :class:`PretrainedModel`;
    ``dtype`` is both the parameter and the compute dtype. ``adapter``: a PEFT LoRA adapter directory
    (adapter_config.json + adapter_model.safetensors) applied on top, unmerged (see ``models/lora.py``)."""
    cfg = dataclasses.replace(config_from_hf(hf_dir), param_dtype=dtype, dtype=dtype)
    mdef, _ = create(cfg, abstract=True)
    params = load_params(hf_dir, mdef, dtype, mesh, rules=rules)
    if adapter is not None:
        from . import lora

        mdef, adapters = lora.load_adapter(adapter, mdef)
        if mesh is not None:
            from reasoning_rl.sharding import param_shardings

            sh = param_shardings(ShardingContext(mesh, dict(rules or DEFAULT_RULES)), mdef.param_axes(),
                                 mdef.abstract_params())
            adapters = jax.device_put(adapters, lora.split(sh)[1])
        params = lora.join(params, adapters)
    return PretrainedModel(mdef, params, mesh, rules)


__all__ = ["CheckpointError", "ConfigError", "HFConfigError", "ModelDirError", "PretrainedModel", "check_model_dir",
           "config_from_hf", "hf_config", "load_params", "load_pretrained", "save_pretrained"]
