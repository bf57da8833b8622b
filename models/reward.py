"""Reward models: a decoder backbone with a scalar ``score`` head, in and out of Hugging Face's
``*ForSequenceClassification`` format (one label).

The backbone is the ordinary decoder (``ModelDef``), so every family the loader knows (Llama, Mistral, Qwen2,
Qwen3, Gemma 3) is a reward model too: its final-norm hidden state at each row's last real token, times the
head, is the row's score. That is what transformers does (it finds the last token that is not
``pad_token_id``); here the attention mask says which tokens are real, so left and right padding both work.

Parameters are ``{"backbone": <decoder params>, "score": [D]}``: a pure dict the optimizer, Orbax and the
sharding rules handle as they do the policy's. The backbone never has an ``lm_head`` (a classification
checkpoint has none; a causal checkpoint's is ignored).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from reasoning_rl.sharding import DEFAULT_RULES, ShardingContext, use

from . import hf as _hf
from .config import TransformerConfig
from .families import ConfigError, for_family
from .hf_save import NP_DTYPES, _host, _runtime_neutral, family_config
from .hf_save import save_pretrained as _save_backbone
from .safetensors_io import NAMES, Checkpoint, SafetensorsFile, write_file
from .transformer import ModelDef, create, positions_from_valid

SCORE = "score.weight"
# transformers' sequence-classification class per causal architecture (Gemma 3 text has its own name)
_SEQ_CLS = {"Gemma3ForCausalLM": "Gemma3TextForSequenceClassification",
            "CohereCompassForCausalLM": "CohereCompassTextForSequenceClassification"}
# the classes transformers has none of (checked against it by tests/test_reward_model_hf.py): a reward model of
# these families is written all the same, in the same layout, and loads here (``load_reward_model``, a
# ``reward_model`` reward), but not through transformers' AutoModelForSequenceClassification; the export says so
NOT_IN_TRANSFORMERS = frozenset({
    "BambaForSequenceClassification", "DeepseekV32ForSequenceClassification", "GlmMoeDsaForSequenceClassification",
    "HyperCLOVAXForSequenceClassification", "GraniteSWAForSequenceClassification", "NanoChatForSequenceClassification",
    "MellumForSequenceClassification", "Kolibri1ForSequenceClassification", "Jais2ForSequenceClassification",
    "FlintForSequenceClassification", "GraniteMoeSWAForSequenceClassification",
    "Gemma4UnifiedForSequenceClassification",
    "Ernie4_5ForSequenceClassification", "Ernie4_5_MoeForSequenceClassification",
    "FalconH1ForSequenceClassification", "Glm4MoeForSequenceClassification", "Glm4MoeLiteForSequenceClassification",
    "GraniteForSequenceClassification", "GraniteMoeHybridForSequenceClassification", "Lfm2ForSequenceClassification",
    "MiniMaxM2ForSequenceClassification", "NemotronHForSequenceClassification", "OlmoeForSequenceClassification",
    "OlmoHybridForSequenceClassification", "HYV3ForSequenceClassification", "SolarOpenForSequenceClassification",
    "ExaoneMoeForSequenceClassification", "MiMoV2FlashForSequenceClassification", "Gemma4ForSequenceClassification",
    "Cohere2ForSequenceClassification", "AfmoeForSequenceClassification", "MiniCPM5MoeForSequenceClassification",
    "Dots1ForSequenceClassification", "YoutuForSequenceClassification", "Cohere2MoeForSequenceClassification",
    "ApertusForSequenceClassification", "CwmForSequenceClassification",
    "FlexOlmoForSequenceClassification", "Lfm3ForSequenceClassification", "LagunaForSequenceClassification",
    "BeamForSequenceClassification", "LaraMiniForSequenceClassification", "KimiLinearForSequenceClassification",
    "GraniteMoeForSequenceClassification", "GraniteMoeSharedForSequenceClassification",
    "ExaoneForSequenceClassification", "CohereForSequenceClassification"})


def _seq_cls_arch(causal: str) -> str:
    return _SEQ_CLS.get(causal, causal.replace("ForCausalLM", "ForSequenceClassification"))


@dataclass(frozen=True, eq=False)
class RewardDef:
    """A reward model as pure data: the backbone's ModelDef plus the head. Same interface as ModelDef for what
    the trainer needs (``cfg``, ``abstract_params``, ``param_axes``)."""

    backbone: ModelDef

    @property
    def cfg(self) -> TransformerConfig:
        return self.backbone.cfg

    def abstract_params(self) -> dict:
        d = self.cfg.d_model
        return {"backbone": self.backbone.abstract_params(),
                "score": jax.ShapeDtypeStruct((d,), self.cfg.jnp_param_dtype)}

    def param_axes(self) -> dict:
        return {"backbone": self.backbone.param_axes(), "score": ("embed",)}

    def init_score(self, seed: int) -> jax.Array:
        d = self.cfg.d_model
        w = jax.random.normal(jax.random.key(seed), (d,), jnp.float32) * (d ** -0.5)
        return w.astype(self.cfg.jnp_param_dtype)


def reward_backbone_config(cfg: TransformerConfig) -> TransformerConfig:
    """The decoder config a reward model uses: the same, without an output projection."""
    return dataclasses.replace(cfg, tie_embeddings=True)


def reward_def(cfg: TransformerConfig) -> RewardDef:
    mdef, _ = create(reward_backbone_config(cfg), abstract=True)
    return RewardDef(mdef)


def last_index(valid: jax.Array) -> jax.Array:
    """Index of each row's last real token (rows with none: the last position)."""
    t = valid.shape[1]
    return t - 1 - jnp.argmax(valid[:, ::-1], axis=1)


