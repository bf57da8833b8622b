"""The ``reward_model`` stage: a scalar head on a backbone, trained on preference pairs with the
Bradley-Terry loss (``reasoning_rl.algorithms.preference``), evaluated by held-out pair accuracy, and
exported as a ``*ForSequenceClassification`` checkpoint (``checkpoints/<stage>/hf``).

The backbone is ``init`` (an earlier stage, a stage directory of any run, or a Hugging Face directory: a
classification checkpoint brings its head, a causal one gets a fresh head) or, without ``init``, a fresh
decoder from ``reward_model.model`` (merged over ``model:``; default: the policy's architecture). Pairs come
from the stage's task: the built-in ``helpfulness`` generator or a file task with ``preset: preference``.
Steps, checkpoints, resume, preemption and metrics are the other stages' (``StageRun``, ``ExampleStream``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

from reasoning_rl import distributed as dist
from reasoning_rl import sharding as shd
from reasoning_rl.algorithms.preference import make_reward_model_step, pair_scores
from reasoning_rl.checkpoint import read_manifest
from reasoning_rl.config import ConfigError, StageConfig, eval_sampling
from reasoning_rl.data.batching import round_up
from reasoning_rl.data.loader import ExampleStream
from reasoning_rl.metrics import MetricsWriter
from reasoning_rl.models.reward import RewardDef, reward_def
from reasoning_rl.progress import Progress
from reasoning_rl.rewards.reward_model import check_tokenizer, rm_tokens

from .common import Runtime, StageRun, model_config_from, run_options, timer
from .evaluate import HeldOutCurve

log = logging.getLogger("reasoning_rl")


class RewardRuntime(Runtime):
    """The run's runtime around a reward model (tokenizer, tasks and mesh shared with the policy's)."""

    @classmethod
    def of(cls, rt: Runtime, stage: StageConfig) -> RewardRuntime:
        self = cls.__new__(cls)
        self.__dict__.update(copy.copy(rt).__dict__)
        m = stage.reward_model.model or rt.model_cfg
        hf_init = stage.init is not None and not _is_stage_ref(rt, stage.init) and (Path(stage.init) / "config.json").is_file()
        if hf_init:
            from reasoning_rl.models.hf import config_from_hf

            cfg = dataclasses.replace(config_from_hf(stage.init), **run_options(m, lora=False))
        elif stage.reward_model.model is not None:
            cfg = model_config_from(stage.reward_model.model, rt.tok.vocab_size)
        else:
            cfg = rt.mdef.cfg
        self.model_cfg = m
        self.hf_path = None
        self.mdef = reward_def(cfg)
        self.param_shardings = shd.param_shardings(self.ctx, self.mdef.param_axes(), self.mdef.abstract_params())
        return self

    def init_params(self, seed: int | None = None) -> dict:
        from reasoning_rl.models import create

        seed = self.cfg.seed if seed is None else seed
        _, backbone = create(self.mdef.backbone.cfg, seed, shardings=self.param_shardings["backbone"])
        return jax.device_put({"backbone": backbone, "score": self.mdef.init_score(seed + 1)}, self.param_shardings)

    def with_head(self, backbone: dict, seed: int) -> dict:
        """A policy's params as a reward model: its decoder (no output projection) and a fresh head."""
        bb = {k: v for k, v in backbone.items() if k != "lm_head"}
        return self.place({"backbone": bb, "score": self.mdef.init_score(seed)})


def _is_stage_ref(rt: Runtime, ref: str) -> bool:
    return ref in {s.name for s in rt.cfg.stages}


