"""The pipeline: an ordered list of stages, each starting from its ``init`` and writing a checkpoint plus
``manifest.json``; finished stages are not rerun, an interrupted one resumes from its latest checkpoint.

A stage reference (``init``, ``sampler``, ``teacher``) is an earlier stage of the config, a stage
checkpoint directory of any run (``RUN/checkpoints/<stage>``, read with that run's config), or a Hugging
Face checkpoint directory. Every manifest records where its stage's parameters came from, so any
checkpoint can be traced back through the chain to a fresh initialisation or an outside checkpoint.
"""

from __future__ import annotations

import filecmp
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jax

from reasoning_rl import config as config_lib
from reasoning_rl import distributed as dist
from reasoning_rl.algorithms.steps import TrainState
from reasoning_rl.checkpoint import CheckpointError, StageCheckpointer, read_manifest, write_manifest
from reasoning_rl.config import Config, ConfigError, StageConfig
from reasoning_rl.metrics import MetricsWriter
from reasoning_rl.models import lora
from reasoning_rl.stages.common import Runtime
from reasoning_rl.stages.evaluate import stage_eval

log = logging.getLogger("reasoning_rl")

REF_ATTRS = ("init", "sampler", "teacher")


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("reasoning-rl")
    except PackageNotFoundError:
        v = "unknown"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"{v}+{rev}" if rev else v


def prepare_run_dir(cfg: Config, run_dir: Path, resume: bool) -> None:
    """Create the run dir and write the resolved config. An existing run is continued only for the same config."""
    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists():
        old = config_lib.from_dict(config_lib.load_raw(cfg_path))
        if old.hash() != cfg.hash():
            if resume:
                raise ConfigError(f"--resume: {run_dir} was started with a different config "
                                  f"(hash {old.hash()} vs {cfg.hash()}); use a new --run-dir")
            raise ConfigError(f"run_dir: {run_dir} already holds a run with a different config; "
                              "use a new --run-dir (or the same config to continue it)")
    elif resume:
        raise ConfigError(f"--resume: {run_dir} holds no run to resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    config_lib.dump(cfg, cfg_path)


def _stage_dir(run_dir: Path, name: str) -> Path:
    return run_dir / "checkpoints" / name


# --------------------------------------------------------------------------- references


def ref_kind(ref: str, names: list[str]) -> str:
    """``stage`` (an earlier stage), ``checkpoint`` (a stage dir of a run) or ``hf``; ConfigError otherwise."""
    if ref in names:
        return "stage"
    p = Path(ref)
    if p.is_dir() and (p / "manifest.json").is_file():
        return "checkpoint"
    if p.is_dir() and (p / "config.json").is_file():
        return "hf"
    if p.is_dir() and (p.parent.parent / "config.yaml").is_file():
        return "checkpoint"  # a stage dir of an interrupted run: no manifest yet, its latest step is used
    raise ConfigError(f"{ref!r} is neither an earlier stage of this config nor a checkpoint directory "
                      "(a run's checkpoints/<stage> or a Hugging Face model directory)")


def check_refs(cfg: Config) -> list[Path]:
    """Every stage reference resolves (before any compute); returns the outside stage dirs referenced."""
    names = [s.name for s in cfg.stages]
    outside = []
    for i, st in enumerate(cfg.stages):
        for attr in REF_ATTRS:
            ref = getattr(st, attr)
            if ref is None:
                continue
            try:
                kind = ref_kind(ref, names[:i])
            except ConfigError as e:
                raise ConfigError(f"stages[{i}].{attr}: {e}") from None
            if cfg.model.lora and attr == "init" and kind != "stage":
                raise ConfigError(f"stages[{i}].init: with model.lora the frozen base is model.path (or a fresh "
                                  "init); a LoRA stage starts from an earlier stage of this run, not "
                                  f"{ref!r}")
            if kind == "checkpoint":
                outside.append(Path(ref))
    return outside


def adopt_tokenizer(cfg: Config, run_dir: Path, outside: list[Path]) -> None:
    """A run initialised from another run's checkpoint must use that run's token ids: copy its trained
    tokenizer, or refuse if this run already trained a different one."""
    if cfg.tokenizer.path is not None or cfg.model.path:
        return
    ours = run_dir / "tokenizer.model"
    for sdir in outside:
        theirs = sdir.parent.parent / "tokenizer.model"
        if not theirs.is_file():
            continue
        if not ours.exists():
            shutil.copyfile(theirs, ours)
        elif not filecmp.cmp(ours, theirs, shallow=False):
            raise ConfigError(f"tokenizer: {run_dir} trained its own tokenizer, but {sdir} was trained with "
                              f"{theirs}; set tokenizer.path to it (or use a new run dir)")


def _abstract_state(rt: Runtime, tx) -> TrainState:
    params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          rt.mdef.abstract_params(), rt.param_shardings)
    params = lora.trainable(params)  # a LoRA checkpoint holds the adapters
    rep = jax.sharding.NamedSharding(rt.mesh, jax.sharding.PartitionSpec())
    opt = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                       jax.eval_shape(tx.init, params), rt.opt_shardings(tx, params))
    scalar = jax.ShapeDtypeStruct((), jax.numpy.int32, sharding=rep)
    return TrainState(params, opt, scalar, jax.eval_shape(lambda: jax.random.key(0)), scalar)


