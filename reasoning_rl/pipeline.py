"""The pipeline: an ordered list of stages, each starting from its ``init`` and writing a checkpoint plus
``manifest.json``; finished stages are not rerun, an interrupted one resumes from its latest checkpoint."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import jax

from reasoning_rl import config as config_lib
from reasoning_rl.algorithms.steps import TrainState
from reasoning_rl.checkpoint import StageCheckpointer, read_manifest, write_manifest
from reasoning_rl.config import Config, ConfigError, StageConfig
from reasoning_rl.metrics import MetricsWriter
from reasoning_rl.stages.common import Runtime
from reasoning_rl.stages.evaluate import stage_eval

log = logging.getLogger("reasoning_rl")


def code_version() -> str:
    try:
        from importlib.metadata import version

        v = version("reasoning-rl")
    except Exception:
        v = "unknown"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip()
    except Exception:
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


def load_stage_params(rt: Runtime, stage: StageConfig) -> Any:
    """Final params of a finished stage, restored straight into their shardings (no template allocated)."""
    from reasoning_rl.algorithms.steps import make_optimizer

    like = _abstract_state(rt, make_optimizer(stage.optimizer, 1))
    sdir = _stage_dir(rt.run_dir, stage.name)
    man = read_manifest(sdir / "manifest.json")
    ck = StageCheckpointer(sdir, rt.cfg.checkpoint.keep)
    try:
        got = ck.restore(like, man["final_step"] if man else None)
    finally:
        ck.close()
    if got is None:
        raise RuntimeError(f"stage {stage.name}: no checkpoint to initialise from")
    return got[1].params


def _abstract_state(rt: Runtime, tx) -> TrainState:
    params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          rt.mdef.abstract_params(), rt.param_shardings)
    opt = jax.eval_shape(tx.init, params)
    rep = jax.sharding.NamedSharding(rt.mesh, jax.sharding.PartitionSpec())
    opt = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), opt)
    scalar = jax.ShapeDtypeStruct((), jax.numpy.int32, sharding=rep)
    return TrainState(params, opt, scalar, jax.eval_shape(lambda: jax.random.key(0)), scalar)


def resolve_init(rt: Runtime, stage: StageConfig, finished: dict[str, Any]) -> tuple[Any, dict]:
    """Initial params for ``stage`` and its lineage entry."""
    if stage.init is None:
        idx = [s.name for s in rt.cfg.stages].index(stage.name)
        if idx == 0:
            return rt.init_params(), {"kind": "fresh", "seed": rt.cfg.seed, "model": rt.cfg.model.path}
        prev = rt.cfg.stages[idx - 1]
        return finished[prev.name], _lineage(rt, prev.name)
    if stage.init in finished:
        return finished[stage.init], _lineage(rt, stage.init)
    raise ConfigError(f"stages.{stage.name}.init: {stage.init!r} is not an earlier stage of this config")


def _lineage(rt: Runtime, parent: str) -> dict:
    man = read_manifest(_stage_dir(rt.run_dir, parent) / "manifest.json") or {}
    return {"kind": "stage", "stage": parent, "checkpoint": str(_stage_dir(rt.run_dir, parent)),
            "step": man.get("final_step")}


def run_pipeline(cfg: Config, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
                 devices: list | None = None) -> dict[str, Any]:
    from reasoning_rl.stages.grpo import run_grpo
    from reasoning_rl.stages.sft import run_sft

    run_dir = Path(run_dir)
    prepare_run_dir(cfg, run_dir, resume)
    rt = Runtime(cfg, run_dir, devices)
    writer = MetricsWriter(run_dir)
    summary_path = run_dir / "summary.json"
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    finished: dict[str, Any] = {}
    try:
        for stage in cfg.stages:
            sdir = _stage_dir(run_dir, stage.name)
            man = read_manifest(sdir / "manifest.json")
            if man and man.get("complete") and man.get("config_hash") == cfg.hash():
                log.info("stage %s already complete: skipped", stage.name)
                finished[stage.name] = load_stage_params(rt, stage)
                continue
            init_params, lineage = resolve_init(rt, stage, finished)
            runner = {"sft": run_sft, "grpo": run_grpo}[stage.kind]
            params, info = runner(rt, stage, init_params, writer, progress)
            metrics = stage_eval(rt, stage, params)
            metrics["wall_seconds"] = info["wall_seconds"]
            summary[stage.name] = {"kind": stage.kind, **metrics}
            _write_json(summary_path, summary)
            write_manifest(sdir / "manifest.json", {
                "stage": stage.name, "kind": stage.kind, "complete": True, "final_step": stage.steps,
                "parent": lineage, "config_hash": cfg.hash(), "code_version": code_version(),
                "held_out": {k: v for k, v in metrics.items() if not isinstance(v, dict)},
            })
            finished[stage.name] = params
    finally:
        writer.close()
    return summary


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False))
    os.replace(tmp, path)
