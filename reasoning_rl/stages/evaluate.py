"""End-of-stage held-out evaluation with the stage's own sampler settings and verifiers.

A stage is evaluated on every task the config trains on (its own first), each with that task's
correctness reward, so over-specialisation (a reasoning stage forgetting the instruction task, or the
reverse) shows in ``summary.json``. With one task the figures are the top-level keys, as before; with
several they sit under ``tasks`` and the top level holds the mean over the stage's own tasks. Every scored
completion can be written as ``samples.jsonl`` (``run`` writes ``RUN_DIR/held_out/<stage>/samples.jsonl`` at
each stage's end, ``eval`` its own beside ``eval.json``): the same records and fields either way.

The same evaluation, on fewer problems, also draws a held-out curve while a stage trains (``eval.every``:
``HeldOutCurve``), one ``held_out/...`` record per point in ``metrics.jsonl``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from reasoning_rl import distributed as dist
from reasoning_rl import sharding as shd
from reasoning_rl.config import StageConfig, eval_sampling
from reasoning_rl.evaluation import evaluate
from reasoning_rl.metrics import HELD_OUT_POINT, read_metrics
from reasoning_rl.models import lora
from reasoning_rl.rewards import RewardComputer, RewardSpec, extract_answer, registry
from reasoning_rl.rewards.format import format_fn_for

from .common import Runtime
from .sources import CORRECTNESS_REWARDS, Source, config_sources, stage_sources

log = logging.getLogger("reasoning_rl")

__all__ = ["CORRECTNESS_REWARDS", "HeldOutCurve", "correctness_reward", "end_of_stage_point", "eval_source",
           "held_out_fields", "stage_curve", "stage_eval", "write_jsonl"]


def correctness_reward(stage: StageConfig) -> str:
    for r in stage.rewards:
        if r.name in CORRECTNESS_REWARDS:
            return r.name
    return "accuracy"


def _other_rewards(src: Source):
    """``rewards_fn`` for the records: the source's training rewards other than correctness and format (which
    the evaluation computes anyway), unweighted. Learned reward models (``kind: reward_model``) are left out:
    they score on the mesh in batches inside the RL stage, and their training-time scores are in
    ``rollouts.jsonl``."""
    specs = [RewardSpec(r.name, r.weight, dict(r.kwargs)) for r in src.rewards
             if r.name not in (src.correctness, "format") and getattr(r, "kind", "function") != "reward_model"]
    if not specs:
        return None

    def fn(texts, rows):
        computer = RewardComputer(specs)
        try:
            return computer(texts, rows).per_reward
        finally:
            computer.close()

    return fn


def eval_source(rt: Runtime, stage: StageConfig, src: Source, params: Any, mdef=None,
                records: list[dict] | None = None, label: str = "") -> dict[str, Any]:
    """Held-out figures of one task (see ``reasoning_rl.evaluation.evaluate``); ``records`` collects each
    scored completion; ``label`` qualifies the progress phase's name (`` at step 20``)."""
    ev = stage.eval
    examples = [{**e.as_dict(), "task": src.name} for e in src.task.held_out(ev.num_problems)]
    if len(examples) < ev.num_problems:  # evaluating all there are is right, but say so: the figure is on fewer
        log.warning("%s: eval.num_problems is %d, the %s task holds out %d problems: all %d are evaluated",
                    stage.name, ev.num_problems, src.name, len(examples), len(examples))
    with shd.use(rt.ctx):  # sample on the run's mesh (data-parallel meshes: a decode loop per device)
        return evaluate(
            mdef or rt.mdef, params, rt.tok, examples, samples=ev.samples, ks=ev.k, **eval_sampling(stage),
            max_new_tokens=ev.max_new_tokens or stage.rollout.max_new_tokens,
            stop_ids=rt.stop_ids(stage.rollout), stop_table=rt.stop_table(stage.rollout),
            correct_fn=registry.get(src.correctness),
            format_fn=format_fn_for(src.rewards), extract_fn=extract_answer, batch_size=ev.batch_size,
            greedy=ev.greedy, seed=rt.cfg.seed + 17, name=f"{stage.name}: held-out eval{label} ({src.name})",
            records=records, correct_name=src.correctness,
            rewards_fn=_other_rewards(src) if records is not None else None)


def stage_eval(rt: Runtime, stage: StageConfig, params: Any, mdef=None, records: list[dict] | None = None,
               samples_path: Path | None = None, label: str = "") -> dict[str, Any]:
    """Held-out figures of every task; ``records``: each scored completion of every task is appended.
    ``samples_path``: those records are also written there as JSON lines (by the primary host only)."""
    if samples_path is not None and records is None:
        records = []
    result = _stage_eval(rt, stage, params, mdef, records, label)
    if samples_path is not None and dist.is_primary():
        write_jsonl(Path(samples_path), records)
    return result


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Write records, one JSON object a line, atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    tmp.replace(path)


def _stage_eval(rt: Runtime, stage: StageConfig, params: Any, mdef, records: list[dict] | None,
                label: str = "") -> dict[str, Any]:
    if mdef is None and lora.has_adapters(params):  # decode on merged weights (3.4x faster, tools/bench_lora.py)
        mdef = lora.base_mdef(rt.mdef)
        params = rt.jit_fn(lambda p: lora.merge(rt.mdef, p)[1])(params)
    own = [Source(rt, s) for s in stage_sources(stage)]
    names = {s.name for s in own}
    others = [Source(rt, s) for s in config_sources(rt.cfg) if s.name not in names]
    per_task = {s.name: eval_source(rt, stage, s, params, mdef, records, label) for s in own + others}
    if len(per_task) == 1:
        return next(iter(per_task.values()))
    mine = [per_task[s.name] for s in own]
    top = {k: float(np.mean([m[k] for m in mine])) for k, v in mine[0].items()
           if isinstance(v, float) and all(isinstance(m.get(k), float) for m in mine)}
    return {**top, "tasks": per_task}