def scores(rdef: RewardDef, params: dict, tokens: jax.Array, valid: jax.Array) -> jax.Array:
    """Scores [B] (float32): the head applied to each row's hidden state at its last real token."""
    model = rdef.backbone.bind(params["backbone"])
    h, _ = model.hidden(tokens, positions_from_valid(valid), valid)
    last = h[jnp.arange(h.shape[0]), last_index(valid)]
    return jnp.einsum("bd,d->b", last.astype(jnp.float32), params["score"].astype(jnp.float32))


# ---------------------------------------------------------------------- loading


def _num_labels(hf: Mapping) -> int:
    if isinstance(hf.get("id2label"), Mapping):
        return len(hf["id2label"])
    return int(hf.get("num_labels", 2))  # transformers' default config has two labels


class _BackboneView:
    """A checkpoint minus its head: what the decoder loader checks and reads."""

    def __init__(self, ckpt: Checkpoint):
        self._c = ckpt

    def __contains__(self, name: str) -> bool:
        return name != SCORE and name in self._c

    def names(self) -> list[str]:
        return [n for n in self._c.names() if n != SCORE]

    def info(self, name: str):
        return self._c.info(name)

    def get(self, name: str):
        return self._c.get(name)


def check_reward_checkpoint(hf_dir: str | Path) -> dict:
    """config.json of a one-label sequence-classification checkpoint, or ConfigError naming what is wrong."""
    path = Path(hf_dir)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{hf_dir}: no config.json (not a Hugging Face model directory)")
    hf = json.loads((path / "config.json").read_text())
    n = _num_labels(hf)
    if n != 1:
        raise ConfigError(f"{hf_dir}: config.json has {n} labels; a reward model has one (a scalar score)")
    return hf