def restore_params(rt: Runtime, sdir: Path, stage: StageConfig, keep: int) -> tuple[Any, int]:
    """Final (or latest) params of the stage checkpointed in ``sdir``, straight into ``rt``'s shardings."""
    from reasoning_rl.algorithms.steps import make_optimizer

    like = _abstract_state(rt, make_optimizer(stage.optimizer, 1))
    man = read_manifest(sdir / "manifest.json")
    ck = StageCheckpointer(sdir, keep)
    try:
        got = ck.restore(like, man["final_step"] if man and man.get("complete") else None)
    finally:
        ck.close()
    if got is None:
        raise CheckpointError(f"{sdir}: no restorable checkpoint (missing, damaged, or of another model shape)")
    params = got[1].params
    if rt.lora:  # adapters: joined onto the base the checkpoint names
        ref = got[2].get("lora_base")
        if ref is None:
            raise CheckpointError(f"{sdir}: a LoRA checkpoint without its base reference (host lora_base)")
        params = lora.join(rt.base_from_ref(ref), params)
    return params, got[0]


def load_stage_params(rt: Runtime, stage: StageConfig) -> Any:
    """Final params of a finished stage of this run."""
    return restore_params(rt, _stage_dir(rt.run_dir, stage.name), stage, rt.cfg.checkpoint.keep)[0]


def load_outside(rt: Runtime, ref: str) -> tuple[Any, dict]:
    """Params and lineage entry of a stage dir of another run (its own config says how it was trained)."""
    sdir = Path(ref).absolute()
    man = read_manifest(sdir / "manifest.json") or {}
    run_dir = sdir.parent.parent
    try:
        their = config_lib.from_dict(config_lib.load_raw(run_dir / "config.yaml"))
        stage = config_lib.stage(their, man.get("stage", sdir.name))
    except (ConfigError, KeyError) as e:
        raise ConfigError(f"{ref}: cannot read the run config of this checkpoint ({e})") from None
    if their.model.lora and not rt.lora:
        # a LoRA stage of another run initialising a full stage: its adapters merged into its base
        lrt = rt.for_model(their.model)
        params, step = restore_params(lrt, sdir, stage, their.checkpoint.keep)
        params = rt.place(jax.jit(lambda p: lora.merge(lrt.mdef, p)[1])(params))
    else:
        params, step = restore_params(rt, sdir, stage, their.checkpoint.keep)
    return params, {"kind": "checkpoint", "stage": stage.name, "checkpoint": str(sdir), "step": step,
                    "run_dir": str(run_dir), "config_hash": man.get("config_hash"),
                    "complete": bool(man.get("complete"))}


