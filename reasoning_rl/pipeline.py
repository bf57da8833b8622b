"""The pipeline: an ordered list of stages, each starting from its ``init`` and writing a checkpoint plus
``manifest.json``; finished stages are not rerun, an interrupted one resumes from its latest checkpoint.

A stage reference (``init``, ``sampler``, ``teacher``) is an earlier stage of the config, a stage
checkpoint directory of any run (``RUN/checkpoints/<stage>``, read with that run's config), or a Hugging
Face checkpoint directory. Every manifest records where its stage's parameters came from, so any
checkpoint can be traced back through the chain to a fresh initialisation or an outside checkpoint.
"""

from __future__ import annotations

import filecmp
import inspect
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import jax

from reasoning_rl import config as config_lib
from reasoning_rl import distributed as dist
from reasoning_rl.algorithms.steps import TrainState
from reasoning_rl.checkpoint import (
    TMP_MARK,
    CheckpointUnusable,
    StageCheckpointer,
    close_abandoned,
    newest_step,
    read_manifest,
    stage_complete,
    write_manifest,
)
from reasoning_rl.config import Config, ConfigError, StageConfig
from reasoning_rl.inputs import check_inputs
from reasoning_rl.metrics import MetricsWriter
from reasoning_rl.models import lora
from reasoning_rl.paths import RunDirLock, check_run_dir
from reasoning_rl.stages.common import Runtime
from reasoning_rl.stages.evaluate import end_of_stage_point, stage_eval

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


def stored_config(run_dir: Path) -> Config:
    """The config a run was started with (``RUN/config.yaml``); a damaged one is bad input naming the file."""
    path = run_dir / "config.yaml"
    try:
        return config_lib.from_dict(config_lib.load_raw(path, stored=True))
    except ConfigError as e:
        msg = str(e) if str(e).startswith(str(path)) else f"{path}: {e}"
        raise ConfigError(f"{msg} (the run's stored config is damaged: restore it, or use a new --run-dir)") from None


def prepare_run_dir(cfg: Config, run_dir: Path, resume: bool) -> list[str]:
    """Write the resolved config into the run dir (the caller has checked every directory the run writes,
    then made and locked it); return the stages whose step count the run continues with (see
    ``check_continuation``). An existing run is continued for the same config (the hash leaves out where
    the run dir lives, so a copied or moved run continues; its stored config.yaml is left as it is), or for
    one that only changes stage step counts, appends stages or changes checkpoint settings, where the run
    dir allows it (then the new config is stored). Either way the files it reads must be the ones it read
    before (``check_inputs``); every check comes before anything is written."""
    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists():
        old = stored_config(run_dir)
        if old.hash() != cfg.hash() and (not cfg_path.read_bytes().endswith(b"\n")
                                         or "stages" not in config_lib.load_raw(cfg_path, stored=True)):
            raise ConfigError(f"{cfg_path}: the run's stored config looks truncated (it was not written whole); "
                              "restore it, or use a new --run-dir")
        if old.hash() == cfg.hash():
            check_inputs(cfg, run_dir)  # the files it reads are the ones it started with
            return []
        cont = old.continued_by(cfg)
        if cont is None:
            changed = "; ".join(old.differences(cfg))
            if resume:
                raise ConfigError(f"--resume: {run_dir} was started with a different config ({changed}); "
                                  "use a new --run-dir")
            raise ConfigError(f"run_dir: {run_dir} already holds a run with a different config ({changed}); "
                              "use a new --run-dir (or the same config to continue it)")
        lines = check_continuation(old, cfg, run_dir, *cont)
        check_inputs(cfg, run_dir)
        for level, line in lines:
            log.log(level, "%s", line)
        for st in old.stages:  # manifests written before stages had their own hash: theirs where unchanged
            path = _stage_dir(run_dir, st.name) / "manifest.json"
            man = read_manifest(path)
            if (man and man.get("complete") and "stage_hash" not in man and man.get("config_hash") == old.hash()
                    and old.stage_hash(st.name) == cfg.stage_hash(st.name)):
                write_manifest(path, {**man, "stage_hash": cfg.stage_hash(st.name)})
        with open(run_dir / "config_changes.jsonl", "a") as f:  # config.yaml holds the latest: say what changed
            f.write(json.dumps({"at": time.strftime("%Y-%m-%d %H:%M:%S"), "config_hash": [old.hash(), cfg.hash()],
                                "changes": [line for _, line in lines]}) + "\n")
        config_lib.dump(cfg, cfg_path)
        return sorted(cont[0])
    if resume:
        raise ConfigError(f"--resume: {run_dir} holds no run to resume (no config.yaml)")
    check_inputs(cfg, run_dir)
    config_lib.dump(cfg, cfg_path)
    return []