def reward_init(stages, stage: StageConfig, rrt: RewardRuntime) -> tuple[Any, dict]:
    """Initial reward-model params for ``stage`` and its lineage entry (see the module docstring)."""
    from reasoning_rl.pipeline import load_outside, ref_kind

    seed = rrt.cfg.seed + 131
    if stage.init is None:
        return rrt.init_params(), {"kind": "fresh", "seed": rrt.cfg.seed, "model": None}
    kind = ref_kind(stage.init, stages.names)
    if kind == "stage":
        params, lineage = stages.resolve(stage.init, stages.rt)
        other = next(s for s in rrt.cfg.stages if s.name == stage.init)
        return (rrt.place(params) if other.kind == "reward_model" else rrt.with_head(params, seed)), lineage
    if kind == "checkpoint":
        man = read_manifest(Path(stage.init) / "manifest.json") or {}
        if man.get("kind") == "reward_model":
            return load_outside(rrt, stage.init)
        params, lineage = load_outside(stages.rt, stage.init)
        return rrt.with_head(params, seed), lineage
    from reasoning_rl.models import ConfigError as ModelConfigError
    from reasoning_rl.models.reward import check_reward_checkpoint, load_backbone_params, load_reward_params

    path = Path(stage.init)
    check_tokenizer(path, rrt.tok, rrt.mdef.cfg.vocab_size, f"stages.{stage.name}.init")
    lineage = {"kind": "hf", "path": str(path.absolute())}
    conf = json.loads((path / "config.json").read_text())
    try:
        if any("SequenceClassification" in a for a in conf.get("architectures") or []):
            check_reward_checkpoint(path)
            return load_reward_params(path, rrt.mdef, rrt.model_cfg.param_dtype, rrt.mesh), lineage
        backbone = load_backbone_params(path, rrt.mdef, rrt.model_cfg.param_dtype, rrt.mesh)
    except ModelConfigError as e:
        raise ConfigError(f"stages.{stage.name}.init: {e}") from None
    return rrt.with_head(backbone, seed), lineage


# --------------------------------------------------------------------------- data


class Pairs:
    """Preference pairs of a stage by global index (train) or held-out index."""

    def __init__(self, rt: Runtime, stage: StageConfig):
        self.task = rt.task_for(stage.task)
        self.margin = stage.reward_model.margin

    def fetch(self, index: int, split: str = "train") -> dict:
        p = self.task.pair(split, index)
        return {**p, "margin": float(p.get("margin", self.margin))}

    def held_out(self, n: int) -> list[dict]:
        size = self.task.held_out_size() if hasattr(self.task, "held_out_size") else self.task.cfg.held_out_size
        return [self.fetch(i, "held_out") for i in range(min(n, size))]


def bucket(n: int) -> int:
    """A padded length for ``n`` tokens: 16, 32, 48, 64, then 96, 128, 192, 256, ... (few compiled shapes,
    little padding: pairs are right-padded to their batch's longest sequence, not to the longest of all)."""
    w = 16
    while w < n:
        w = w + 16 if w < 64 else w * 3 // 2 if w & (w - 1) == 0 else w * 4 // 3
    return w


def pair_batch(tok, pairs: list[dict], limit: int, width: int | None = None) -> dict[str, np.ndarray]:
    """tokens/valid [B, 2, T] (chosen, rejected; right-padded) and margin [B]. ``T`` is the longest sequence's
    ``bucket`` (or ``width``), at most ``limit`` (the model's context: longer sequences are cut there)."""
    ids = [[rm_tokens(tok, p["prompt"], p[k])[:limit] for k in ("chosen", "rejected")] for p in pairs]
    t = width if width is not None else min(bucket(max(len(x) for pair in ids for x in pair)), limit)
    tokens = np.full((len(pairs), 2, t), tok.pad_id, np.int32)
    valid = np.zeros((len(pairs), 2, t), bool)
    for i, pair in enumerate(ids):
        for j, x in enumerate(pair):
            tokens[i, j, :len(x)], valid[i, j, :len(x)] = x, True
    return {"tokens": tokens, "valid": valid, "margin": np.asarray([p["margin"] for p in pairs], np.float32)}


def train_batch(rt: Runtime, pairs: list[dict], limit: int) -> dict[str, np.ndarray]:
    """This host's rows of a training batch, padded to the width every host agrees on (the longest)."""
    b = pair_batch(rt.tok, pairs, limit)
    width = dist.agree_max(b["tokens"].shape[-1])
    return b if width == b["tokens"].shape[-1] else pair_batch(rt.tok, pairs, limit, width)


