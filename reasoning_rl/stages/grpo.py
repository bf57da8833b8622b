"""GRPO-family stage: group rollouts → verifiable rewards → advantages → μ epochs of clipped updates.

Covers GRPO, Dr.GRPO, DAPO (clip-higher, dynamic sampling, overlong shaping, token-level loss) and GSPO
through the ``algorithm`` section. Sampling and updates use the same model code, and the behaviour
log-probs are the sampler's own (equal to the trainer's by construction; the step logs the gap).
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from reasoning_rl import distributed as dist
from reasoning_rl.algorithms.advantages import compute_advantages, informative_groups, overlong_penalty
from reasoning_rl.algorithms.steps import make_grpo_step, make_logprob_fn
from reasoning_rl.config import ConfigError, StageConfig
from reasoning_rl.data.batching import prompt_batch, rollout_batch, round_up
from reasoning_rl.data.loader import ExampleStream
from reasoning_rl.metrics import MetricsWriter, Progress
from reasoning_rl.models import lora
from reasoning_rl.rollout.sampler import SamplingParams, sample_impl

from .common import Runtime, StageRun, timer
from .sources import StageData, merge_scored, rollout_metrics


def prompt_len(rt: Runtime, n: int = 256, fetch=None) -> int:
    """One prompt width per stage (left-padded): the longest of a sample, rounded up."""
    if fetch is None:
        fetch = lambda i: rt.task.example("train", i).as_dict()
    return round_up(max(len(rt.tok.encode(fetch(i)["prompt"])) for i in range(n)) + 2, 8)


class Rollout:
    """Samples groups, scores them, and (with dynamic sampling) refills until the batch is informative."""

    def __init__(self, rt: Runtime, stage: StageConfig, stream: ExampleStream, data: StageData):
        r = stage.rollout
        self.rt, self.stage, self.stream, self.data = rt, stage, stream, data
        self.g = r.group_size
        replay = stage.algorithm.routing_replay
        if replay and rt.mdef.cfg.moe is None:
            raise ConfigError(f"stages.{stage.name}.algorithm.routing_replay: the model has no MoE layers")
        self.sp = SamplingParams(r.max_new_tokens, r.temperature, r.top_k, r.top_p, False,
                                 rt.stop_ids(r.stop_at_answer), rt.tok.pad_id, r.group_size, replay,
                                 slots=r.slots, refill_min=r.refill_min, page_size=r.page_size)
        self.tp = prompt_len(rt, fetch=data.fetch)
        # LoRA: the adapters are folded into the weights once per policy update (one jitted fold) and the plain
        # base model decodes, with no per-token adapter products (3.4x faster decode, tools/bench_lora.py);
        # model.lora.merge_sampling: false applies them unmerged, with the trainer's own arithmetic.
        merged = rt.lora and rt.mdef.cfg.lora.merge_sampling
        self.sample = rt.jit_fn(functools.partial(sample_impl, rt.base_mdef if merged else rt.mdef, self.sp))
        self.merge = rt.jit_fn(lambda p: lora.merge(rt.mdef, p)[1]) if merged else None
        self.rows = rt.host_rows(r.prompts_per_step)
        self.rewarder = data.rewarder()

    def _round(self, params, rng):
        """One round of sampling. Each host loads and scores its own prompts' rows; what comes back (tokens,
        rewards, scores) is the whole batch, the same on every host."""
        examples = next(self.stream)  # this host's rows of the round
        pt, pv = prompt_batch(self.rt.tok, examples)
        width = dist.agree_max(max(pt.shape[1], self.tp))  # one prompt width on every host
        if pt.shape[1] < width:
            pad = width - pt.shape[1]
            pt = np.pad(pt, ((0, 0), (pad, 0)), constant_values=self.rt.tok.pad_id)
            pv = np.pad(pv, ((0, 0), (pad, 0)))
        n = self.stage.rollout.prompts_per_step
        placed = self.rt.place_local({"pt": pt, "pv": pv}, n)
        t0 = timer()
        out = dist.gather(self.sample(params, placed["pt"], placed["pv"], rng))
        t_sample = timer() - t0
        mine = self.rows
        texts = [self.rt.tok.decode(out.tokens[i, : out.lengths[i]])
                 for i in range(mine.start * self.g, mine.stop * self.g)]
        rows = [ex for ex in examples for _ in range(self.g)]
        scored = self.rewarder(texts, rows)
        if dist.multi():
            pt, pv = dist.allgather_rows(pt), dist.allgather_rows(pv)
            parts = dist.allgather_objects((scored, rows))
            scored, rows = merge_scored([s for s, _ in parts]), [r for _, rs in parts for r in rs]
        rewards = np.asarray(scored.result.total, np.float32)
        ol = self.stage.algorithm.overlong
        if ol.enabled:
            rewards = rewards + np.asarray(overlong_penalty(out.lengths, ol.max_len, ol.cache, ol.penalty))
        return {"pt": pt, "pv": pv, "out": out, "rewards": rewards, "scored": scored, "rows": rows,
                "t_sample": t_sample}

    def collect(self, params, rng):
        if self.merge is not None:
            params = self.merge(params)
        return self._collect(params, rng)

    def _collect(self, params, rng):
        """Returns the batch arrays and rollout metrics for one step."""
        a = self.stage.algorithm
        p_needed = self.stage.rollout.prompts_per_step
        rounds = []
        kept_groups = []
        t_sample = 0.0
        n_rounds = a.max_sampling_rounds if a.dynamic_sampling else 1
        for k in range(n_rounds):
            rd = self._round(params, jax.random.fold_in(rng, k))
            rounds.append(rd)
            t_sample += rd["t_sample"]
            keep = np.asarray(informative_groups(rd["rewards"], self.g)) if a.dynamic_sampling else \
                np.ones(len(rd["rewards"]) // self.g, bool)
            kept_groups += [(k, i) for i in np.nonzero(keep)[0]]
            if len(kept_groups) >= p_needed:
                break
        first = rounds[0]
        chosen = kept_groups[:p_needed]
        n_real = len(chosen)
        # Not enough informative groups after max rounds: fill with masked-out groups (no gradient, no count).
        fill = [(0, i) for i in range(p_needed - n_real)]
        groups = chosen + fill
        pick = lambda key, per_group: np.concatenate(
            [rounds[k][key][i * per_group:(i + 1) * per_group] for k, i in groups])
        pt = np.stack([rounds[k]["pt"][i] for k, i in groups])
        pv = np.stack([rounds[k]["pv"][i] for k, i in groups])
        rew = pick("rewards", self.g)
        fields = ("tokens", "mask", "logprobs", "lengths") + (("routes",) if self.sp.record_routes else ())
        outs = {f: np.concatenate([getattr(rounds[k]["out"], f)[i * self.g:(i + 1) * self.g] for k, i in groups])
                for f in fields}
        adv = np.asarray(compute_advantages(a.advantage, rew, self.g))
        mask = outs["mask"].copy()
        if n_real < p_needed:
            mask[n_real * self.g:] = False
        batch = rollout_batch(pt, pv, outs["tokens"], mask, outs["logprobs"], adv, self.g, outs.get("routes"))
        # metrics over everything sampled in the first round (what the policy actually does)
        res = first["scored"].result
        gen_tokens = sum(int(r["out"].lengths.sum()) for r in rounds)
        metrics = {
            "reward_mean": float(first["rewards"].mean()), "reward_std": float(first["rewards"].std()),
            "response_len": float(first["out"].lengths.mean()),
            "gen_tokens_per_s": gen_tokens / max(t_sample, 1e-9), "sample_s": t_sample,
            "slot_utilisation": gen_tokens / max(sum(int(r["out"].slot_steps) for r in rounds), 1),
            "reward_errors": int(sum(res.errors.values())), "reward_non_finite": int(sum(res.non_finite.values())),
        }
        metrics.update(rollout_metrics(first["scored"], first["rows"], first["out"].lengths, first["rewards"],
                                       self.data.mixed))
        if a.dynamic_sampling:
            metrics["groups_kept"] = n_real
            metrics["sampling_rounds"] = len(rounds)
        return batch, metrics


def run_grpo(rt: Runtime, stage: StageConfig, init_params, writer: MetricsWriter, progress: bool = True):
    a, r = stage.algorithm, stage.rollout
    updates = stage.steps * a.epochs * a.mini_batches
    run = StageRun(rt, stage, init_params, updates)
    data = StageData(rt, stage)
    stream = ExampleStream(data.fetch, r.prompts_per_step, rows=rt.host_rows(r.prompts_per_step))
    # The KL reference: the init params, or for LoRA the frozen base with adapters disabled (the state's own
    # base buffers: no copy).
    ref_params = None
    if a.beta > 0:
        ref_params = lora.split(run.state.params)[0] if rt.lora else rt.place(init_params)
    host = run.resume()
    if host is not None:
        stream.set_state(host["data"])
    writer.truncate(stage.name, run.start_step)
    rollout = Rollout(rt, stage, stream, data)
    step_fn = rt.jit_step(make_grpo_step(rt.mdef, a, stage.optimizer, run.tx, r.temperature,
                                         rt.model_cfg.logits_chunk, group=r.group_size), run.state)
    ref_fn = (rt.jit_fn(make_logprob_fn(rt.base_mdef, r.temperature, rt.model_cfg.logits_chunk, r.group_size))
              if a.beta > 0 else None)
    wall = float(run.host.get("wall_seconds", 0.0))
    bar = Progress(stage.name, stage.steps, run.start_step, progress)
    n_rows = r.prompts_per_step * r.group_size
    mb = n_rows // a.mini_batches
    with run.guard() as guard:
        for step in range(run.start_step + 1, stage.steps + 1):
            t0 = timer()
            rng = jax.random.fold_in(run.state.rng, step)
            batch, rm = rollout.collect(run.state.params, rng)
            t_up = timer()
            if ref_fn is not None:
                b = rt.place_batch({k: batch[k] for k in ("tokens", "valid", "mask")})
                batch["ref_logp"] = dist.gather(ref_fn(ref_params, b["tokens"], b["valid"], b["mask"]))
            ms = []
            for _ in range(a.epochs):
                for j in range(a.mini_batches):
                    part = {k: v[j * mb:(j + 1) * mb] for k, v in batch.items()}
                    run.state, m = step_fn(run.state, rt.place_batch(part))
                    ms.append(m)
            ms = jax.device_get(ms)
            dt = timer() - t0
            wall += dt
            rec = {"stage": stage.name, "step": step, **rm}
            for k in ms[0]:
                vals = [float(x[k]) for x in ms]
                rec[k] = sum(vals) if k == "skipped" else float(np.mean(vals))
            rec["logprob_gap"] = float(ms[0]["logprob_gap"])  # first update: params == rollout params
            rec["update_s"] = timer() - t_up
            rec["seconds"] = dt
            writer.write(rec)
            bar.update(reward=rec["reward_mean"], acc=rec.get("accuracy", 0.0))
            run.end_step(step, guard, lambda w=wall: {"data": stream.get_state(), "wall_seconds": w})
    bar.close()
    run.close()
    rollout.rewarder.close()
    return run.state.params, {"wall_seconds": wall}
