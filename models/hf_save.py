"""Writing Hugging Face checkpoints: config.json + safetensors that transformers (and vLLM) load unchanged.

Saving writes what transformers itself writes: per-expert MoE tensors, q/k/v biases where the format always
has them, and the checkpoint's own config.json when the model came from one (the generated config otherwise).
Tensors are produced one at a time from one parameter on the host at a time, so a save never holds a shard.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np

from . import tiktoken_bpe
from .config import TransformerConfig
from .families import ConfigError, Tensor, for_family
from .families.base import hf_shape, to_hf
from .safetensors_io import NAMES, write_file
from .transformer import ModelDef, stack_layers

NP_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
             "float16": np.dtype(np.float16)}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")


def flatten(tree: dict, prefix: tuple = ()) -> dict[tuple[str, ...], Any]:
    """{path tuple: leaf} for a nested dict of params."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _runtime_neutral(cfg: TransformerConfig, like: TransformerConfig) -> TransformerConfig:
    """``cfg`` with the fields that do not change the checkpoint format taken from ``like``."""
    moe = cfg.moe if cfg.moe is None or like.moe is None else dataclasses.replace(cfg.moe, impl=like.moe.impl)
    return dataclasses.replace(cfg, param_dtype=like.param_dtype, dtype=like.dtype, remat=like.remat,
                               scan_layers=like.scan_layers, unroll_max=like.unroll_max, extra=like.extra,
                               max_seq_len=like.max_seq_len, moe=moe)


def hf_config(cfg: TransformerConfig) -> dict:
    """The config.json to write: the checkpoint's own when ``cfg`` still describes it, else generated."""
    fam = for_family(cfg.family)
    stored = cfg.extra.get("hf_config")
    if stored is not None:
        try:
            if _runtime_neutral(fam.from_hf(stored), cfg) == cfg:  # weights written unquantized:
                return {k: v for k, v in json.loads(json.dumps(stored)).items() if k != "quantization_config"}
        except ConfigError:
            pass
    return family_config(cfg)


# switches only some formats can express, read off TransformerConfig (a dotted path into its sub-configs): a
# family's module lists the ones its format writes (``WRITES``), and a config that sets any other away from its
# default is refused here rather than saved as that family's usual model (another model)
SWITCHES = ("mixer_only_layers", "moe.latent_dim", "mla.index_topk", "key_multiplier", "attn_in_multiplier",
            "attn_out_multiplier", "mlp_multipliers", "logits_multiplier", "linear.parallel", "linear.norm",
            "linear.in_multiplier", "linear.out_multiplier", "linear.multipliers", "linear.beta_scale",
            "linear.norm_eps", "linear.pre_norm", "full_kv_heads", "full_sinks", "v_head_dim", "value_scale",
            "full_head_dim", "full_k_eq_v", "v_norm", "layer_scalar", "moe.beside_dense", "moe.router_norm",
            "moe.expert_scale", "norm_center", "parallel_block", "moe.shared_average",
            "moe.post_norm", "ple_dim", "kv_shared_layers", "double_wide_mlp", "norm_weight", "embed_norm",
            "rope_reverse", "moe.bias_on_logits", "norm_bias", "mlp_bias", "head_gate", "gate_act", "full_heads",
            "full_rope_dim", "moe.router_softcap", "gate_bias", "depth_residual", "nope_query_scale", "clip_qkv")


def set_switches(cfg: TransformerConfig) -> dict[str, object]:
    """The ``SWITCHES`` ``cfg`` sets away from their defaults: {path: value}."""
    out = {}
    for path in SWITCHES:
        owner, name = cfg, path
        if "." in path:
            sub, name = path.split(".")
            owner = getattr(cfg, sub)
            if owner is None:
                continue
        default = next(f.default for f in dataclasses.fields(owner) if f.name == name)
        if getattr(owner, name) != default:
            out[path] = getattr(owner, name)
    return out


def family_config(cfg: TransformerConfig) -> dict:
    """The family's generated config.json for ``cfg`` (decoder and reward checkpoints alike), after the checks
    every format shares: its MLP activation (``ACTIVATIONS``, default SiLU) and the ``SWITCHES`` it writes."""
    fam = for_family(cfg.family)
    if cfg.activation not in getattr(fam, "ACTIVATIONS", ("silu",)):
        raise ConfigError(f"TransformerConfig.activation={cfg.activation!r} cannot be written as a {cfg.family} "
                          "checkpoint")
    for path, value in set_switches(cfg).items():
        if path not in getattr(fam, "WRITES", ()):
            raise ConfigError(f"TransformerConfig.{path}={value!r} cannot be written as a {cfg.family} checkpoint")
    return fam.to_hf(cfg)