def pair_accuracy(rt: RewardRuntime, params: Any, pairs: list[dict], limit: int, batch: int = 64) -> dict:
    """Held-out pair accuracy (chosen scored strictly above rejected) and the mean score gap. Every host holds
    all the pairs and places its shards of each chunk; the scores are gathered on every host."""
    fn = rt.jit_fn(functools.partial(pair_scores, rt.mdef))
    dp = int(np.prod([dict(rt.mesh.shape).get(a, 1) for a in ("data", "fsdp", "expert")]))
    batch = round_up(batch, dp)
    got = []
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        b = pair_batch(rt.tok, chunk + [chunk[0]] * (batch - len(chunk)), limit)
        placed = rt.place_batch({"tokens": b["tokens"], "valid": b["valid"]})
        got.append(np.asarray(dist.gather(fn(params, placed["tokens"], placed["valid"])))[:len(chunk)])
    s = np.concatenate(got)
    diff = s[:, 0] - s[:, 1]
    return {"pair_accuracy": float((diff > 0).mean()), "score_gap": float(diff.mean()),
            "score_mean": float(s.mean()), "score_std": float(s.std()), "num_pairs": len(pairs)}


# --------------------------------------------------------------------------- the stage


def run_reward_model(rt: RewardRuntime, stage: StageConfig, init_params: Any, writer: MetricsWriter,
                     progress: bool = True) -> tuple[Any, dict]:
    data = Pairs(rt, stage)
    held = data.held_out(stage.reward_model.held_out_pairs)
    limit = rt.mdef.cfg.max_seq_len
    run = StageRun(rt, stage, init_params, stage.steps)
    stream = ExampleStream(data.fetch, stage.batch_size, rows=rt.host_rows(stage.batch_size))
    host = run.resume()
    if host is not None:
        stream.set_state(host["data"])
    writer.truncate(stage.name, run.start_step)
    some = held[:stage.eval.every_problems or len(held)]  # the held-out curve's pairs
    run.curve = HeldOutCurve(stage, writer, lambda params, step: pair_accuracy(rt, params, some, limit))
    run.curve.start(run.start_step, run.state.params)
    step_fn = rt.jit_step(make_reward_model_step(rt.mdef, stage.reward_model, stage.optimizer, run.tx,
                                                 stage.algorithm.micro_batches), run.state)
    wall = float(run.host.get("wall_seconds", 0.0))
    bar = Progress(stage.name, stage.steps, run.start_step, progress)
    rec: dict = {}
    with run.guard() as guard:
        for step in range(run.start_step + 1, stage.steps + 1):
            t0 = timer()
            batch = rt.place_local(train_batch(rt, next(stream), limit), stage.batch_size)
            run.state, m = step_fn(run.state, batch)
            m = jax.device_get(m)
            dt = timer() - t0
            wall += dt
            rec = {"stage": stage.name, "step": step, "loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]),
                   "skipped": int(m["skipped"]), "pairs": int(m["pairs"]), "pair_accuracy": float(m["pair_accuracy"]),
                   "score_gap": float(m["score_gap"]), "score_mean": float(m["score_mean"]), "seconds": dt,
                   "pairs_per_s": float(m["pairs"]) / dt}
            writer.write(rec)
            bar.update(loss=rec["loss"], acc=rec["pair_accuracy"])
            run.end_step(step, guard, lambda w=wall: {"data": stream.get_state(), "wall_seconds": w})
    bar.close()
    run.close()
    params = run.state.params
    ev = pair_accuracy(rt, params, held, limit)
    info = {"wall_seconds": wall, "final_loss": rec.get("loss"), "eval": ev}
    if stage.reward_model.export:
        from reasoning_rl.models.reward import save_reward_model

        out = rt.run_dir / "checkpoints" / stage.name / "hf"
        tok_from = getattr(rt.tok, "path", None)
        tok_dir = Path(tok_from).parent if tok_from is not None and Path(tok_from).is_file() else tok_from
        save_reward_model(rt.mdef, params, out, pad_token_id=rt.tok.pad_id, tokenizer_from=tok_dir)
        info["export"] = str(out)
    return params, info