def check_continuation(old: Config, cfg: Config, run_dir: Path, steps: dict[str, tuple[int, int]],
                       appended: list[str], settings: list[str] = ()) -> list[tuple[int, str]]:
    """Whether a run dir started with ``old`` can go on under ``cfg``, which changes only stage step counts
    (``steps``: {name: (old, new)}), appends stages or changes checkpoint settings (``settings``: their
    ``key: old -> new`` lines): what to log, or ConfigError naming the key. Training
    longer (or stopping sooner) is the same stage going on from its newest checkpoint, as if it had been
    started with the new count, when: no later stage has written anything (it would have started from the
    old end), the new count is not below the steps already taken, and the learning rate does not follow a
    schedule over the stage's steps (cosine: the steps taken would not be those of the new length)."""
    lines, names = [], [st.name for st in old.stages]
    for name, (was, now) in steps.items():
        key, sdir = f"stages.{name}.steps: {was} -> {now}", _stage_dir(run_dir, name)
        st = config_lib.stage(cfg, name)
        later = [n for n in names[names.index(name) + 1:] if _has_results(_stage_dir(run_dir, n))]
        if later:
            raise ConfigError(f"{key}: stage {later[0]} started from stage {name} as it was, and "
                              f"{_stage_dir(run_dir, later[0])} holds its results; use a new --run-dir (a stage "
                              f"with init: {sdir} starts from this stage's newest checkpoint)")
        man = read_manifest(sdir / "manifest.json")
        ended = int(man.get("final_step", 0)) if man and man.get("complete") else 0
        taken = newest_step(sdir)
        if now < taken:
            raise ConfigError(f"{key}: stage {name} has already taken {taken} steps ({sdir}); set at least "
                              f"{taken}, or use a new --run-dir")
        cosine = [k for k, o in (("optimizer", st.optimizer),
                                 ("critic.optimizer", st.critic.optimizer if st.critic else None))
                  if o is not None and o.schedule == "cosine"]
        if taken and cosine:
            raise ConfigError(f"{key}: stage {name}'s {cosine[0]}.schedule is cosine over its steps, so the "
                              f"{taken} steps it has taken are not those of a {now}-step stage; keep {was}, or use "
                              f"a new --run-dir (a stage with init: {sdir} starts from its newest checkpoint)")
        if not taken:
            lines.append((logging.INFO, f"run_dir: continuing {run_dir} with {key} (stage {name} not started)"))
            continue
        line = f"run_dir: continuing {run_dir} with {key}: stage {name} goes on from its step-{taken} checkpoint"
        if ended and ended < was:
            line += f"; it stopped early at step {ended} (stop_at_loss), so it stays stopped"
        lines.append((logging.INFO, line))
        r = getattr(st, "rollout", None)
        if ended == was and r is not None and r.mode == "async" and r.max_staleness > 0:
            line = (f"stage {name}: its asynchronous rollouts ended with step {was}, so steps {was + 1}.."
                    f"{min(was + r.max_staleness, now)} are sampled from the step-{was} policy, fresher than in an "
                    f"uninterrupted {now}-step run (up to {r.max_staleness} steps stale)")
            lines.append((logging.WARNING, line))
    if appended:
        lines.append((logging.INFO, f"run_dir: continuing {run_dir} with stage(s) {', '.join(appended)} appended"))
    if settings:
        lines.append((logging.INFO, f"run_dir: continuing {run_dir} with {'; '.join(settings)}"))
    return lines