def _resolve(model, out_dir, params) -> tuple[ModelDef, dict, Path]:
    if isinstance(out_dir, Mapping):  # save_pretrained(mdef, params, out_dir)
        out_dir, params = params, out_dir
    if hasattr(model, "mdef") and hasattr(model, "params"):  # a PretrainedModel
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
                    max_shard_bytes: int = 5 * 2**30, tokenizer_from: str | Path | None = None,
                    merge_lora: bool = False) -> Path:
    """Write config.json + safetensors (sharded with an index above ``max_shard_bytes``) that transformers
    loads unchanged. ``model``: a PretrainedModel, a ``(mdef, params)`` pair, or a ModelDef with ``params``
    (``save_pretrained(mdef, params, out_dir)`` also works). ``dtype`` defaults to the model's param_dtype.
    Tokenizer and generation files are copied from ``tokenizer_from`` (default: the checkpoint the config was
    read from, if any). ``merge_lora``: a model with LoRA adapters is written with them folded into its
    weights (``save_lora`` writes the adapters alone). Multi-host: every process must call this; process 0
    writes."""
    mdef, params, out = _resolve(model, out_dir, params)
    if mdef.cfg.lora is not None:
        if not merge_lora:
            raise ConfigError("save_pretrained: the model has LoRA adapters; pass merge_lora=True to write merged "
                              "weights, or use save_lora to write the adapter")
        from . import lora

        base_cfg = mdef.cfg
        mdef, params = lora.merge(mdef, params)
        dtype = dtype or base_cfg.param_dtype
    cfg = mdef.cfg
    dtype = dtype or cfg.param_dtype
    conf = hf_config(cfg)  # first: a config the format cannot express fails before anything is written
    if dtype not in NP_DTYPES:
        raise ValueError(f"dtype: unsupported value {dtype!r} (supported: {', '.join(NP_DTYPES)})")
    st_dtype = NAMES[NP_DTYPES[dtype]]
    flat = flatten(params)
    layers = stack_layers(cfg)

    # Every checkpoint tensor: name -> (checkpoint shape, [(spec, stack index) of each of our params in it]).
    plan: dict[str, tuple[tuple[int, ...], list[tuple[Tensor, tuple[int, ...]]]]] = {}
    for t in for_family(cfg.family).tensors(cfg):
        has_layer, has_expert = t.stacked()
        stack_idx = layers.get(t.path[0], ())
        if t.path in flat:
            shape = tuple(flat[t.path].shape)
        else:
            shape = ((len(stack_idx),) if has_layer else ()) + t.zeros
        stack = shape[:has_layer + has_expert]
        for idx in itertools.product(*(range(k) for k in stack)):
            layer = stack_idx[idx[0]] if has_layer else None
            expert = idx[-1] if has_expert else None
            name = t.name(layer, expert)
            hshape = hf_shape(t.layout, shape[len(stack):])
            if t.piece is not None:
                hshape = t.piece.whole(hshape)
            plan.setdefault(name, (hshape, []))[1].append((t, idx))

    unmapped = sorted(".".join(p) for p in set(flat) - {t.path for _, parts in plan.values() for t, _ in parts})
    if unmapped:
        raise ConfigError(f"TransformerConfig: parameters {unmapped} have no place in a {cfg.family} checkpoint "
                          "(a switch the family's format lacks)")
    shards: list[list] = [[]]
    size = 0
    itemsize = NP_DTYPES[dtype].itemsize
    for name, (hshape, _) in plan.items():
        nbytes = math.prod(hshape) * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes

    writer = jax.process_index() == 0
    cache: dict[tuple, np.ndarray] = {}

    def one(t: Tensor, idx: tuple[int, ...]) -> np.ndarray:
        if t.path not in cache:
            if not any(p in cache for p in pieces):
                cache.clear()  # one parameter (or the pieces of one checkpoint tensor) on the host at a time
            cache[t.path] = _host(flat[t.path])
        a = cache[t.path][idx]
        return to_hf(a, t.layout, a.shape)

    pieces: set = set()

    def produce(name: str) -> np.ndarray:
        hshape, parts = plan[name]
        t = parts[0][0]
        if t.path not in flat:
            return np.zeros(hshape, NP_DTYPES[dtype])
        if t.piece is None:
            return one(*parts[0]).astype(NP_DTYPES[dtype])
        pieces.clear()
        pieces.update(p.path for p, _ in parts)
        ordered = sorted(parts, key=lambda e: e[0].piece.index)
        a = t.piece.join([one(*e) for e in ordered])
        pieces.clear()
        return a.astype(NP_DTYPES[dtype])

    out.mkdir(parents=True, exist_ok=True)
    n_files = len(shards)
    weight_map, total = {}, 0
    for k, names in enumerate(shards):
        fname = "model.safetensors" if n_files == 1 else f"model-{k + 1:05d}-of-{n_files:05d}.safetensors"
        specs = [(name, st_dtype, plan[name][0]) for name in names]
        if writer:
            total += write_file(out / fname, specs, produce)
        else:
            for name in names:
                produce(name)  # take part in the gathers
        weight_map.update({name: fname for name in names})
    if not writer:
        return out
    if n_files > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    conf["dtype"] = dtype
    if "torch_dtype" in conf:
        conf["torch_dtype"] = dtype
    (out / "config.json").write_text(json.dumps(conf, indent=2, sort_keys=True))
    src = tokenizer_from or cfg.extra.get("hf_dir")
    if src and Path(src).resolve() != out.resolve():
        # (+ Kimi K2's: its tiktoken rank file and the Python class holding its splitting pattern)
        for f in TOKENIZER_FILES + tuple(tiktoken_bpe.source_files(src)):
            if (Path(src) / f).is_file():
                (out / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(src) / f, out / f)
    return out
