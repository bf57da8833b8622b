"""PPO stage: the GRPO stage's rollouts and rewards, a learned critic, GAE, and clipped policy and value updates.

Everything but the advantages is the ``grpo`` stage's machinery: the same ``Rollout`` (sampling, rewards,
host rows), ``StageRun`` (checkpoints, resume, preemption), jitted steps on the same mesh. The step is one pure
function over a ``TrainState`` whose ``critic`` field holds the critic's params and optimizer state, so the
critic is sharded by its logical axes, donated, checkpointed (its own Orbax item) and resumed with the policy.

The critic is a value head (``models.value``) on its own copy of the policy's backbone (starting from the
policy's init), or on the backbone of the stage's ``critic_model`` (a model section or HF directory with the
policy's tokenizer). Per rollout: values of the behaviour states, the reference's log-probs when ``beta > 0``,
token rewards (the outcome on the last token, ``-beta * KL`` per token when ``kl_in: reward``), then GAE.
``group_size: 1`` works: nothing here needs a group.
"""

from __future__ import annotations

import dataclasses
import filecmp
from pathlib import Path
from typing import Any

import jax
import numpy as np

from reasoning_rl import distributed as dist
from reasoning_rl import sharding as shd
from reasoning_rl.algorithms.advantages import gae, masked_whiten, token_rewards_with_outcome
from reasoning_rl.algorithms.entropy import EntropyControl
from reasoning_rl.algorithms.steps import make_logprob_fn, make_optimizer, make_ppo_step, make_value_fn
from reasoning_rl.config import ConfigError, StageConfig
from reasoning_rl.data.loader import ExampleStream
from reasoning_rl.metrics import MetricsWriter
from reasoning_rl.models import lora
from reasoning_rl.models.value import critic_axes, init_value_head, load_value_head

from .common import KLReference, Runtime, StageRun, StepLog, run_updates, timer
from .evaluate import stage_curve
from .grpo import Rollout, kl_in_reward
from .sources import StageData

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tiktoken.model")


class Critic:
    """The critic's model definition, shardings and initial params for one ppo stage."""

    def __init__(self, rt: Runtime, stage: StageConfig, index: int):
        self.rt, self.stage = rt, stage
        key = f"stages[{index}].critic_model"
        if stage.critic_model is None:
            self.crt = rt
        else:
            try:  # a full model of its own: a critic_model section merged over a LoRA policy's drops its adapters
                self.crt = rt.for_model(dataclasses.replace(stage.critic_model, lora=None))
            except (OSError, ValueError) as e:
                raise ConfigError(f"{key}: cannot build the critic's model ({e})") from None
            v_c, v_p = self.crt.mdef.cfg.vocab_size, rt.mdef.cfg.vocab_size
            if v_c != v_p:
                raise ConfigError(f"{key}: the critic's vocabulary has {v_c} tokens, the policy's {v_p}; the critic "
                                  "reads the policy's tokens, so it needs the same tokenizer")
            _same_tokenizer(rt, stage.critic_model.path, key)
        self.cdef = self.crt.base_mdef  # a LoRA policy's critic copies the policy without adapters (merged in)
        d_model = self.cdef.cfg.d_model
        self.axes = critic_axes(self.cdef.param_axes())
        self.abstract = {"backbone": self.cdef.abstract_params(),
                         "head": jax.eval_shape(lambda: init_value_head(d_model, self.cdef.cfg.jnp_param_dtype))}
        self.shardings = shd.param_shardings(rt.ctx, self.axes, self.abstract)

    def init_params(self, policy_init: Any) -> dict:
        """A copy of the policy's init (a LoRA policy's with its adapters merged: the function the policy
        computes) or the critic model's own weights, plus a zero value head, placed."""
        if self.stage.critic_model is None:
            backbone = policy_init
            if self.rt.lora:
                merged = jax.jit(lambda p: lora.merge(self.rt.mdef, p)[1])(policy_init)
                backbone = jax.tree.map(lambda x, s: x.astype(s.dtype), merged, self.abstract["backbone"])
        else:
            seed = self.stage.critic.seed if self.stage.critic.seed is not None else self.rt.cfg.seed + 31
            backbone = self.crt.init_params(seed)
        head = None
        if self.stage.critic_model is not None and self.stage.critic_model.path:  # an exported value model
            head = load_value_head(self.stage.critic_model.path, self.cdef.cfg.jnp_param_dtype)
        if head is None:
            head = init_value_head(self.cdef.cfg.d_model, self.cdef.cfg.jnp_param_dtype)
        return jax.device_put({"backbone": backbone, "head": head}, self.shardings, may_alias=False)

    def state(self, params: dict, tx) -> dict:
        """{"params", "opt_state"} with the optimizer moments on their parameters' shardings."""
        with shd.use(self.rt.ctx):
            opt = jax.jit(tx.init, out_shardings=self.rt.opt_shardings(tx, params, self.shardings))(params)
        return {"params": params, "opt_state": opt}