def load_reward_params(hf_dir: str | Path, rdef: RewardDef, dtype: str | None = None, mesh=None, *,
                       rules: Mapping | None = None) -> dict:
    """``{"backbone", "score"}`` params from a sequence-classification checkpoint, each tensor placed straight
    into its sharding (as ``load_params``)."""
    directory = Path(hf_dir)
    ckpt = Checkpoint(directory)
    try:
        if SCORE not in ckpt:
            raise _hf.CheckpointError(f"{directory}: no {SCORE} (not a sequence-classification checkpoint)")
        _, shape = ckpt.info(SCORE)
        d = rdef.cfg.d_model
        if tuple(shape) != (1, d):
            raise _hf.CheckpointError(f"{directory}: {SCORE} has shape {list(shape)}, a one-label head on "
                                      f"hidden size {d} is [1, {d}]")
        mdef = rdef.backbone
        view = _BackboneView(ckpt)
        slots = _hf._slots(mdef)
        _hf._check(slots, view, mdef.cfg, directory)
        axes = _hf.flatten(mdef.param_axes())
        templ = _hf.flatten(mdef.abstract_params())
        rules = dict(rules or DEFAULT_RULES)
        ctx = ShardingContext(mesh, rules) if mesh is not None else None
        backbone: dict = {}
        for slot in slots:
            sharding = ctx.sharding(axes[slot.t.path], slot.shape) if ctx is not None else None
            x = _hf._place(slot, view, _hf._target_dtype(templ[slot.t.path].dtype, mdef.cfg, dtype), sharding)
            node = backbone
            for p in slot.t.path[:-1]:
                node = node.setdefault(p, {})
            node[slot.t.path[-1]] = x
        head = np.asarray(ckpt.get(SCORE)[0]).astype(NP_DTYPES[dtype or rdef.cfg.param_dtype])
        if ctx is not None:
            head = jax.device_put(head, ctx.sharding(("embed",), head.shape))
        else:
            head = jnp.asarray(head)
        return {"backbone": backbone, "score": head}
    finally:
        ckpt.close()


def load_backbone_params(hf_dir: str | Path, rdef: RewardDef, dtype: str | None = None, mesh=None) -> dict:
    """Backbone params from a causal-LM checkpoint (its ``lm_head`` is not read)."""
    return _hf.load_params(hf_dir, rdef.backbone, dtype, mesh)


class RewardModel:
    """A loaded reward model: ``model(input_ids, attention_mask) -> scores [B]`` (float32)."""

    def __init__(self, rdef: RewardDef, params: dict, mesh=None, rules: Mapping | None = None,
                 pad_token_id: int | None = None):
        self.rdef, self.params, self.mesh = rdef, params, mesh
        self.pad_token_id = pad_token_id
        self.ctx = ShardingContext(mesh, dict(rules or DEFAULT_RULES)) if mesh is not None else None
        self._forward = jax.jit(lambda p, t, v: scores(rdef, p, t, v))

    @property
    def cfg(self) -> TransformerConfig:
        return self.rdef.cfg

    def __call__(self, input_ids, attention_mask=None) -> jax.Array:
        ids = jnp.asarray(input_ids, jnp.int32)
        valid = jnp.ones(ids.shape, bool) if attention_mask is None else jnp.asarray(attention_mask, bool)
        with use(self.ctx):
            return self._forward(self.params, ids, valid)

    def save_pretrained(self, out_dir: str | Path, **kw) -> Path:
        return save_reward_model(self.rdef, self.params, out_dir, pad_token_id=self.pad_token_id, **kw)


def load_reward_model(hf_dir: str | Path, dtype: str = "float32", mesh=None, *,
                      rules: Mapping | None = None) -> RewardModel:
    """Load a one-label ``*ForSequenceClassification`` checkpoint (Llama, Mistral, Qwen2, Qwen3, Gemma 3) as a
    :class:`RewardModel`; ``dtype`` is both the parameter and the compute dtype."""
    hf = check_reward_checkpoint(hf_dir)
    cfg = dataclasses.replace(_hf.config_from_hf(hf_dir), param_dtype=dtype, dtype=dtype)
    rdef = reward_def(cfg)
    params = load_reward_params(hf_dir, rdef, dtype, mesh, rules=rules)
    return RewardModel(rdef, params, mesh, rules, hf.get("pad_token_id"))


# ---------------------------------------------------------------------- saving