def _has_results(sdir: Path) -> bool:
    """Whether a stage dir holds anything a stage wrote: a manifest, a checkpoint step, an unfinished one."""
    return sdir.is_dir() and any(p.name == "manifest.json" or p.name.isdigit() or TMP_MARK in p.name
                                 for p in sdir.iterdir())


def resume_point(cfg: Config, run_dir: Path, resume: bool) -> str | None:
    """Read every stage manifest (a damaged one is bad input, before any compute). With ``--resume``: the
    stage that must restore a usable checkpoint (its dir holds steps), or None when the run continues at a
    stage boundary; ConfigError when the run dir holds nothing to resume."""
    mans = {st.name: read_manifest(_stage_dir(run_dir, st.name) / "manifest.json") for st in cfg.stages}
    if not resume:
        return None
    done = []
    for st in cfg.stages:
        if stage_complete(mans[st.name], cfg, st.name) or st.steps == 0:
            done += [st.name] if st.steps else []
            continue
        sdir = _stage_dir(run_dir, st.name)
        names = sorted(p.name for p in sdir.iterdir()) if sdir.is_dir() else []
        if any(n.isdigit() for n in names):
            return st.name
        if not done:
            unfinished = [n for n in names if TMP_MARK in n]
            raise ConfigError(f"--resume: {run_dir} holds nothing to resume: no stage is complete and {sdir} holds "
                              "no complete checkpoint (" + (f"only unfinished writes: {', '.join(unfinished)}"
                                                             if unfinished else "the run stopped before its first")
                              + "); rerun without --resume")
        log.info("--resume: stage(s) %s complete; stage %s starts from its init", ", ".join(done), st.name)
        return None
    log.info("--resume: every stage of %s is complete", run_dir)
    return None


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


LORA_UNSUPPORTED = ("reward_model",)  # stage kinds whose model (a score head's) has no adapters; a ppo stage's
# policy trains adapters and its critic is a full model of its own


def check_refs(cfg: Config) -> list[Path]:
    """Every stage reference resolves (before any compute); returns the outside stage dirs referenced."""
    names = [s.name for s in cfg.stages]
    outside = []
    for i, st in enumerate(cfg.stages):
        if cfg.model.lora and st.kind in LORA_UNSUPPORTED:
            raise ConfigError(f"stages[{i}].kind: a {st.kind} stage does not train LoRA adapters (its score head "
                              "is a model of its own); drop model.lora or run it in a separate config")
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
                read_manifest(Path(ref) / "manifest.json")  # damaged: one line now, not after earlier stages ran
                if (Path(ref).parent.parent / "config.yaml").is_file():
                    stored_config(Path(ref).parent.parent)
    return outside


RL_KINDS = ("grpo", "rejection_sft", "ppo")  # stages that learn from their own policy's samples


def random_start(cfg: Config, i: int) -> str | None:
    """Why stage ``i`` would start from random weights (None if it does not): no ``init``, no earlier stage
    and no ``model.path``, or a chain of inits that ends at a fresh stage training no steps."""
    if cfg.model.path:
        return None
    names = [s.name for s in cfg.stages]
    st = cfg.stages[i]
    ref = st.init if st.init is not None else (names[i - 1] if i > 0 and st.kind != "distill" else None)
    if ref is None:
        return "no init, no earlier stage, no model.path" if st.kind != "distill" else None
    if ref not in names[:i]:
        return None  # a checkpoint directory
    j = names.index(ref)
    if cfg.stages[j].steps > 0 or cfg.stages[j].kind == "distill":
        return None
    why = random_start(cfg, j)
    return f"its init {ref!r} trains 0 steps from random weights" if why else None


