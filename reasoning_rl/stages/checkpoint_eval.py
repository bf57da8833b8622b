"""``reasoning-rl eval``: evaluate any stage checkpoint after the fact, with test-time-compute scaling.

The target is a run dir (its last finished stage, or ``--stage``), one of its ``checkpoints/<stage>`` dirs
(an interrupted stage is read at its latest step), or a Hugging Face model dir with ``--config`` for the
task and eval settings. The run's own resolved config and tokenizer are used; ``--set eval.…`` (or
``rollout.…``, ``task.…``) overrides apply to the evaluated stage. Results go to ``RUN_DIR/eval/<stage>/``:
``eval.json`` (pass@1, pass@k, maj@k, length per difficulty, per task), ``samples.jsonl`` (every scored
completion: prompt, completion, extracted and reference answer, reward components, correct, token count,
whether it hit the token limit; ``greedy`` marks the greedy ones) and, with budgets,
``budget_forcing.json`` (``{"budgets": [...], "accuracy": [...], ...}``) and ``budget_forcing.png``.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

from reasoning_rl import config as config_lib
from reasoning_rl import distributed as dist
from reasoning_rl.checkpoint import read_manifest
from reasoning_rl.config import STAGE_SECTIONS, Config, ConfigError, StageConfig, eval_sampling
from reasoning_rl.evaluation import budget_curve
from reasoning_rl.model_dirs import ModelDirError, check_model_dirs
from reasoning_rl.paths import check_output_dir

from .common import Runtime
from .evaluate import stage_eval
from .sources import Source, stage_sources

log = logging.getLogger("reasoning_rl")


def _locate(target: str, stage: str | None) -> tuple[Path, str | None, str]:
    """(run dir, stage name or None for "the last finished", kind) of an eval target."""
    p = Path(target)
    if not p.exists():
        raise ModelDirError(f"{p}: no such directory (the eval target)")
    if (p / "config.yaml").is_file():
        return p, stage, "run"
    if p.is_dir() and (p.parent.parent / "config.yaml").is_file() and p.parent.name == "checkpoints":
        man = read_manifest(p / "manifest.json") or {}
        return p.parent.parent, man.get("stage", p.name), "stage"
    if (p / "config.json").is_file():
        return p, stage, "hf"
    raise ConfigError(f"eval: {target} is not a run dir (config.yaml), a stage checkpoint dir "
                      "(RUN/checkpoints/<stage>) or a Hugging Face model dir (config.json)")


def _last_finished(cfg: Config, run_dir: Path) -> str:
    done = [s.name for s in cfg.stages
            if (read_manifest(run_dir / "checkpoints" / s.name / "manifest.json") or {}).get("complete")]
    if not done:
        started = [s.name for s in cfg.stages if (run_dir / "checkpoints" / s.name).is_dir()]
        if not started:
            raise ConfigError(f"eval: {run_dir} has no stage checkpoints yet")
        return started[-1]
    return done[-1]


def _config(raw: dict, stage: str | None, overrides: list[str]) -> Config:
    """Apply overrides; section overrides (eval.*, rollout.*, …) reach the evaluated stage too."""
    names = [s.get("name") for s in raw.get("stages", []) if isinstance(s, dict)]
    for o in overrides:
        config_lib.apply_override(raw, o)
        key = o.split("=", 1)[0].strip()
        if key.split(".")[0] in STAGE_SECTIONS and stage in names:
            config_lib.apply_override(raw, f"stages.{stage}.{o}")
    return config_lib.from_dict(raw)


def load_target(args) -> tuple[Runtime, StageConfig, Any, Path, Runtime, int | None]:
    """Runtime, stage config, params, output dir, the runtime of the evaluated model, and the checkpoint step
    evaluated (None: a Hugging Face model dir)."""
    from reasoning_rl.pipeline import Stages, check_reward_names, restore_params

    run_dir, stage_name, kind = _locate(args.target, args.stage)
    overrides = list(args.overrides)
    if args.budgets:
        try:
            budgets = [int(x) for x in args.budgets.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--budgets: expected comma-separated integers, got {args.budgets!r}") from None
        overrides.append(f"eval.budget.budgets={budgets}")
    if args.extend:
        overrides.append("eval.budget.extend=true")
    step = getattr(args, "step", None)
    if kind == "hf":
        if not args.config:
            raise ConfigError("eval: a Hugging Face model dir needs --config for the task and eval settings")
        if step is not None:
            raise ConfigError(f"--step: {args.target} is a Hugging Face model dir, which has no checkpoint steps")
        raw = config_lib.load_raw(args.config)
        raw.setdefault("model", {})["path"] = str(run_dir)
    else:
        raw = config_lib.load_raw(run_dir / "config.yaml", stored=True)
    if stage_name is None:
        base = config_lib.from_dict(copy.deepcopy(raw))
        if not base.stages:
            raise ConfigError("eval: the config has no stages (its eval settings live in a stage)")
        stage_name = _last_finished(base, run_dir) if kind != "hf" else base.stages[-1].name
    cfg = _config(raw, stage_name, overrides)
    try:
        stage = config_lib.stage(cfg, stage_name)
    except KeyError:
        raise ConfigError(f"--stage: no stage {stage_name!r} in {run_dir}") from None
    if stage.kind == "reward_model":
        raise ConfigError(f"eval: stage {stage.name!r} is a reward model (its held-out pair accuracy is in "
                          "summary.json); evaluate a policy stage")
    check_model_dirs(cfg, weights=kind == "hf")  # a run's own parameters come from its checkpoints
    check_reward_names(cfg)  # the samples' reward components use the stage's rewards
    # a model dir is not ours to write into (often read-only, shared): its results go under ./eval_out/<dir>
    out = Path(args.out) if args.out else (run_dir / "eval" / stage.name / (f"step_{step}" if step else "")
                                           if kind != "hf" else Path("eval_out") / run_dir.resolve().name)
    check_output_dir(out, "eval output dir")  # before any compute
    try:  # the run's CPU device split, if JAX has not started yet (an evaluation runs on what there is)
        dist.split_cpu(cfg.mesh.cpu_devices)
    except dist.DistributedError as e:
        log.warning("%s", e)
    rt = Runtime(cfg, run_dir if kind != "hf" else out)
    srt = Stages(rt).runtime(stage)
    if kind == "hf":
        params, step = srt.init_params(), None
    else:
        params, step = restore_params(srt, run_dir / "checkpoints" / stage.name, stage, cfg.checkpoint.keep, step)
    return rt, stage, params, out, srt, step


def budget_source(rt: Runtime, stage: StageConfig, task: str | None) -> Source:
    sources = {s.name: s for s in stage_sources(stage)}
    if task is None:
        return Source(rt, next(iter(sources.values())))
    if task not in sources:
        raise ConfigError(f"--task: stage {stage.name} has no task {task!r} (has: {', '.join(sources)})")
    return Source(rt, sources[task])


def run_eval(args) -> dict[str, Any]:
    from reasoning_rl import progress
    from reasoning_rl.plot import plot_budget
    from reasoning_rl.rewards import registry
    from reasoning_rl.rewards.format import format_fn_for

    rt, stage, params, out, srt, step = load_target(args)
    progress.configure(every_s=rt.cfg.log.every_s)  # off a terminal: a progress line this often
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"target": str(args.target), "stage": stage.name,
                              **({"step": step} if step is not None else {})}
    if not args.budget_only:
        result["held_out"] = stage_eval(srt, stage, params, samples_path=out / "samples.jsonl")
    b = stage.eval.budget
    if b.budgets:
        src = budget_source(rt, stage, args.task)
        examples = [{**e.as_dict(), "task": src.name} for e in src.task.held_out(stage.eval.num_problems)]
        curve = budget_curve(
            srt.mdef, params, rt.tok, examples, b.budgets, correct_fn=registry.get(src.correctness),
            format_fn=format_fn_for(src.rewards), extend=b.extend, continuation=b.continuation,
            answer_tokens=b.answer_tokens, samples=b.samples, greedy=b.greedy, **eval_sampling(stage),
            stop_ids=rt.stop_ids(stage.rollout), stop_table=rt.stop_table(stage.rollout),
            batch_rows=stage.eval.batch_size,
            seed=rt.cfg.seed + 23, name=f"{stage.name}: budget forcing ({src.name})")
        curve = {**curve, "task": src.name, "stage": stage.name}
        (out / "budget_forcing.json").write_text(json.dumps(curve, indent=2))
        plot_budget(curve, out / "budget_forcing.png",
                    title=f"{stage.name} on {src.name}: accuracy vs thinking budget")
        result["budget_forcing"] = curve
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    result["out"] = str(out)
    return result


def run_export(args) -> Path:
    """Write a run's stage checkpoint as a Hugging Face model dir (config.json + safetensors + tokenizer), for
    transformers or vLLM to serve."""
    import shutil

    from reasoning_rl.models import save_pretrained
    from reasoning_rl.pipeline import Stages, restore_params

    run_dir, stage_name, kind = _locate(args.target, args.stage)
    if kind == "hf":
        raise ConfigError(f"export: {args.target} is a Hugging Face model dir already")
    raw = config_lib.load_raw(run_dir / "config.yaml", stored=True)
    cfg = config_lib.from_dict(raw)
    check_model_dirs(cfg, weights=False)  # the parameters come from the run's checkpoints
    stage_name = stage_name or _last_finished(cfg, run_dir)
    try:
        stage = config_lib.stage(cfg, stage_name)
    except KeyError:
        raise ConfigError(f"--stage: no stage {stage_name!r} in {run_dir}") from None
    try:  # the run's CPU device split (its mesh needs it), as eval does
        dist.split_cpu(cfg.mesh.cpu_devices)
    except dist.DistributedError as e:
        log.warning("%s", e)
    rt = Runtime(cfg, run_dir)
    srt = Stages(rt).runtime(stage)
    params, step = restore_params(srt, run_dir / "checkpoints" / stage.name, stage, cfg.checkpoint.keep,
                                  getattr(args, "step", None))
    source = srt.model_cfg.path
    if stage.kind == "reward_model":  # a *ForSequenceClassification checkpoint
        from reasoning_rl.models import save_reward_model

        out = save_reward_model(srt.mdef, params, args.out, pad_token_id=rt.tok.pad_id, dtype=args.dtype,
                                tokenizer_from=source)
    else:
        out = save_pretrained((srt.mdef, params), args.out, dtype=args.dtype, tokenizer_from=source,
                              merge_lora=True)  # a LoRA stage is exported with its adapters merged
    if source is None and (run_dir / "tokenizer.model").is_file():  # the run's own sentencepiece model
        shutil.copy2(run_dir / "tokenizer.model", Path(out) / "tokenizer.model")
    if stage.kind == "ppo":  # and its critic, as a value model beside the policy
        from reasoning_rl.models.value import save_value_model
        from reasoning_rl.stages.ppo import restore_critic

        critic, cparams = restore_critic(rt, stage, run_dir / "checkpoints" / stage.name, cfg.checkpoint.keep, step)
        csrc = stage.critic_model.path if stage.critic_model is not None else source
        cout = save_value_model(critic.cdef, cparams, Path(out) / "critic", dtype=args.dtype, tokenizer_from=csrc)
        if csrc is None and (run_dir / "tokenizer.model").is_file():
            shutil.copy2(run_dir / "tokenizer.model", cout / "tokenizer.model")
    return Path(out)