def reward_hf_config(cfg: TransformerConfig, pad_token_id: int | None = None) -> dict:
    """config.json of the sequence-classification checkpoint: the loaded one when ``cfg`` still describes it,
    else the family's causal config turned into a one-label classifier."""
    fam = for_family(cfg.family)
    stored = cfg.extra.get("hf_config")
    conf = None
    if stored is not None:
        try:
            theirs = reward_backbone_config(fam.from_hf(stored))
            if _runtime_neutral(theirs, cfg) == cfg:
                conf = json.loads(json.dumps(stored))
        except ConfigError:
            conf = None
    if conf is None:
        conf = family_config(cfg)
        conf["architectures"] = [_seq_cls_arch(a) for a in conf.get("architectures", [])]
    elif not any("SequenceClassification" in a for a in conf.get("architectures") or []):
        conf["architectures"] = [_seq_cls_arch(a) for a in conf.get("architectures") or []]
    conf["id2label"] = {"0": "LABEL_0"}
    conf["label2id"] = {"LABEL_0": 0}
    conf.pop("num_labels", None)
    if pad_token_id is not None:
        conf["pad_token_id"] = int(pad_token_id)
    return conf


def save_reward_model(rdef: RewardDef, params: dict, out_dir: str | Path, *, pad_token_id: int | None = None,
                      dtype: str | None = None, tokenizer_from: str | Path | None = None,
                      max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write a ``*ForSequenceClassification`` checkpoint transformers loads unchanged: the backbone's tensors
    as the decoder saver writes them, plus ``score.weight`` [1, D] in the same file (or, for a sharded save,
    a file of its own named in the index). Multi-host: every process calls this; process 0 writes. For a
    family transformers has no such class of (``NOT_IN_TRANSFORMERS``) the checkpoint is the same and loads
    here; a warning names the class it lacks."""
    out = Path(out_dir)
    dtype = dtype or rdef.cfg.param_dtype
    _save_backbone(rdef.backbone, params["backbone"], out, dtype=dtype, tokenizer_from=tokenizer_from,
                   max_shard_bytes=max_shard_bytes)
    head = _host(params["score"]).reshape(1, -1).astype(NP_DTYPES[dtype])
    if jax.process_index() != 0:
        return out
    st = NAMES[NP_DTYPES[dtype]]
    index = out / "model.safetensors.index.json"
    if index.is_file():  # sharded: the head gets a file of its own
        fname = "model-score.safetensors"
        write_file(out / fname, [(SCORE, st, head.shape)], lambda _: head)
        idx = json.loads(index.read_text())
        idx["weight_map"][SCORE] = fname
        idx["metadata"]["total_size"] = int(idx["metadata"].get("total_size", 0)) + head.nbytes
        index.write_text(json.dumps(idx, indent=2))
    else:  # one file: rewrite it with the head appended (streamed tensor by tensor)
        path = out / "model.safetensors"
        src = SafetensorsFile(path)
        names = src.names()
        specs = [(n, *src.info(n)) for n in names] + [(SCORE, st, head.shape)]
        tmp = out / "model.safetensors.new"
        write_file(tmp, specs, lambda n: head if n == SCORE else np.asarray(src.get(n)))
        src.close()
        os.replace(tmp, path)
    conf = reward_hf_config(rdef.cfg, pad_token_id)
    missing = [a for a in conf.get("architectures") or [] if a in NOT_IN_TRANSFORMERS]
    if missing:
        logging.getLogger("reasoning_rl").warning(
            "%s: transformers has no %s class: this reward model loads with reasoning_rl (load_reward_model, a "
            "reward_model reward), not with AutoModelForSequenceClassification", out, missing[0])
    conf["dtype"] = dtype
    if "torch_dtype" in conf:
        conf["torch_dtype"] = dtype
    (out / "config.json").write_text(json.dumps(conf, indent=2, sort_keys=True))
    return out


__all__ = ["RewardDef", "RewardModel", "load_reward_model", "load_reward_params", "reward_def",
           "reward_hf_config", "save_reward_model", "scores"]