def check_random_init(cfg: Config) -> None:
    """An RL stage starting from random weights is almost always a mistake (a cold start that was skipped or
    forgotten: the policy samples noise, every reward is 0, and minutes later pass@1 is 0): refuse it before
    any compute unless the stage says ``allow_random_init: true``; warn in one line when it does."""
    names = [s.name for s in cfg.stages]
    for i, st in enumerate(cfg.stages):
        if st.kind not in RL_KINDS:
            continue
        why = random_start(cfg, i)
        if why is None and st.kind == "rejection_sft" and st.sampler in names[:i]:
            j = names.index(st.sampler)  # the policy it samples from
            why = (f"its sampler {st.sampler!r} trains 0 steps from random weights"
                   if cfg.stages[j].steps == 0 and random_start(cfg, j) else None)
        if why is None:
            continue
        if not st.allow_random_init:
            raise ConfigError(f"stages[{i}].allow_random_init: {st.kind} stage {st.name!r} would start from random "
                              f"weights ({why}); set its init or model.path, or allow_random_init: true if that "
                              "is the point")
        log.warning("stage %s: starts from random weights (%s; allow_random_init: true)", st.name, why)


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


def restore_params(rt: Runtime, sdir: Path, stage: StageConfig, keep: int,
                   step: int | None = None) -> tuple[Any, int]:
    """Final (or latest) params of the stage checkpointed in ``sdir``, straight into ``rt``'s shardings;
    ``step``: that kept checkpoint step instead (ConfigError naming the kept ones when it is not there)."""
    from reasoning_rl.algorithms.steps import make_optimizer

    like = _abstract_state(rt, make_optimizer(stage.optimizer, 1))
    man = read_manifest(sdir / "manifest.json")
    ck = StageCheckpointer(sdir, keep)
    try:
        kept = ck.steps() if step is not None else []
        if step is not None and step not in kept:
            kept = ", ".join(map(str, kept)) or "none"
            raise ConfigError(f"--step: stage {stage.name} has no checkpoint step {step} in {sdir} (kept: {kept}; "
                              "checkpoint.every and checkpoint.keep decide which are kept)")
        got = ck.restore(like, step if step is not None else
                         man["final_step"] if man and man.get("complete") else None)
    finally:
        ck.close()
    if got is None:
        found = "; ".join(f"step {n}: {why}" for n, why in ck.unusable) or "no checkpoint steps"
        raise CheckpointUnusable(f"{sdir}: no usable checkpoint ({found})")
    params = got[1].params
    if rt.lora:  # adapters: joined onto the base the checkpoint names
        ref = got[2].get("lora_base")
        if ref is None:
            raise CheckpointUnusable(f"{sdir}: a LoRA checkpoint without its base reference (host lora_base)")
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
        their = stored_config(run_dir)
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
        self.skipped: dict[str, dict] = {}  # stages of 0 steps (allow_empty): their init's lineage
        self._rts: dict[str, Runtime] = {}

    def runtime(self, stage: StageConfig) -> Runtime:
        """The runtime of the model a stage trains (a distill stage's student and a reward model have their own)."""
        if stage.kind == "reward_model":
            from reasoning_rl.stages.reward_model import RewardRuntime

            if stage.name not in self._rts:
                self._rts[stage.name] = RewardRuntime.of(self.rt, stage)
            return self._rts[stage.name]
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
        if name in self.skipped:
            return self.skipped[name]
        man = read_manifest(_stage_dir(self.rt.run_dir, name) / "manifest.json") or {}
        return {"kind": "stage", "stage": name, "checkpoint": str(_stage_dir(self.rt.run_dir, name)),
                "step": man.get("final_step")}

    def init(self, stage: StageConfig) -> tuple[Any, dict]:
        """Initial params for ``stage`` and its lineage entry."""
        srt = self.runtime(stage)
        if stage.kind == "reward_model":
            from reasoning_rl.stages.reward_model import reward_init

            return reward_init(self, stage, srt)
        if stage.init is not None:
            return self.resolve(stage.init, srt)
        idx = self.names.index(stage.name)
        policies = [s.name for s in self.rt.cfg.stages[:idx] if s.kind != "reward_model"]  # not reward models
        if not policies or stage.kind == "distill":
            return srt.init_params(), {"kind": "fresh", "seed": self.rt.cfg.seed, "model": srt.model_cfg.path}
        prev = policies[-1]
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
        from reasoning_rl.stages.reward_model import helpfulness_before

        before = helpfulness_before(rt, stage, init_params)
        params, info = run_grpo(rt, stage, init_params, writer, progress)
        if before is not None:
            info["helpfulness_before"] = before
    elif stage.kind == "ppo":
        from reasoning_rl.stages.ppo import run_ppo

        params, info = run_ppo(rt, stage, init_params, writer, progress)
    elif stage.kind == "reward_model":
        from reasoning_rl.stages.reward_model import run_reward_model

        params, info = run_reward_model(srt, stage, init_params, writer, progress)
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


