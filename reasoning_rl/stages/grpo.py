"""GRPO-family stage: group rollouts → verifiable rewards → advantages → μ epochs of clipped updates.

Covers GRPO, Dr.GRPO, DAPO (clip-higher, dynamic sampling, overlong shaping, token-level loss) and GSPO
through the ``algorithm`` section. Sampling and updates use the same model code, and the behaviour
log-probs are the sampler's own (equal to the trainer's by construction; the step logs the gap).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import threading

import jax
import numpy as np

from reasoning_rl import distributed as dist
from reasoning_rl.algorithms.advantages import compute_advantages, informative_groups, overlong_penalty
from reasoning_rl.algorithms.entropy import EntropyControl, select_tokens
from reasoning_rl.algorithms.losses import kl_estimate, off_policy_weights
from reasoning_rl.algorithms.steps import make_grpo_step, make_logprob_fn
from reasoning_rl.config import ConfigError, StageConfig
from reasoning_rl.data.batching import (prompt_batch, rollout_batch, round_up, trim_completions, truncated_rows,
                                        update_width)
from reasoning_rl.data.loader import ExampleStream
from reasoning_rl.evaluation import sample_record
from reasoning_rl.metrics import MetricsWriter
from reasoning_rl.models import lora
from reasoning_rl.rewards import extract_answer
from reasoning_rl.rollout.sampler import SamplingParams, sample_impl

from reasoning_rl.sharding import replicated

from .async_rollout import AsyncFeed, decode_item
from .common import KLReference, Runtime, StageRun, StepLog, run_updates, timer
from .evaluate import stage_curve
from .sources import StageData, check_reward_errors, merge_scored, rollout_metrics


def prompt_len(rt: Runtime, n: int = 256, fetch=None) -> int:
    """One prompt width per stage (left-padded): the longest of a sample, rounded up."""
    if fetch is None:
        fetch = lambda i: rt.task.example("train", i).as_dict()
    return round_up(max(len(rt.tok.encode(fetch(i)["prompt"])) for i in range(n)) + 2, 8)


class Rollout:
    """Samples groups, scores them, and (with dynamic sampling) refills until the batch is informative."""

    def __init__(self, rt: Runtime, stage: StageConfig, stream: ExampleStream, data: StageData,
                 advantage: str | None = None):
        r = stage.rollout
        self.advantage = advantage or stage.algorithm.advantage
        self.rt, self.stage, self.stream, self.data = rt, stage, stream, data
        self.g = r.group_size
        replay = stage.algorithm.routing_replay
        if replay and rt.mdef.cfg.moe is None:
            raise ConfigError(f"stages.{stage.name}.algorithm.routing_replay: the model has no MoE layers")
        self.sp = SamplingParams(r.max_new_tokens, r.temperature, r.top_k, r.top_p, False,
                                 rt.stop_ids(r), rt.tok.pad_id, r.group_size, replay,
                                 slots=r.slots, refill_min=r.refill_min, page_size=r.page_size,
                                 stop_table=rt.stop_table(r), min_p=r.min_p)
        self.tp = prompt_len(rt, fetch=data.fetch)
        # LoRA: the adapters are folded into the weights once per policy update (one jitted fold) and the plain
        # base model decodes, with no per-token adapter products (3.4x faster decode, tools/bench_lora.py);
        # model.lora.merge_sampling: false applies them unmerged, with the trainer's own arithmetic, as
        # model.batch_invariant does (merged weights are other roundings: the log-probs would differ).
        merged = rt.lora and rt.mdef.cfg.lora.merge_sampling and not rt.mdef.cfg.batch_invariant
        self.sample = rt.jit_fn(functools.partial(sample_impl, rt.base_mdef if merged else rt.mdef, self.sp))
        self.merge = rt.jit_fn(lambda p: lora.merge(rt.mdef, p)[1]) if merged else None
        self.rows = rt.host_rows(r.prompts_per_step)
        self.rewarder = data.rewarder()
        self.samples: list[dict] = []  # the last step's rollouts for rollouts.jsonl

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
        check_reward_errors(scored, self.stage.name, self.stage.algorithm.max_reward_error_rate, rows)
        rewards = np.asarray(scored.result.total, np.float32)
        ol = self.stage.algorithm.overlong
        if ol.enabled:
            rewards = rewards + np.asarray(overlong_penalty(out.lengths, ol.max_len, ol.cache, ol.penalty))
        cut = truncated_rows(out.tokens, out.lengths, self.sp.max_new_tokens, self.sp.stop_ids, self.sp.stop_table)
        return {"pt": pt, "pv": pv, "out": out, "rewards": rewards, "scored": scored, "rows": rows, "cut": cut,
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
        mask = outs["mask"].copy()
        if n_real < p_needed:
            mask[n_real * self.g:] = False
        adv = np.asarray(compute_advantages(self.advantage, rew, self.g, mask=mask))
        batch = rollout_batch(pt, pv, outs["tokens"], mask, outs["logprobs"], adv, self.g, outs.get("routes"))
        if a.overlong.filter:  # DAPO overlong filtering: cut-off completions get no loss (their rewards counted)
            batch["mask"] = batch["mask"] & ~pick("cut", self.g)[:, None]
        width = update_width(int(outs["lengths"].max()), self.sp.max_new_tokens, self.stage.rollout.width_buckets)
        batch = trim_completions(batch, width)
        batch["rewards"] = rew  # host-side only (the caller pops it): token-level estimators redo the advantages
        # metrics over everything sampled in the first round (what the policy actually does)
        res = first["scored"].result
        gen_tokens = sum(int(r["out"].lengths.sum()) for r in rounds)
        metrics = {
            "reward_mean": float(first["rewards"].mean()), "reward_std": float(first["rewards"].std()),
            "response_len": float(first["out"].lengths.mean()),
            "gen_tokens_per_s": gen_tokens / max(t_sample, 1e-9), "sample_s": t_sample,
            "slot_utilisation": gen_tokens / max(sum(int(r["out"].slot_steps) for r in rounds), 1),
            "update_width": width,
            "truncated_frac": float(first["cut"].mean()),
            "reward_errors": int(sum(res.errors.values())), "reward_non_finite": int(sum(res.non_finite.values())),
            **res.error_metrics(),
        }
        metrics.update(rollout_metrics(first["scored"], first["rows"], first["out"].lengths, first["rewards"],
                                       self.data.mixed))
        if a.dynamic_sampling:
            metrics["groups_kept"] = n_real
            metrics["sampling_rounds"] = len(rounds)
        self.samples = self._samples(first, self.rt.cfg.log.rollouts_per_step)
        return batch, metrics

    def _samples(self, rd: dict, k: int) -> list[dict]:
        """``k`` rollouts of a round as records (``reasoning_rl.evaluation.sample_record``): the first sample of
        each prompt, then the second, ... so a few records show as many prompts as they can."""
        if k <= 0:
            return []
        out, scored, rows = rd["out"], rd["scored"], rd["rows"]
        n = len(rows)
        order = [p * self.g + j for j in range(self.g) for p in range(n // self.g)][:k]
        adv = np.asarray(compute_advantages(self.stage.algorithm.advantage, rd["rewards"], self.g))
        per_task: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            per_task.setdefault(r.get("task"), []).append(i)
        recs = []
        for i in order:
            m = int(out.lengths[i])
            text = self.rt.tok.decode(out.tokens[i, :m])
            row = rows[i]
            if self.data.mixed:  # per-reward values are per task there, keyed "<task>/<reward>"
                j, pre = per_task[row.get("task")].index(i), f"{row.get('task')}/"
                comps = {k[len(pre):]: float(v[j]) for k, v in scored.result.per_reward.items() if k.startswith(pre)}
            else:
                comps = {k: float(v[i]) for k, v in scored.result.per_reward.items()}
            rec = sample_record(row, text, extract_answer(text), comps, float(scored.correct[i]) >= 1.0, m,
                                bool(rd["cut"][i]), prompt_index=i // self.g,
                                sample=i % self.g)
            rec["reward"], rec["advantage"] = float(rd["rewards"][i]), float(adv[i])
            recs.append(rec)
        return recs


def kl_in_reward(a, batch: dict) -> np.ndarray | None:
    """-beta * KL(pi_old || ref) per completion token when the KL goes in the reward (else None)."""
    if a.beta <= 0 or a.kl_in != "reward":
        return None
    kl = np.asarray(kl_estimate(batch["old_logp"], batch["ref_logp"], a.kl_estimator))
    return np.where(batch["mask"], -a.beta * kl, 0.0).astype(np.float32)


def run_grpo(rt: Runtime, stage: StageConfig, init_params, writer: MetricsWriter, progress: bool = True):
    a, r = stage.algorithm, stage.rollout
    updates = stage.steps * a.epochs * a.mini_batches
    split = rt.cfg.mesh.rollout_devices
    trt, srt = rt.split(split) if split else (rt, rt)  # trainer's and sampler's meshes
    asynchronous = r.mode == "async"
    run = StageRun(trt, stage, init_params, updates)
    data = StageData(trt, stage)
    stream = ExampleStream(data.fetch, r.prompts_per_step, rows=srt.host_rows(r.prompts_per_step))
    reference = KLReference(trt, run, init_params)
    host = reference.resume()
    if host is not None:
        stream.set_state(host["data"])
    control = EntropyControl(a, host)
    writer.truncate(stage.name, run.start_step)
    # held-out points on the trainer's mesh (a split stage's sampler is decoding the next batches meanwhile)
    run.curve = stage_curve(trt, stage, writer, list(trt.mesh.devices.flat) if srt is not trt else None)
    run.curve.start(run.start_step, run.state.params)
    rollout = Rollout(srt, stage, stream, data)
    loss_cfg = dataclasses.replace(a, beta=0.0) if a.kl_in == "reward" else a  # the KL is in the advantages
    step_fn = trt.jit_step(make_grpo_step(trt.mdef, loss_cfg, stage.optimizer, run.tx, r.temperature,
                                          trt.model_cfg.logits_chunk, group=r.group_size, budget=r.max_new_tokens),
                           run.state)
    ref_fn = (trt.jit_fn(make_logprob_fn(trt.base_mdef, r.temperature, trt.model_cfg.logits_chunk,
                                         r.group_size))
              if a.beta > 0 else None)
    to_sampler = (lambda p: p) if srt is trt else srt.place
    # The stage's key never changes, but the state's buffers are donated each step: a split sampler keeps its
    # own copy; on a shared mesh the key is read from the current state.
    own_key = dist.move(run.state.rng, replicated(srt.mesh)) if srt is not trt else None
    sampler_key = lambda: own_key if own_key is not None else run.state.rng  # noqa: E731
    feed = correct = None
    fused = False
    # Several hosts, two meshes at once: each side's host collectives stay on its own devices, and checkpoint
    # writes (whose collectives may span all devices) wait until the sampler is between batches.
    sampler_devices = list(srt.mesh.devices.flat) if srt is not trt else None
    trainer_devices = list(trt.mesh.devices.flat) if srt is not trt else None
    lock = threading.RLock() if asynchronous and dist.multi() else contextlib.nullcontext()
    run.exclusive = lock

    def collect(params, key):  # the rollouts to log travel with their batch (the sampler may run ahead)
        with lock, dist.collectives_on(sampler_devices):
            batch, metrics = rollout.collect(params, key)
        return batch, {**metrics, "_samples": rollout.samples}

    if asynchronous:
        pending = [decode_item(d) for d in (host or {}).get("pending", [])]
        feed = AsyncFeed(collect, to_sampler, lambda t: jax.random.fold_in(own_key, t),
                         lambda: json.loads(json.dumps(stream.get_state())), r.max_staleness, run.start_step,
                         stage.steps, run.state.params, pending)
        # One update per batch (and no LoRA dropout in the training forward): the proximal policy is the params
        # that update differentiates, so the step takes its log-probs from its own forward (``behaviour_logp``
        # in ``make_grpo_grad``); otherwise a separate forward before the updates.
        fused = a.epochs * a.mini_batches == 1 and lora.dropout_key(trt.mdef.cfg, run.state.rng, 0) is None
        if a.off_policy != "none" and not fused:
            correct = trt.jit_fn(make_off_policy_fn(trt.mdef, r.temperature, trt.model_cfg.logits_chunk,
                                                    r.group_size, a.off_policy, a.tis_cap))
    slog = StepLog(rt, stage, writer, run, progress)
    t_loop, t_train = timer(), 0.0
    try:
        with dist.collectives_on(trainer_devices), run.guard() as guard:
            for step in range(run.start_step + 1, stage.steps + 1):
                t0 = timer()
                if feed is not None:
                    batch, rm, version = feed.get(step)
                    rm = {**rm, "staleness": step - 1 - version, "wait_s": timer() - t0}
                else:
                    rng = jax.random.fold_in(sampler_key(), step)
                    batch, rm = collect(to_sampler(run.state.params), rng)
                samples = rm.pop("_samples")
                rewards = batch.pop("rewards")
                t_up = timer()
                if ref_fn is not None:
                    b = trt.place_batch({k: batch[k] for k in ("tokens", "valid", "mask")})
                    batch["ref_logp"] = dist.gather(ref_fn(reference.params, b["tokens"], b["valid"], b["mask"]))
                penalty = kl_in_reward(a, batch)
                if penalty is not None:  # REINFORCE++: -beta * KL per token in the reward, then the returns
                    batch["adv"] = np.asarray(compute_advantages(a.advantage, rewards, r.group_size, batch["mask"],
                                                                 penalty))
                    rm["kl"] = float(np.sum(-penalty) / a.beta / max(int(batch["mask"].sum()), 1)) + 0.0
                if feed is not None:
                    batch = dict(batch, is_weight=batch["mask"].astype(np.float32))
                    if fused and a.off_policy != "none" and rm["staleness"] > 0:  # weights formed in the step
                        del batch["is_weight"]
                        batch["behaviour_logp"] = batch.pop("sampler_logp")  # the same array under its role
                    elif correct is not None and rm["staleness"] > 0:  # stale: proximal policy + IS weights
                        b = trt.place_batch({k: batch[k] for k in ("tokens", "valid", "mask", "sampler_logp")})
                        prox, w, im = dist.gather(correct(run.state.params, b["tokens"], b["valid"], b["mask"],
                                                             b["sampler_logp"]))
                        batch["old_logp"], batch["is_weight"] = np.asarray(prox), np.asarray(w)
                        rm.update({k: float(v) for k, v in im.items()})
                if a.loss in ("clip_cov", "kl_cov"):  # the tokens of highest log-prob/advantage covariance
                    batch["cov_select"] = select_tokens(
                        a.loss.removesuffix("_cov"), batch["adv"], batch["old_logp"], batch["mask"], a.cov.ratio,
                        a.cov.low, a.cov.high, np.random.default_rng((rt.cfg.seed, 7919, step)))
                batch.update(control.inputs(len(batch["adv"])))
                run.state, um = run_updates(step_fn, run.state, batch, a.epochs, a.mini_batches, trt.place_batch)
                um.update(control.after(um["entropy"]))
                rec = slog.record(step, t0, t_up, rm, um, reference.after_step(step))
                t_train += rec["update_s"]
                if rec.get("staleness", 0) > 0:
                    # the first update's params are not the ones that sampled a stale batch: the difference would
                    # be policy drift (is_ratio_* show it), not the sampler/trainer mismatch logprob_gap checks
                    rec.pop("logprob_gap", None)
                if feed is not None:
                    elapsed = max(timer() - t_loop, 1e-9)
                    rec["sampler_busy_frac"] = min(feed.busy / elapsed, 1.0)
                    rec["trainer_busy_frac"] = min(t_train / elapsed, 1.0)
                slog.write(rec, samples)
                run.end_step(step, guard, (lambda w=slog.wall, s=step: {**feed.host_state(s), "wall_seconds": w,
                                                                        **control.host_state()})
                             if feed is not None else
                             (lambda w=slog.wall: {"data": stream.get_state(), "wall_seconds": w,
                                                   **control.host_state()}))
                if feed is not None:
                    feed.publish(step, run.state.params)
    finally:  # (a stage that fails, e.g. on reward errors, leaves no reward threads behind in this process)
        if feed is not None:
            feed.close()
        rollout.rewarder.close()
    slog.close()
    run.close()
    params = run.state.params if trt is rt else rt.place(run.state.params)
    return params, {"wall_seconds": slog.wall}


def make_off_policy_fn(mdef, temperature: float, logits_chunk: int, group: int, mode: str, cap: float):
    """(params, tokens, valid, mask, behaviour logp) -> (proximal logp, IS weights, metrics): the trainer's
    own log-probs of a stale batch under the current policy, and the off-policy correction weights."""
    logprobs = make_logprob_fn(mdef, temperature, logits_chunk, group)

    def fn(params, tokens, valid, mask, behav):
        prox = logprobs(params, tokens, valid, mask)
        w, metrics = off_policy_weights(prox, behav, mask, mode, cap)
        return prox, w, metrics

    return fn