def register(rt: Runtime, name: str, rrt: RewardRuntime, params: Any) -> None:
    """Make a finished reward_model stage available to ``{kind: reward_model, stage: name}`` rewards."""
    rt.reward_models[name] = (rrt.mdef, params)


__all__ = ["RewardDef", "RewardRuntime", "pair_accuracy", "pair_batch", "register", "reward_init",
           "run_reward_model"]


# --------------------------------------------------------------------------- the helpfulness report


def _helpful(stage: StageConfig, sources) -> list:
    return [s for s in sources if getattr(s.task, "name", "") == "helpfulness"
            and any(r.kind == "reward_model" for r in s.rewards)]


def judge_mean(rt: Runtime, stage: StageConfig, src, params: Any) -> float:
    """The hidden judge's mean score over ``eval.samples`` samples of each held-out prompt (the stage's
    evaluation settings and seed, so two checkpoints see the same prompts and random stream)."""
    from reasoning_rl.evaluation import sample_texts
    from reasoning_rl.rollout.sampler import SamplingParams

    ev = stage.eval
    examples = [{**e.as_dict(), "task": src.name} for e in src.task.held_out(ev.num_problems)]
    prompts = [rt.tok.encode(e["prompt"]) for e in examples]
    how = eval_sampling(stage)
    sp = SamplingParams(ev.max_new_tokens or stage.rollout.max_new_tokens, how["temperature"], how["top_k"],
                        how["top_p"], False, rt.stop_ids(stage.rollout), rt.tok.pad_id, ev.samples,
                        stop_table=rt.stop_table(stage.rollout), min_p=how["min_p"])
    bp = max(1, min(len(prompts), ev.batch_size // ev.samples))
    with shd.use(rt.ctx):
        texts, _ = sample_texts(rt.mdef, params, rt.tok, prompts, sp, rt.cfg.seed + 17, bp)
    return float(np.mean([src.task.judge(t, examples[i // ev.samples]) for i, t in enumerate(texts)]))


def helpfulness_before(rt: Runtime, stage: StageConfig, params: Any) -> dict | None:
    """For an RL stage that scores the helpfulness task with a reward model: the judge's mean and every
    other task's held-out pass@1 on its starting checkpoint (None for other stages)."""
    from .evaluate import eval_source
    from .sources import Source, stage_sources

    sources = [Source(rt, s) for s in stage_sources(stage)]
    helpful = _helpful(stage, sources)
    if stage.kind != "grpo" or not helpful:
        return None
    out = {"judge": judge_mean(rt, stage, helpful[0], params)}
    for s in sources:
        if s not in helpful:
            out[s.name] = eval_source(rt, stage, s, params)["pass@1"]
    return out


def helpfulness_report(rt: Runtime, stage: StageConfig, before: dict, params: Any, metrics: dict,
                       summary: dict) -> dict:
    """summary.json's ``helpfulness``: the reward model's held-out pair accuracy, and the judge's mean and
    the other tasks' pass@1 before and after the RL stage."""
    from .sources import Source, stage_sources

    sources = [Source(rt, s) for s in stage_sources(stage)]
    src = _helpful(stage, sources)[0]
    rcfg = next(r for r in src.rewards if r.kind == "reward_model")
    out: dict[str, Any] = {"stage": stage.name, "reward_model": rcfg.stage or rcfg.path}
    if rcfg.stage is not None and rcfg.stage in summary:
        out["pair_accuracy"] = summary[rcfg.stage].get("pair_accuracy")
    out["judge_before"] = before["judge"]
    out["judge_after"] = judge_mean(rt, stage, src, params)
    tasks = metrics.get("tasks", {})
    for s in sources:
        if s.name in before and s.name != "judge":
            out[f"{s.name}_before"] = before[s.name]
            out[f"{s.name}_after"] = tasks.get(s.name, metrics).get("pass@1")
    return out