def _reward_specs(cfg: Config) -> list[tuple[StageConfig | None, str, Any]]:
    """(stage, key, reward config) of every reward a config names: the top-level section first (stage None;
    stages inherit it, so a bad entry there is named where it was written), then each stage's and each of its
    task sources'."""
    out: list[tuple[StageConfig | None, str, Any]] = [(None, f"rewards[{j}]", r) for j, r in enumerate(cfg.rewards)]
    for i, st in enumerate(cfg.stages):
        out += [(st, f"stages[{i}].rewards[{j}]", r) for j, r in enumerate(st.rewards)]
        out += [(st, f"stages[{i}].tasks[{k}].rewards[{j}]", r)
                for k, src in enumerate(st.tasks) for j, r in enumerate(src.rewards)]
    return out


def check_reward_names(cfg: Config) -> None:
    """Every function reward and rejection verifier resolves and takes its options: a misspelt name, a
    plug-in module that is not importable here or fails to import, or ``kwargs`` the function does not take
    (every call would fail) is one config error naming the key, before any stage computes (not a traceback, or
    a stage stopped on reward errors, after the earlier ones ran)."""
    from reasoning_rl.rewards import registry

    names = [(f"{key}.name", r.name, r.kwargs) for _, key, r in _reward_specs(cfg) if r.kind == "function"]
    names += [(f"stages[{i}].rejection.verifier", st.rejection.verifier, {}) for i, st in enumerate(cfg.stages)
              if st.kind == "rejection_sft" and st.rejection.verifier is not None]
    for key, name, kwargs in names:
        try:
            fn = registry.get(name)
        except (KeyError, TypeError) as e:
            raise ConfigError(f"{key}: {e.args[0]}") from None
        try:  # called as fn(completion, example, **kwargs)
            sig = inspect.signature(fn)
        except (TypeError, ValueError):  # no signature to read (a C function): its calls will tell
            continue
        try:
            sig.bind("", {}, **kwargs)
        except TypeError as e:
            takes = [q.name for q in list(sig.parameters.values())[2:]
                     if q.kind in (q.POSITIONAL_OR_KEYWORD, q.KEYWORD_ONLY)]
            raise ConfigError(f"{key.removesuffix('.name')}.kwargs: reward {name!r} is called as "
                              f"fn(completion, example, **kwargs) and {e} (its options: "
                              f"{', '.join(takes) or 'none'})") from None


def preflight_rewards(cfg: Config) -> dict[str, list[str]]:
    """Every stage's rewards checked before any compute: each name resolves, and a reward's own check passes
    (e.g. a code reward needs a sandbox that isolates here); ConfigError naming the reward otherwise. Returns
    the lines to log at each stage's start."""
    from reasoning_rl.rewards import registry

    check_reward_names(cfg)
    lines: dict[str, list[str]] = {}
    for st, key, r in _reward_specs(cfg):
        if st is None:  # the stages inherit the top-level section: checked as theirs
            continue
        try:
            line = registry.preflight(r.name, r.kwargs)
        except (RuntimeError, ValueError) as e:
            raise ConfigError(f"{key} ({r.name}): {e}") from None
        if line and line not in lines.setdefault(st.name, []):
            lines[st.name].append(line)
    return lines


def run_pipeline(cfg: Config, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
                 devices: list | None = None) -> dict[str, Any]:
    """Run the config's stages (``log.plots``: rewrite ``plots/training_curves.png`` after every stage)."""
    from reasoning_rl import progress as progress_lib
    from reasoning_rl.model_dirs import check_model_dirs

    run_dir = Path(run_dir)
    if not cfg.stages:
        if not cfg.allow_empty:
            raise ConfigError("stages: the config has no stages, so a run would do nothing (set allow_empty: true "
                              "to accept that)")
        log.warning("the config has no stages (allow_empty: true): nothing to run")
        return {}
    reward_lines = preflight_rewards(cfg)
    outside = check_refs(cfg)
    check_model_dirs(cfg)  # before the run dir is written or anything compiled
    check_random_init(cfg)
    progress_lib.configure(every_s=cfg.log.every_s, enabled=progress)
    lock = RunDirLock(run_dir)  # one run at a time writes a run dir (the primary host holds it for all)
    try:
        return _run_stages(cfg, run_dir, resume, devices, progress, reward_lines, outside, lock)
    finally:
        lock.release()


