"""Command line: ``reasoning-rl run CONFIG [--set k=v]... [--run-dir DIR] [--resume]``.

Exit codes: 0 done, 1 a stage failed (message names why), 2 bad config or input (one line naming the key),
75 preempted (SIGTERM: the step in flight finished and its checkpoint is complete; rerun with --resume).
"""

from __future__ import annotations

import argparse
import logging
import sys

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
    return ap


def _load_config(args):
    from reasoning_rl import config as config_lib

    raw = config_lib.load_raw(args.config)
    for o in args.overrides:
        config_lib.apply_override(raw, o)
    if getattr(args, "run_dir", None):
        raw["run_dir"] = args.run_dir
    return config_lib.from_dict(raw)


def cmd_run(args) -> int:
    import json

    from reasoning_rl.pipeline import run_pipeline

    cfg = _load_config(args)
    summary = run_pipeline(cfg, cfg.run_dir, resume=args.resume, progress=not args.no_progress)
    brief = {name: {k: v for k, v in s.items() if k in ("pass@1", "greedy_accuracy", "format_rate",
                                                          "mean_response_tokens", "wall_seconds")}
             for name, s in summary.items()}
    print(json.dumps({"run_dir": cfg.run_dir, "summary": brief}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("absl", "jax", "orbax", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = _parser().parse_args(argv)
    from reasoning_rl.checkpoint import CheckpointError
    from reasoning_rl.config import ConfigError
    from reasoning_rl.stages.common import Preempted, StageFailed

    try:
        return {"run": cmd_run}[args.command](args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except Preempted as e:
        print(f"preempted: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except (StageFailed, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
