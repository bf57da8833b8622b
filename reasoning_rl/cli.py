"""Command line: ``reasoning-rl run | eval | plot``.

``run CONFIG [--set k=v]... [--run-dir DIR] [--resume]``: run a config's stages.
``eval CHECKPOINT_OR_RUN [--stage S] [--set k=v]... [--budgets 0,8,16] [--extend] [--out DIR]``: held-out
pass@1 / pass@k / maj@k / length per difficulty, and accuracy against thinking budget (JSON and PNG).
``plot RUN_DIR [--out FILE]``: PNG training curves from ``metrics.jsonl``.

Exit codes: 0 done, 1 a stage failed (message names why), 2 bad config or input (one line naming the key),
75 preempted (SIGTERM: the step in flight finished and its checkpoint is complete; rerun with --resume).

Compiled programs are cached on disk (``$REASONING_RL_COMPILE_CACHE``, default
``~/.cache/reasoning_rl/xla``; ``off`` disables it), so a restarted or repeated run skips most compiling.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EXIT_FAILED, EXIT_CONFIG, EXIT_PREEMPTED = 1, 2, 75


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="reasoning-rl", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a config's stages (resumes a run dir holding the same config)")
    run.add_argument("config")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--run-dir", default=None)
    run.add_argument("--resume", action="store_true", help="continue an interrupted run in --run-dir")
    run.add_argument("--no-progress", action="store_true")
    ev = sub.add_parser("eval", help="evaluate a run's stage checkpoint (or an HF model with --config)")
    ev.add_argument("target", help="a run dir, a run's checkpoints/<stage> dir, or a Hugging Face model dir")
    ev.add_argument("--stage", default=None, help="which stage of a run (default: the last finished one)")
    ev.add_argument("--config", default=None, help="task and eval settings for a Hugging Face model dir")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="eval.*, rollout.*, task.* apply to the evaluated stage")
    ev.add_argument("--budgets", default=None, help="thinking budgets, e.g. 0,8,16,32 (eval.budget.budgets)")
    ev.add_argument("--extend", action="store_true", help="also hold thinking up to each budget")
    ev.add_argument("--task", default=None, help="task to budget-force (default: the stage's first)")
    ev.add_argument("--budget-only", action="store_true", help="skip the pass@k evaluation")
    ev.add_argument("--out", default=None, help="output dir (default: RUN_DIR/eval/<stage>)")
    pn = sub.add_parser("plan", help="per-device memory of a config on its mesh, from abstract shapes")
    pn.add_argument("config")
    pn.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    pn.add_argument("--devices", type=int, default=None, help="device count (default: this machine's)")
    pn.add_argument("--prompt-len", type=int, default=256, help="prompt tokens per rollout row")
    pn.add_argument("--memory-gb", type=float, default=None, help="per-device memory to check the plan against")
    pn.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ex = sub.add_parser("export", help="write a stage checkpoint as a Hugging Face model dir")
    ex.add_argument("target", help="a run dir or a run's checkpoints/<stage> dir")
    ex.add_argument("out", help="output dir (config.json, safetensors, tokenizer files)")
    ex.add_argument("--stage", default=None, help="which stage (default: the last finished one)")
    ex.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="default: the params' dtype")
    pl = sub.add_parser("plot", help="PNG training curves of a run")
    pl.add_argument("run_dir")
    pl.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/plots/training_curves.png)")
    return ap


def _load_config(args):
    from reasoning_rl import config as config_lib

    raw = config_lib.load_raw(args.config)
    for o in args.overrides:
        config_lib.apply_override(raw, o)
    if getattr(args, "run_dir", None):
        raw["run_dir"] = args.run_dir
    return config_lib.from_dict(raw)


def enable_compile_cache() -> None:
    """Persist compiled XLA programs across processes (a resumed run recompiles nothing it compiled before)."""
    where = os.environ.get("REASONING_RL_COMPILE_CACHE", str(Path.home() / ".cache" / "reasoning_rl" / "xla"))
    if where.lower() in ("", "0", "off", "none"):
        return
    import jax

    try:
        jax.config.update("jax_compilation_cache_dir", where)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    except (AttributeError, ValueError) as e:  # a cache is an optimisation, never a reason to fail
        logging.getLogger("reasoning_rl").warning("compile cache not enabled: %s", e)


def cmd_run(args) -> int:
    import json

    from reasoning_rl.pipeline import run_pipeline

    cfg = _load_config(args)
    from reasoning_rl import distributed

    distributed.split_cpu(cfg.mesh.cpu_devices)  # both before anything touches a device
    distributed.initialize(cfg.distributed)
    enable_compile_cache()
    summary = run_pipeline(cfg, cfg.run_dir, resume=args.resume, progress=not args.no_progress)
    brief = {name: {k: v for k, v in s.items() if k in ("pass@1", "greedy_accuracy", "format_rate",
                                                          "mean_response_tokens", "wall_seconds", "pair_accuracy")
                    or name == "helpfulness"}
             for name, s in summary.items()}
    print(json.dumps({"run_dir": cfg.run_dir, "summary": brief}, indent=2))
    return 0


def cmd_eval(args) -> int:
    import json

    from reasoning_rl.stages.checkpoint_eval import run_eval

    enable_compile_cache()
    result = run_eval(args)
    print(json.dumps(result, indent=2))
    return 0


def cmd_plan(args) -> int:
    import json

    from reasoning_rl.plan import format_plan, plan

    p = plan(_load_config(args), args.devices, args.prompt_len, args.memory_gb)
    print(json.dumps(p, indent=2) if args.json else format_plan(p))
    return 0 if p.get("fits", True) else 1


def cmd_export(args) -> int:
    from reasoning_rl.stages.checkpoint_eval import run_export

    print(run_export(args))
    return 0


def cmd_plot(args) -> int:
    from reasoning_rl.plot import plot_training

    try:
        out = plot_training(args.run_dir, args.out)
    except FileNotFoundError as e:
        from reasoning_rl.config import ConfigError

        raise ConfigError(str(e)) from None
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("absl", "jax", "orbax", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = _parser().parse_args(argv)
    from reasoning_rl.checkpoint import CheckpointError
    from reasoning_rl.config import ConfigError
    from reasoning_rl.data.files import DataError
    from reasoning_rl.distributed import DistributedError
    from reasoning_rl.stages.common import Preempted, StageFailed

    try:
        return {"run": cmd_run, "eval": cmd_eval, "plan": cmd_plan, "export": cmd_export,
                "plot": cmd_plot}[args.command](args)
    except DataError as e:
        print(f"input error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except Preempted as e:
        print(f"preempted: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except (StageFailed, CheckpointError, DistributedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