def _run_stages(cfg: Config, run_dir: Path, resume: bool, devices: list | None, progress: bool,
                reward_lines: dict[str, list[str]], outside: list[Path], lock: RunDirLock) -> dict[str, Any]:
    """run_pipeline past its checks: take the run dir (``lock``), write its config, run each stage."""
    from reasoning_rl import report

    created, required, continued, refused = False, None, [], None
    if dist.is_primary():  # several hosts share the run dir; one writes its files
        try:
            check_run_dir(run_dir, [s.name for s in cfg.stages])  # where it writes, before the lock makes any
            created = not run_dir.exists()
            lock.acquire()
            continued = prepare_run_dir(cfg, run_dir, resume)
            required = resume_point(cfg, run_dir, resume)
            adopt_tokenizer(cfg, run_dir, outside)
        except BaseException as e:  # bad input: a run dir this call made is not left behind
            if created:
                lock.release()
                shutil.rmtree(run_dir, ignore_errors=True)
            if not (isinstance(e, ConfigError) and dist.multi()):
                raise
            refused = e  # every host stops with it, below (the others would wait for the primary until a timeout)
    required, continued, refused = dist.from_primary((required, continued, refused))
    if refused is not None:
        raise refused
    dist.barrier("run_dir")
    try:
        rt = Runtime(cfg, run_dir, devices)
    except ConfigError:  # bad input found with the tokenizer (a row too long): leave no half-made run dir
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    from reasoning_rl.stages.ppo import check_critics

    check_critics(rt)  # a critic's model and tokenizer, before any stage computes
    from reasoning_rl.rewards.reward_model import check_reward_models

    check_reward_models(rt)  # reward-model checkpoints: one label, the policy's tokenizer (before compute)
    stages = Stages(rt)
    if dist.is_primary():
        models = {"policy": rt.mdef, **{f"{s.name} student": stages.runtime(s).mdef
                                        for s in cfg.stages if s.kind == "distill"}}
        for line in report.startup_lines(cfg, rt, run_dir, models):
            log.info("%s", line)
    writer = MetricsWriter(run_dir, enabled=dist.is_primary())
    summary_path = run_dir / "summary.json"
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    try:
        for stage in cfg.stages:
            sdir = _stage_dir(run_dir, stage.name)
            srt = stages.runtime(stage)
            if stage.steps == 0:  # allow_empty (validated): the stage passes its init params on
                log.warning("stage %s: 0 steps, skipped (allow_empty: true); what follows starts from its init",
                            stage.name)
                stages.params[stage.name], stages.skipped[stage.name] = stages.init(stage)
                continue
            man = read_manifest(sdir / "manifest.json")
            if stage_complete(man, cfg, stage.name):
                log.info("stage %s already complete: skipped", stage.name)
                stages.params[stage.name] = load_stage_params(srt, stage)
                if stage.kind == "reward_model":
                    rt.reward_models[stage.name] = (srt.mdef, stages.params[stage.name])
                continue
            for line in reward_lines.get(stage.name, []):
                (log.warning if "UNISOLATED" in line else log.info)("stage %s: %s", stage.name, line)
            if man and man.get("complete") and stage.name in continued and dist.is_primary():
                # it goes on past its old end: until it ends again, its newest checkpoint is not the one the
                # manifest names (which retention may delete), so it is not complete (its figures stay)
                _write_manifest(sdir, {**man, "complete": False})
            elif man and man.get("complete"):
                log.warning("stage %s: its manifest is from another config (hash %s, now %s): running it again",
                            stage.name, man.get("config_hash"), cfg.hash())
            rt.require_checkpoint = srt.require_checkpoint = sdir if stage.name == required else None
            try:
                params, info, refs = _run_stage(stages, stage, writer, progress)
            except Exception:  # (a preempted or failed stage: its checkpoint writes end, no thread is left)
                close_abandoned()
                raise
            rt.require_checkpoint = srt.require_checkpoint = None
            if stage.kind == "reward_model":  # scored on held-out pairs, not by sampling
                metrics = info.pop("eval")
                rt.reward_models[stage.name] = (srt.mdef, params)
            else:
                metrics = stage_eval(srt, stage, params,  # and its scored completions, to read
                                     samples_path=run_dir / "held_out" / stage.name / "samples.jsonl")
            end_of_stage_point(stage, writer, info.get("final_step", stage.steps), metrics)  # eval.every's curve
            metrics["wall_seconds"] = info["wall_seconds"]
            if "helpfulness_before" in info:
                from reasoning_rl.stages.reward_model import helpfulness_report

                summary["helpfulness"] = helpfulness_report(rt, stage, info.pop("helpfulness_before"), params,
                                                            metrics, summary)
            extra = {k: info[k] for k in ("rejection", "distill", "grpo_baseline", "stopped_early", "export")
                     if k in info}
            summary[stage.name] = {"kind": stage.kind, "steps": info.get("final_step", stage.steps), **metrics,
                                   **extra}
            gain = report.stage_gain(cfg, stage, metrics, refs["parent"], summary)
            if gain is not None:
                summary[stage.name]["gain"] = gain
            log.info("%s", stage_line(stage.name, summary[stage.name]))
            if dist.is_primary():
                _write_json(summary_path, summary)
                _write_manifest(sdir, {
                "stage": stage.name, "kind": stage.kind, "complete": True,
                "final_step": info.get("final_step", stage.steps),
                **refs, "config_hash": cfg.hash(), "stage_hash": cfg.stage_hash(stage.name),
                "code_version": code_version(),
                "mesh": {str(k): int(v) for k, v in rt.mesh.shape.items()},  # where it ran (not part of the hash)
                "model": srt.model_cfg.path or {k: v for k, v in config_lib._to_plain(srt.model_cfg).items()
                                                if k in ("d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_dim")},
                "held_out": _held_out(metrics),
                **({"data": {k: v for k, v in extra.items() if k != "grpo_baseline"}} if extra else {}),
                })
            if cfg.log.plots and dist.is_primary():
                write_plot(run_dir, stage.name)
            dist.barrier(f"stage {stage.name} done")
            stages.params[stage.name] = params
    finally:
        writer.close()
    return summary