def _same_tokenizer(rt: Runtime, critic_path: str | None, key: str) -> None:
    """An HF critic directory's tokenizer files must be the policy's (same ids for the same text)."""
    if not critic_path:
        return
    ours = rt.cfg.tokenizer.path or rt.cfg.model.path
    theirs = Path(critic_path)
    for name in TOKENIZER_FILES:
        t = theirs / name
        if not t.is_file():
            continue
        o = None if ours is None else (Path(ours) / name if Path(ours).is_dir() else Path(ours))
        if o is None or not o.is_file() or o.name != name or not filecmp.cmp(o, t, shallow=False):
            raise ConfigError(f"{key}: {t} is not the policy's tokenizer; the critic must read the policy's "
                              "token ids")


def restore_critic(rt: Runtime, stage: StageConfig, sdir: Path, keep: int,
                   step: int | None = None) -> tuple[Critic, dict]:
    """The critic params of a ppo stage's final (or latest, or ``step``'s) checkpoint in ``sdir``, on ``rt``'s
    mesh."""
    import orbax.checkpoint as ocp

    from reasoning_rl.checkpoint import CheckpointError, StageCheckpointer, read_manifest

    index = [s.name for s in rt.cfg.stages].index(stage.name)
    critic = Critic(rt, stage, index)
    tx = make_optimizer(stage.critic.optimizer, 1)
    params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          critic.abstract, critic.shardings)
    opt = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                       jax.eval_shape(tx.init, params), rt.opt_shardings(tx, params, critic.shardings))
    man = read_manifest(sdir / "manifest.json")
    ck = StageCheckpointer(sdir, keep)
    try:
        steps = ck.steps()
        if step is None:
            step = man["final_step"] if man and man.get("complete") else (steps[-1] if steps else None)
        if step is None:
            raise CheckpointError(f"{sdir}: no checkpoint to export the critic from")
        out = ck.mgr.restore(step, args=ocp.args.Composite(
            critic=ocp.args.StandardRestore({"params": params, "opt_state": opt})))
    finally:
        ck.close()
    return critic, out["critic"]["params"]


def check_critics(rt: Runtime) -> None:
    """Every ppo stage's critic is buildable and reads the policy's tokens (before any stage runs)."""
    for i, st in enumerate(rt.cfg.stages):
        if st.kind == "ppo" and st.critic_model is not None:
            Critic(rt, st, i)