def held_out_fields(metrics: dict[str, Any], prefix: str = "held_out/") -> dict[str, Any]:
    """An evaluation's figures as metrics-record fields: ``held_out/pass@1``, ``held_out/greedy_accuracy``,
    ... (a mixture's tasks as ``held_out/<task>/pass@1``), and ``held_out/problems`` (reward models:
    held-out pairs). Per-difficulty breakdowns stay in ``summary.json``."""
    out: dict[str, Any] = {}
    n = metrics.get("num_problems", metrics.get("num_pairs"))
    if n is None and "tasks" in metrics:  # a mixture: its tasks' problems together
        n = sum(int(t.get("num_problems", 0)) for t in metrics["tasks"].values())
    if prefix == "held_out/" and n is not None:
        out[HELD_OUT_POINT] = int(n)
    for k, v in metrics.items():
        if k == "tasks":
            for task, tm in v.items():
                out.update(held_out_fields(tm, f"{prefix}{task}/"))
        elif isinstance(v, float) and k != "temperature":
            out[prefix + k] = v
    return out


def _recorded(run_dir: Path, stage: str, step: int) -> bool:
    """Whether ``metrics.jsonl`` holds a held-out record of ``stage`` at ``step``."""
    return any(r.get("stage") == stage and r.get("step") == step and HELD_OUT_POINT in r
               for r in read_metrics(run_dir))


def has_held_out(run_dir: Path, stage: str, step: int) -> bool:
    """``_recorded`` as the primary host sees it, on every host (they all evaluate, or none does)."""
    return bool(dist.from_primary(_recorded(run_dir, stage, step) if dist.is_primary() else None))


class HeldOutCurve:
    """``eval.every``: a stage's params evaluated on held-out problems before its first step and after every
    ``every`` steps, one ``held_out/...`` record each in ``metrics.jsonl`` and TensorBoard (the pipeline adds
    the end-of-stage evaluation's figures at the last step), so held-out accuracy shows as the stage trains.

    ``evaluate(params, step)`` returns the figures (``stage_eval``'s, or a reward model's pair accuracy). A
    step's record is written before that step's checkpoint, so a stage resumed from step s already holds the
    record of s and its curve is the uninterrupted run's; a due step without one (``eval.every`` set when the
    run was continued, or a stage killed before its first checkpoint) is evaluated when the stage starts
    there. Sampling seeds are fixed, so every point is scored on the same problems with the same noise."""

    def __init__(self, stage: StageConfig, writer: Any, evaluate: Callable[[Any, int], dict[str, Any]]):
        self.stage, self.writer, self.evaluate = stage, writer, evaluate
        self.every = int(stage.eval.every)

    def due(self, step: int) -> bool:
        """Step 0 and every ``every``-th step before the last (whose figures are the end-of-stage ones)."""
        return self.every > 0 and step < self.stage.steps and step % self.every == 0

    def start(self, step: int, params: Any) -> None:
        """Where a stage starts (0, or the step it resumes from): evaluate it if due and not yet recorded."""
        if self.due(step) and not has_held_out(self.writer.path.parent, self.stage.name, step):
            self.at(step, params)

    def at(self, step: int, params: Any) -> None:
        t0 = time.perf_counter()
        metrics = self.evaluate(params, step)
        fields = held_out_fields(metrics)
        self.writer.write({"stage": self.stage.name, "step": step, **fields, "eval_s": time.perf_counter() - t0})
        if "pass@1" not in metrics:  # a reward model's pairs (sampled evaluations log their own progress line)
            log.info("%s: held-out at step %d: %s", self.stage.name, step,
                     " | ".join(f"{k.removeprefix('held_out/')} {v:.3f}" for k, v in fields.items()
                                if isinstance(v, float)))


def end_of_stage_point(stage: StageConfig, writer: Any, step: int, metrics: dict[str, Any]) -> None:
    """The held-out curve's last point (``eval.every`` > 0): the end-of-stage figures at the stage's last step,
    unless an earlier attempt already recorded them (a run stopped between this record and its manifest)."""
    if stage.eval.every > 0 and dist.is_primary() and not _recorded(writer.path.parent, stage.name, step):
        writer.write({"stage": stage.name, "step": step, **held_out_fields(metrics)})


def stage_curve(rt: Runtime, stage: StageConfig, writer: Any, devices: list | None = None) -> HeldOutCurve:
    """The held-out curve of a sampled stage: ``stage_eval`` on the first ``eval.every_problems`` problems of
    each task, on ``rt``'s mesh (``devices``: host collectives on those only, as a split stage's trainer)."""
    ev = stage.eval
    sub = dataclasses.replace(stage, eval=dataclasses.replace(ev, num_problems=ev.every_problems or ev.num_problems))

    def evaluate(params: Any, step: int) -> dict[str, Any]:
        with dist.collectives_on(devices) if devices is not None else contextlib.nullcontext():
            return stage_eval(rt, sub, params, label=f" at step {step}")

    return HeldOutCurve(stage, writer, evaluate)