def stage_line(name: str, s: dict) -> str:
    """One log line at a stage's end: its held-out figures and its gain over where it started."""
    from reasoning_rl.progress import duration

    if "pass@1" not in s and "pair_accuracy" in s:  # a reward model: scored on held-out preference pairs
        parts = [f"stage {name} evaluated: held-out pair accuracy {s['pair_accuracy']:.3f}"]
    else:
        parts = [f"stage {name} evaluated: pass@1 {s.get('pass@1', float('nan')):.3f}"]
    if "greedy_accuracy" in s:
        parts.append(f"greedy {s['greedy_accuracy']:.3f}")
    g = s.get("gain") or {}
    if "pass@1" in g:
        parts.append(f"gain over {g['over']}: pass@1 {g['pass@1']:+.3f}")
    if "wall_seconds" in s:
        parts.append(f"trained in {duration(s['wall_seconds'])}")
    return " | ".join(parts)


def write_plot(run_dir: Path, stage: str) -> Path | None:
    """The training-curve plot of every stage so far; a plot that fails is a warning, never a failed run."""
    from reasoning_rl.plot import plot_training

    try:
        out = plot_training(run_dir)
    except Exception as e:  # noqa: BLE001 - shown, and the run's results stand without the plot
        log.warning("stage %s: training-curve plot not written: %s: %s", stage, type(e).__name__, e)
        return None
    log.info("stage %s: training curves written to %s", stage, out)
    return out


def _write_manifest(sdir: Path, manifest: dict) -> None:
    write_manifest(sdir / "manifest.json", manifest)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False))
    os.replace(tmp, path)
