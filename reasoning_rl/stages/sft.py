"""Supervised fine-tuning stage: next-token loss on worked solutions.

The loop takes any example source (``fetch(index) -> {"prompt", "solution", ...}``): the stage's task or
task mixture for a cold start, a rejection-sampled set for ``rejection_sft``, teacher traces for ``distill``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import jax
import numpy as np

from reasoning_rl import distributed as dist
from reasoning_rl import sharding as shd
from reasoning_rl.algorithms.steps import make_sft_step
from reasoning_rl.config import StageConfig
from reasoning_rl.data.batching import pack, packed_sft_batch, round_up, sft_batch, sft_sequences
from reasoning_rl.data.loader import ExampleStream
from reasoning_rl.metrics import MetricsWriter
from reasoning_rl.progress import Progress

from .common import Runtime, StageRun, timer
from .evaluate import stage_curve
from .sources import StageData

log = logging.getLogger("reasoning_rl")


@dataclass
class ExampleSource:
    """Training examples by global index, and one sequence length that fits them (one compiled step)."""

    fetch: Callable[[int], dict]
    seq_len: int


def sft_seq_len(rt: Runtime, n: int = 256, fetch: Callable[[int], dict] | None = None) -> int:
    """One fixed sequence length per stage (one compiled step): the longest of a sample, rounded up."""
    if fetch is None:
        fetch = lambda i: rt.task.example("train", i).as_dict()
    lens = [len(rt.tok.encode(e["prompt"] + e["solution"])) + 1 for e in (fetch(i) for i in range(n))]
    return round_up(int(max(lens) * 1.1) + 1, 16)


def task_source(rt: Runtime, stage: StageConfig) -> ExampleSource:
    data = StageData(rt, stage)
    return ExampleSource(data.fetch, sft_seq_len(rt, fetch=data.fetch))


def packed_rows(rt: Runtime, stage: StageConfig, need: int) -> int:
    """The rows of a packed step: the fewest of ``batch_size``, ``batch_size / 2``, ... whose share on every
    host holds ``need`` rows (the most any host's sequences need) and that still split into the stage's
    micro-batches over the batch's shards (each distinct count compiles the step once)."""
    full = stage.batch_size
    unit = stage.algorithm.micro_batches * (full // shd.batch_sharding(rt.ctx, (full,)).shard_shape((full,))[0])
    best, g = full, full
    while g % 2 == 0 and (g // 2) % unit == 0:
        g //= 2
        rows = rt.host_rows(g)
        if rows.stop - rows.start < need:
            break
        best = g
    return best


def sft_step_batch(rt: Runtime, stage: StageConfig, examples: list[dict], seq_len: int) -> tuple[dict, int]:
    """This host's examples as a placed global batch (packed with ``stage.pack``), and its row count."""
    if not stage.pack:
        return rt.place_local(sft_batch(rt.tok, examples, seq_len), stage.batch_size), stage.batch_size
    seqs = sft_sequences(rt.tok, examples)
    layout = pack([len(ids) for ids, _ in seqs], seq_len)
    g = packed_rows(rt, stage, dist.agree_max(len(layout)))
    local = rt.host_rows(g)
    batch = packed_sft_batch(seqs, layout, seq_len, local.stop - local.start, rt.tok.pad_id)
    return rt.place_local(batch, g), g


def run_sft(rt: Runtime, stage: StageConfig, init_params, writer: MetricsWriter, progress: bool = True,
            source: ExampleSource | None = None, make_step: Callable | None = None,
            augment: Callable[[dict], dict] | None = None):
    """The SFT loop over ``source`` (default: the stage's tasks). ``make_step(run) -> step`` swaps in another
    loss over the same batches (logit distillation); ``augment(batch)`` adds inputs it needs (it gets the
    batch as placed global arrays)."""
    source = source or task_source(rt, stage)
    run = StageRun(rt, stage, init_params, stage.steps)
    stream = ExampleStream(source.fetch, stage.batch_size, rows=rt.host_rows(stage.batch_size))
    host = run.resume()
    if host is not None:
        stream.set_state(host["data"])
    writer.truncate(stage.name, run.start_step)
    step = make_step(run) if make_step is not None else make_sft_step(
        rt.mdef, stage.optimizer, run.tx, stage.algorithm.micro_batches, rt.model_cfg.logits_chunk)
    step_fn = rt.jit_step(step, run.state)
    seq_len = source.seq_len
    wall = float(run.host.get("wall_seconds", 0.0))
    note = (f"up to {stage.steps} steps, stops at loss {stage.stop_at_loss:g}"
            if stage.stop_at_loss is not None else "")
    bar = Progress(stage.name, stage.steps, run.start_step, progress, note=note)
    rec: dict = {}
    # stop_at_loss: the stage ends once the mean training loss of the last stop_window steps reaches it
    recent = deque(run.host.get("recent_losses", []), maxlen=stage.stop_window)
    stopped = run.host.get("stopped_early")
    run.curve = stage_curve(rt, stage, writer)
    if stopped is None:  # a stage that stopped early has its last point from the end-of-stage evaluation
        run.curve.start(run.start_step, run.state.params)
    last = run.start_step if stopped is None else int(stopped["step"])
    with run.guard() as guard:
        for step in range(run.start_step + 1, stage.steps + 1 if stopped is None else 0):
            t0 = timer()
            batch, rows = sft_step_batch(rt, stage, next(stream), seq_len)
            if augment is not None:  # on the placed (global) batch: e.g. the teacher's log-probs of it
                batch = augment(batch)
            run.state, m = step_fn(run.state, batch)
            m = jax.device_get(m)
            dt = timer() - t0
            wall += dt
            rec = {"stage": stage.name, "step": step, "loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]),
                   "skipped": int(m["skipped"]), "tokens": int(m["tokens"]), "tokens_per_s": float(m["tokens"]) / dt,
                   "seconds": dt, **{k: float(v) for k, v in m.items() if k.startswith(("moe_", "route_"))}}
            if stage.pack:  # rows the step ran, and the share of their tokens that are sequence, not padding
                rec["rows"], rec["fill"] = rows, float(jax.device_get(batch["valid"].sum())) / (rows * seq_len)
            writer.write(rec)
            bar.update(loss=rec["loss"])
            last = step
            recent.append(rec["loss"])

            def host(w=wall, stop=None):
                return {"data": stream.get_state(), "wall_seconds": w, "recent_losses": list(recent),
                        **({"stopped_early": stop} if stop else {})}

            if (stage.stop_at_loss is not None and len(recent) == recent.maxlen and step < stage.steps
                    and float(np.mean(recent)) <= stage.stop_at_loss):
                stopped = {"step": step, "mean_loss": float(np.mean(recent))}
                log.info("stage %s: mean loss of the last %d steps %.4f <= %g: stopping at step %d", stage.name,
                         len(recent), stopped["mean_loss"], stage.stop_at_loss, step)
                run.save(step, host(stop=stopped), force=True)  # before end_step: no periodic save of it yet
                break
            run.end_step(step, guard, host)
    bar.close(f"stopped early: mean loss {stopped['mean_loss']:.4f} <= {stage.stop_at_loss:g}"
              if stopped is not None else None)
    run.close()
    info = {"wall_seconds": wall, "final_loss": rec.get("loss"), "final_step": last}
    if stopped is not None:
        info["stopped_early"] = stopped
    return run.state.params, info