def _masked_stats(x: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    v = np.asarray(x)[mask]
    return (float(v.mean()), float(v.std())) if v.size else (0.0, 0.0)


def explained_variance(values: np.ndarray, returns: np.ndarray, mask: np.ndarray) -> float:
    """1 - Var(R - V) / Var(R) over the completion tokens: 1 is a perfect critic, 0 one no better than a
    constant, negative worse than a constant. NaN when the returns do not vary (shown as such, never 0)."""
    r, v = np.asarray(returns)[mask], np.asarray(values)[mask]
    var = r.var() if r.size else 0.0
    return float(1.0 - (r - v).var() / var) if var > 0 else float("nan")


def advantages(a, rewards: np.ndarray, values: np.ndarray, batch: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """GAE advantages and returns [B, T] of one rollout batch, and their metrics."""
    mask = batch["mask"]
    penalty = kl_in_reward(a, batch)
    tr = token_rewards_with_outcome(rewards, mask, penalty)
    adv, ret = gae(tr, values, mask, a.gamma, a.lam)
    adv, ret = np.asarray(adv), np.asarray(ret)
    am, asd = _masked_stats(adv, mask)
    rm, rsd = _masked_stats(ret, mask)
    vm, _ = _masked_stats(values, mask)
    metrics = {"returns_mean": rm, "returns_std": rsd, "advantages_mean": am, "advantages_std": asd,
               "values_mean": vm, "explained_variance": explained_variance(values, ret, mask)}
    if penalty is not None:
        metrics["kl"] = float(np.sum(-penalty) / a.beta / max(int(mask.sum()), 1)) + 0.0
    if a.whiten_advantages:
        adv = np.asarray(masked_whiten(adv, mask))
    return adv.astype(np.float32), ret.astype(np.float32), metrics


def _samples_with_gae(samples: list[dict], group: int, adv: np.ndarray, values: np.ndarray,
                      mask: np.ndarray) -> list[dict]:
    """The step's logged rollouts with PPO's figures: ``advantage``, the mean over the row's tokens of the
    advantages its loss used, and ``value``, the critic's value of the prompt (the state before the first
    completion token). Each record is its batch row (a ppo stage samples one round, no dynamic sampling)."""
    out = []
    for rec in samples:
        i = rec["prompt_index"] * group + rec["sample"]
        m = mask[i]
        out.append({**rec, "advantage": float(adv[i][m].mean()) if m.any() else 0.0, "value": float(values[i, 0])})
    return out


def run_ppo(rt: Runtime, stage: StageConfig, init_params, writer: MetricsWriter, progress: bool = True):
    """A ppo stage: the grpo stage's rollouts, checkpoints and per-step bookkeeping (``stages.common``), GAE over
    the critic's values, and updates of policy and critic together. With ``model.lora`` the policy trains its
    adapters over the frozen base (the KL reference, never copied) and samples with them merged once per
    update, as a grpo stage; the critic stays a full model of its own."""
    a, r = stage.algorithm, stage.rollout
    per_step = a.epochs * a.mini_batches
    updates = stage.steps * per_step
    index = [s.name for s in rt.cfg.stages].index(stage.name) if stage in rt.cfg.stages else 0
    critic = Critic(rt, stage, index)
    run = StageRun(rt, stage, init_params, updates)
    critic_tx = make_optimizer(stage.critic.optimizer, updates)
    run.state = dataclasses.replace(run.state, critic=critic.state(critic.init_params(init_params), critic_tx))
    data = StageData(rt, stage)
    stream = ExampleStream(data.fetch, r.prompts_per_step, rows=rt.host_rows(r.prompts_per_step))
    reference = KLReference(rt, run, init_params)
    host = reference.resume()
    if host is not None:
        stream.set_state(host["data"])
    control = EntropyControl(a, host)
    writer.truncate(stage.name, run.start_step)
    run.curve = stage_curve(rt, stage, writer)
    run.curve.start(run.start_step, run.state.params)
    rollout = Rollout(rt, stage, stream, data, advantage="drgrpo")  # its outcome advantages are replaced by GAE
    chunk = rt.model_cfg.logits_chunk
    step_fn = rt.jit_step(make_ppo_step(rt.mdef, critic.cdef, a, stage.optimizer, run.tx, stage.critic.optimizer,
                                        critic_tx, r.temperature, chunk, group=r.group_size,
                                        warmup_updates=a.critic_warmup_steps * per_step, budget=r.max_new_tokens),
                          run.state)
    value_fn = rt.jit_fn(make_value_fn(critic.cdef, r.group_size))
    ref_fn = rt.jit_fn(make_logprob_fn(rt.base_mdef, r.temperature, chunk, r.group_size)) if a.beta > 0 else None
    slog = StepLog(rt, stage, writer, run, progress)
    try:
        with run.guard() as guard:
            for step in range(run.start_step + 1, stage.steps + 1):
                t0 = timer()
                rng = jax.random.fold_in(run.state.rng, step)
                batch, rm = rollout.collect(run.state.params, rng)
                rewards = batch.pop("rewards")
                t_up = timer()
                b = rt.place_batch({k: batch[k] for k in ("tokens", "valid", "mask")})
                values = np.asarray(dist.gather(value_fn(run.state.critic["params"], b["tokens"], b["valid"],
                                                         b["mask"])))
                values = np.where(batch["mask"], values, 0.0).astype(np.float32)
                if ref_fn is not None:
                    batch["ref_logp"] = dist.gather(ref_fn(reference.params, b["tokens"], b["valid"], b["mask"]))
                batch["adv"], batch["returns"], am = advantages(a, rewards, values, batch)
                batch["old_values"] = values
                batch.update(control.inputs(len(batch["adv"])))
                run.state, um = run_updates(step_fn, run.state, batch, a.epochs, a.mini_batches, rt.place_batch)
                um.update(control.after(um["entropy"]))
                rec = slog.record(step, t0, t_up, rm, am, um, reference.after_step(step))
                rec["tokens_per_s"] = float(batch["mask"].sum()) / max(rec["seconds"], 1e-9)
                slog.write(rec, _samples_with_gae(rollout.samples, r.group_size, batch["adv"], values, batch["mask"]))
                run.end_step(step, guard, lambda w=slog.wall: {"data": stream.get_state(), "wall_seconds": w,
                                                               **control.host_state()})
    finally:  # (a stage that fails, e.g. on reward errors, leaves no reward threads behind in this process)
        rollout.rewarder.close()
    slog.close()
    run.close()
    return run.state.params, {"wall_seconds": slog.wall}
