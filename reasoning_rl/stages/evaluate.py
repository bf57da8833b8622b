"""End-of-stage held-out evaluation with the stage's own sampler settings and verifiers.

A stage is evaluated on every task the config trains on (its own first), each with that task's
correctness reward, so over-specialisation (a reasoning stage forgetting the instruction task, or the
reverse) shows in ``summary.json``. With one task the figures are the top-level keys, as before; with
several they sit under ``tasks`` and the top level holds the mean over the stage's own tasks. Every scored
completion can be written as ``samples.jsonl`` (``run`` writes ``RUN_DIR/held_out/<stage>/samples.jsonl`` at
each stage's end, ``eval`` its own beside ``eval.json``): the same records and fields either way.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from reasoning_rl import distributed as dist
from reasoning_rl import sharding as shd
from reasoning_rl.config import StageConfig
from reasoning_rl.evaluation import evaluate
from reasoning_rl.models import lora
from reasoning_rl.rewards import RewardComputer, RewardSpec, extract_answer, registry

from .common import Runtime
from .sources import CORRECTNESS_REWARDS, Source, config_sources, stage_sources

log = logging.getLogger("reasoning_rl")

__all__ = ["CORRECTNESS_REWARDS", "correctness_reward", "eval_source", "stage_eval", "write_jsonl"]


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
                records: list[dict] | None = None) -> dict[str, Any]:
    """Held-out figures of one task (see ``reasoning_rl.evaluation.evaluate``); ``records`` collects each
    scored completion."""
    ev = stage.eval
    examples = [{**e.as_dict(), "task": src.name} for e in src.task.held_out(ev.num_problems)]
    if len(examples) < ev.num_problems:  # evaluating all there are is right, but say so: the figure is on fewer
        log.warning("%s: eval.num_problems is %d, the %s task holds out %d problems: all %d are evaluated",
                    stage.name, ev.num_problems, src.name, len(examples), len(examples))
    with shd.use(rt.ctx):  # sample on the run's mesh (data-parallel meshes: a decode loop per device)
        return evaluate(
            mdef or rt.mdef, params, rt.tok, examples, samples=ev.samples, ks=ev.k,
            temperature=ev.temperature if ev.temperature is not None else stage.rollout.temperature,
            max_new_tokens=ev.max_new_tokens or stage.rollout.max_new_tokens,
            stop_ids=rt.stop_ids(stage.rollout.stop_at_answer), correct_fn=registry.get(src.correctness),
            format_fn=registry.get("format"), extract_fn=extract_answer, batch_size=ev.batch_size,
            greedy=ev.greedy, seed=rt.cfg.seed + 17, name=f"{stage.name}: held-out eval ({src.name})",
            records=records, correct_name=src.correctness,
            rewards_fn=_other_rewards(src) if records is not None else None)


def stage_eval(rt: Runtime, stage: StageConfig, params: Any, mdef=None,
               records: list[dict] | None = None, samples_path: Path | None = None) -> dict[str, Any]:
    """Held-out figures of every task; ``records``: each scored completion of every task is appended.
    ``samples_path``: those records are also written there as JSON lines (by the primary host only)."""
    if samples_path is not None and records is None:
        records = []
    result = _stage_eval(rt, stage, params, mdef, records)
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


def _stage_eval(rt: Runtime, stage: StageConfig, params: Any, mdef, records: list[dict] | None) -> dict[str, Any]:
    if mdef is None and lora.has_adapters(params):  # decode on merged weights (3.4x faster, tools/bench_lora.py)
        mdef = lora.base_mdef(rt.mdef)
        params = rt.jit_fn(lambda p: lora.merge(rt.mdef, p)[1])(params)
    own = [Source(rt, s) for s in stage_sources(stage)]
    names = {s.name for s in own}
    others = [Source(rt, s) for s in config_sources(rt.cfg) if s.name not in names]
    per_task = {s.name: eval_source(rt, stage, s, params, mdef, records) for s in own + others}
    if len(per_task) == 1:
        return next(iter(per_task.values()))
    mine = [per_task[s.name] for s in own]
    top = {k: float(np.mean([m[k] for m in mine])) for k, v in mine[0].items()
           if isinstance(v, float) and all(isinstance(m.get(k), float) for m in mine)}
    return {**top, "tasks": per_task}
