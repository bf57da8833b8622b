"""Rejection-sampling SFT: sample from a policy, keep what the verifiers accept, fine-tune on it.

``N`` completions per training prompt come from the jitted group sampler; a completion is kept when the
task's correctness reward accepts it and (``require_format``) the format reward does, duplicates of a
prompt's earlier kept completions are dropped, and at most ``max_per_prompt`` are kept per prompt. The
kept set is written to the stage directory (``<name>.jsonl`` plus ``<name>.json`` with the counts) once,
so a resumed stage trains on exactly the same examples without sampling again. The same machinery
produces a distill stage's teacher traces.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reasoning_rl import distributed as dist
from reasoning_rl.config import StageConfig
from reasoning_rl.data.batching import round_up
from reasoning_rl.evaluation import sample_texts
from reasoning_rl.metrics import MetricsWriter, read_metrics
from reasoning_rl.progress import Progress
from reasoning_rl.rewards import registry
from reasoning_rl.rewards.format import format_fn_for
from reasoning_rl.rollout.sampler import SamplingParams

from .common import Runtime, StageFailed, _stage_index
from .sft import ExampleSource, run_sft
from .sources import StageData, check_reward_errors, stage_sources

log = logging.getLogger("reasoning_rl")


@dataclass(frozen=True)
class SampleSpec:
    """How to draw and filter a kept set."""

    prompts: int
    samples: int
    max_per_prompt: int
    temperature: float
    max_new_tokens: int
    batch_size: int
    require_correct: bool = True
    require_format: bool = True
    verifier: str | None = None  # None: each task's correctness reward
    top_k: int = 0  # the sampler's filters (``reasoning_rl.rollout.sampling.filter_logits``)
    top_p: float = 1.0
    min_p: float = 0.0


def filter_samples(rows: Sequence[dict], texts: Sequence[str], correct: Sequence[float],
                   well_formed: Sequence[float], samples: int, spec: SampleSpec) -> tuple[list[dict], dict]:
    """Keep verified, well-formed, distinct completions, at most ``spec.max_per_prompt`` per prompt.

    ``texts``/``correct``/``well_formed`` hold ``samples`` consecutive entries per row of ``rows``.
    Returns the kept examples (the prompt's fields with ``solution`` = the completion) and the counts."""
    kept: list[dict] = []
    accepted = duplicates = capped = 0
    per_task: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        seen: set[str] = set()
        n_kept = 0
        for j in range(i * samples, (i + 1) * samples):
            ok = (not spec.require_correct or correct[j] >= 1.0) and (not spec.require_format or well_formed[j] >= 1.0)
            ok = ok and bool(texts[j].strip())
            t = per_task.setdefault(str(row.get("task", "")), [0, 0])
            t[1] += 1
            if not ok:
                continue
            accepted += 1
            t[0] += 1
            norm = " ".join(texts[j].split())
            if norm in seen:
                duplicates += 1
                continue
            if n_kept >= spec.max_per_prompt:
                capped += 1
                continue
            seen.add(norm)
            n_kept += 1
            kept.append({**{k: v for k, v in row.items() if k != "solution"}, "solution": texts[j]})
    total = len(rows) * samples
    stats = {"prompts": len(rows), "samples": total, "accepted": accepted,
             "acceptance_rate": accepted / max(total, 1), "duplicates": duplicates, "capped": capped,
             "kept": len(kept), "prompts_with_kept": len({k["key"] for k in kept}),
             "per_task_acceptance": {k: a / max(n, 1) for k, (a, n) in per_task.items()}}
    return kept, stats


def collect(rt: Runtime, stage: StageConfig, params: Any, spec: SampleSpec, name: str, seed: int,
            mdef=None) -> tuple[list[dict], dict]:
    """The kept set for ``stage``: loaded from the stage dir if written before, else sampled and written."""
    sdir = rt.run_dir / "checkpoints" / stage.name
    path, stats_path = sdir / f"{name}.jsonl", sdir / f"{name}.json"
    # several hosts: all sample the same prompts (the sampler's inputs are the same everywhere, its outputs
    # gathered), all verify every sample, the primary writes the set; whether it exists is the primary's word
    if dist.from_primary(path.is_file() and stats_path.is_file()):
        kept = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return kept, json.loads(stats_path.read_text())
    data = StageData(rt, stage)
    offset = 1_000_003 * (1 + _stage_index(rt.cfg, stage.name))  # prompts of its own, not the RL stream's
    rows = [data.fetch(offset + i) for i in range(spec.prompts)]
    prompts = [rt.tok.encode(r["prompt"]) for r in rows]
    sp = SamplingParams(spec.max_new_tokens, float(spec.temperature), int(spec.top_k), float(spec.top_p), False,
                        rt.stop_ids(stage.rollout), rt.tok.pad_id, spec.samples,
                        stop_table=rt.stop_table(stage.rollout), min_p=float(spec.min_p))
    bp = max(1, min(len(prompts), spec.batch_size // spec.samples))
    what = "rejection sampling" if name == "kept" else "teacher traces" if name == "traces" else name
    bar = Progress(f"{stage.name}: {what}", len(prompts) * spec.samples, unit="sample")
    texts, _ = sample_texts(mdef or rt.mdef, params, rt.tok, prompts, sp, seed, bp, progress=bar)
    bar.close()
    log.info("stage %s: verifying %d samples", stage.name, len(texts))
    expanded = [r for r in rows for _ in range(spec.samples)]
    if spec.verifier is not None:
        check = registry.get(spec.verifier)
        correct = [float(check(t, r)) for t, r in zip(texts, expanded)]
    else:
        rewarder = data.rewarder()
        try:
            scored = rewarder(texts, expanded)
            check_reward_errors(scored, stage.name, stage.algorithm.max_reward_error_rate, expanded)
            correct = scored.correct
        finally:
            rewarder.close()
    fmts = {src.name: format_fn_for(src.rewards) for src in stage_sources(stage)}  # (each task's format options)
    fmt = format_fn_for(stage.rewards)
    well_formed = [fmts.get(r.get("task"), fmt)(t, r) for t, r in zip(texts, expanded)]
    kept, stats = filter_samples(rows, texts, correct, well_formed, spec.samples, spec)
    if dist.is_primary():
        sdir.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, "".join(json.dumps(k) + "\n" for k in kept))
        _atomic_write(stats_path, json.dumps(stats, indent=2))
    dist.barrier(f"{stage.name} {name} written")
    log.info("stage %s: kept %d of %d samples (acceptance %.3f)", stage.name, stats["kept"], stats["samples"],
             stats["acceptance_rate"])
    return kept, stats


def kept_source(rt: Runtime, kept: list[dict], seed: int) -> ExampleSource:
    """Kept examples by global index, reshuffled every epoch (seeded): deterministic and resumable."""
    n = len(kept)
    orders: dict[int, np.ndarray] = {}

    def fetch(i: int) -> dict:
        epoch = i // n
        if epoch not in orders:
            orders.clear()
            orders[epoch] = np.random.default_rng([seed, 5, epoch]).permutation(n)
        return kept[int(orders[epoch][i % n])]

    longest = max(len(rt.tok.encode(k["prompt"] + k["solution"])) for k in kept) + 1
    return ExampleSource(fetch, round_up(longest, 16))


def log_once(writer: MetricsWriter, run_dir: Path, stage: str, record: dict) -> None:
    """A stage's step-0 record (sampling figures), written once even across restarts."""
    if not any(r.get("stage") == stage and r.get("step") == 0 for r in read_metrics(run_dir)):
        writer.write({"stage": stage, "step": 0, **record})


def run_rejection_sft(rt: Runtime, stage: StageConfig, init_params: Any, sampler_params: Any,
                      writer: MetricsWriter, progress: bool = True) -> tuple[Any, dict]:
    rj = stage.rejection
    spec = SampleSpec(rj.prompts, rj.samples, rj.max_per_prompt, rj.temperature,
                      rj.max_new_tokens or stage.rollout.max_new_tokens, rj.batch_size,
                      require_correct=True, require_format=rj.require_format, verifier=rj.verifier,
                      top_k=rj.top_k, top_p=rj.top_p, min_p=rj.min_p)
    seed = rt.cfg.seed + 31 * (1 + _stage_index(rt.cfg, stage.name))
    kept, stats = collect(rt, stage, sampler_params, spec, "kept", seed)
    if not kept:
        raise StageFailed(f"stage {stage.name}: rejection sampling kept nothing ({stats['samples']} samples, "
                          "none verified and well formed); sample from a stronger policy or raise rejection.samples")
    log_once(writer, rt.run_dir, stage.name, {k: v for k, v in stats.items() if not isinstance(v, dict)})
    params, info = run_sft(rt, stage, init_params, writer, progress, kept_source(rt, kept, seed))
    return params, {**info, "rejection": stats}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