class Stages:
    """Finished stages' params, and resolution of stage references into (params, lineage)."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.names = [s.name for s in rt.cfg.stages]
        self.params: dict[str, Any] = {}
        self._rts: dict[str, Runtime] = {}

    def runtime(self, stage: StageConfig) -> Runtime:
        """The runtime of the model a stage trains (a distill stage's student has its own)."""
        if stage.kind != "distill":
            return self.rt
        if stage.name not in self._rts:
            self._rts[stage.name] = self.rt.for_model(stage.student_model)
        return self._rts[stage.name]

    def resolve(self, ref: str, rt: Runtime) -> tuple[Any, dict]:
        kind = ref_kind(ref, self.names)
        if kind == "stage":
            if ref not in self.params:
                raise ConfigError(f"{ref!r}: stage has not run yet")
            return self.params[ref], self.lineage(ref)
        if kind == "hf":
            params = rt.with_new_adapters(rt.load_hf(ref), rt.cfg.seed)
            return params, {"kind": "hf", "path": str(Path(ref).absolute())}
        return load_outside(rt, ref)

    def lineage(self, name: str) -> dict:
        man = read_manifest(_stage_dir(self.rt.run_dir, name) / "manifest.json") or {}
        return {"kind": "stage", "stage": name, "checkpoint": str(_stage_dir(self.rt.run_dir, name)),
                "step": man.get("final_step")}

    def init(self, stage: StageConfig) -> tuple[Any, dict]:
        """Initial params for ``stage`` and its lineage entry."""
        srt = self.runtime(stage)
        if stage.init is not None:
            return self.resolve(stage.init, srt)
        idx = self.names.index(stage.name)
        if idx == 0 or stage.kind == "distill":
            return srt.init_params(), {"kind": "fresh", "seed": self.rt.cfg.seed, "model": srt.model_cfg.path}
        prev = self.names[idx - 1]
        return self.params[prev], self.lineage(prev)


# --------------------------------------------------------------------------- running


def _run_stage(stages: Stages, stage: StageConfig, writer: MetricsWriter, progress: bool):
    """Run one stage; returns (params, info, lineage entries)."""
    from reasoning_rl.stages.distill import run_distill
    from reasoning_rl.stages.grpo import run_grpo
    from reasoning_rl.stages.rejection import run_rejection_sft
    from reasoning_rl.stages.sft import run_sft

    rt, srt = stages.rt, stages.runtime(stage)
    init_params, parent = stages.init(stage)
    refs = {"parent": parent}
    if stage.kind == "sft":
        params, info = run_sft(rt, stage, init_params, writer, progress)
    elif stage.kind == "grpo":
        params, info = run_grpo(rt, stage, init_params, writer, progress)
    elif stage.kind == "rejection_sft":
        sampler_params, refs["sampler"] = (stages.resolve(stage.sampler, rt) if stage.sampler
                                           else (init_params, parent))
        params, info = run_rejection_sft(rt, stage, init_params, sampler_params, writer, progress)
    else:
        teacher_params, refs["teacher"] = stages.resolve(stage.teacher, rt)
        params, info = run_distill(rt, srt, stage, teacher_params, init_params, writer, progress)
    return params, info, refs


def _held_out(metrics: dict) -> dict:
    """Manifest figures: scalars, with per-task ones flattened as ``<task>/<metric>``."""
    out = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    for task, m in metrics.get("tasks", {}).items():
        out.update({f"{task}/{k}": v for k, v in m.items() if not isinstance(v, dict)})
    return out


def run_pipeline(cfg: Config, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
                 devices: list | None = None) -> dict[str, Any]:
    run_dir = Path(run_dir)
    outside = check_refs(cfg)
    if dist.is_primary():  # several hosts share the run dir; one writes its files
        prepare_run_dir(cfg, run_dir, resume)
        adopt_tokenizer(cfg, run_dir, outside)
    dist.barrier("run_dir")
    rt = Runtime(cfg, run_dir, devices)
    stages = Stages(rt)
    writer = MetricsWriter(run_dir, enabled=dist.is_primary())
    summary_path = run_dir / "summary.json"
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    try:
        for stage in cfg.stages:
            sdir = _stage_dir(run_dir, stage.name)
            srt = stages.runtime(stage)
            man = read_manifest(sdir / "manifest.json")
            if man and man.get("complete") and man.get("config_hash") == cfg.hash():
                log.info("stage %s already complete: skipped", stage.name)
                stages.params[stage.name] = load_stage_params(srt, stage)
                continue
            params, info, refs = _run_stage(stages, stage, writer, progress)
            metrics = stage_eval(srt, stage, params)
            metrics["wall_seconds"] = info["wall_seconds"]
            extra = {k: info[k] for k in ("rejection", "distill", "grpo_baseline", "stopped_early") if k in info}
            summary[stage.name] = {"kind": stage.kind, **metrics, **extra}
            if dist.is_primary():
                _write_json(summary_path, summary)
                _write_manifest(sdir, {
                "stage": stage.name, "kind": stage.kind, "complete": True,
                "final_step": info.get("final_step", stage.steps),
                **refs, "config_hash": cfg.hash(), "code_version": code_version(),
                "mesh": {str(k): int(v) for k, v in rt.mesh.shape.items()},  # where it ran (not part of the hash)
                "model": srt.model_cfg.path or {k: v for k, v in config_lib._to_plain(srt.model_cfg).items()
                                                if k in ("d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_dim")},
                "held_out": _held_out(metrics),
                **({"data": {k: v for k, v in extra.items() if k != "grpo_baseline"}} if extra else {}),
                })
            dist.barrier(f"stage {stage.name} done")
            stages.params[stage.name] = params
    finally:
        writer.close()
    return summary


def _write_manifest(sdir: Path, manifest: dict) -> None:
    write_manifest(sdir / "manifest.json", manifest)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False))
    os.replace(tmp, path)
