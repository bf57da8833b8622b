"""Command line: ``reasoning-rl run | eval | plan | export | plot``.

``run CONFIG [--set k=v]... [--run-dir DIR] [--resume] [--no-progress] [--no-plots] [--json]``: run a config's
stages; ends with a table of held-out figures per stage and each stage's gain over where it started.
``eval CHECKPOINT_OR_RUN [--stage S] [--set k=v]... [--budgets 0,8,16] [--extend] [--out DIR]``: held-out
pass@1 / pass@k / maj@k / length per difficulty, and accuracy against thinking budget (JSON and PNG).
``plan CONFIG [--devices N] [--memory-gb G]``: per-device memory of a config on its mesh.
``export RUN_DIR OUT``: a stage checkpoint as a Hugging Face model dir.
``plot RUN_DIR [--out FILE]``: PNG training curves from ``metrics.jsonl`` (``run`` writes them itself).

Exit codes: 0 done, 1 a stage failed (message names why), 2 bad config or input (one line naming the key, or
the file of a data set or model directory), 75 preempted (SIGTERM: the step in flight finished and its
checkpoint is complete, or, outside the step loops, the run stopped at once; rerun with --resume), 130
interrupted (Ctrl-C: the same checkpoint of the step in flight; a second Ctrl-C exits at once).

Compiled programs are cached on disk (``$REASONING_RL_COMPILE_CACHE``, default
``~/.cache/reasoning_rl/xla``; ``off`` disables it), so a restarted or repeated run skips most compiling. Programs
that compile in under half a second are not kept, unless ``$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` says
otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EXIT_FAILED, EXIT_CONFIG, EXIT_PREEMPTED, EXIT_INTERRUPTED = 1, 2, 75, 130


EPILOG = """examples:
  reasoning-rl run configs/quickstart.yaml --set seed=1 --run-dir runs/seed1
  reasoning-rl eval runs/seed1 --stage grpo --budgets 0,16,32
  reasoning-rl plan configs/r1_pipeline.yaml --devices 8 --memory-gb 16
  reasoning-rl export runs/seed1 exported/grpo --stage grpo
  reasoning-rl plot runs/seed1

'reasoning-rl SUBCOMMAND --help' lists a subcommand's options. Exit codes: 0 done, 1 a stage failed,
2 bad config or input, 75 preempted (rerun with --resume).
"""

FULL_DISK_HINT = ("; free space (--set checkpoint.keep=1 keeps fewer checkpoints), or move the run dir elsewhere, and "
                  "run the same command again: it goes on from the newest complete checkpoint (nothing written "
                  "before is lost)")

SET_HELP = "override one config key, e.g. --set seed=1 or --set stages.grpo.steps=50 (repeatable)"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="reasoning-rl", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train language models to reason with RL from verifiable rewards:\n"
                    "cold-start SFT, GRPO, rejection sampling, distillation, evaluation.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="{run,eval,plan,export,plot}",
                            help="one of these (SUBCOMMAND --help for its options):")
    run = sub.add_parser("run",
                         help="train: run a config's stages and evaluate each (resumes an interrupted run)",
                         description="Run a config's stages in order, evaluating each on held-out problems; "
                         "finished stages of the same run dir are skipped, an interrupted one resumes; with "
                         "a stage's steps raised (--set stages.grpo.steps=300) or stages appended, the run "
                         "trains on from where it stands.")
    run.add_argument("config", help="YAML config file (e.g. configs/quickstart.yaml)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help=SET_HELP)
    run.add_argument("--run-dir", default=None, help="where outputs go (default: the config's run_dir)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run in --run-dir")
    run.add_argument("--no-progress", action="store_true",
                     help="no progress bar or periodic progress lines (stage ends are still logged)")
    run.add_argument("--no-plots", action="store_true",
                     help="do not write plots/training_curves.png after each stage (config: log.plots)")
    run.add_argument("--json", action="store_true", help="print the summary as JSON instead of the table")
    ev = sub.add_parser("eval",
                        help="pass@k, maj@k and thinking-budget curves of a stage checkpoint or HF model",
                        description="Held-out pass@1, pass@k, maj@k and length per difficulty of a stage "
                        "checkpoint, optionally with thinking-budget (budget forcing) curves.")
    ev.add_argument("target", help="a run dir, a run's checkpoints/<stage> dir, or a Hugging Face model dir")
    ev.add_argument("--stage", default=None, help="which stage of a run (default: the last finished one)")
    ev.add_argument("--step", type=int, default=None,
                    help="a kept checkpoint step of the stage (default: its final, or newest, one); results go "
                    "under RUN_DIR/eval/<stage>/step_<N>")
    ev.add_argument("--config", default=None, help="task and eval settings for a Hugging Face model dir")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="eval.*, rollout.*, task.* apply to the evaluated stage")
    ev.add_argument("--budgets", default=None, help="thinking budgets, e.g. 0,8,16,32 (eval.budget.budgets)")
    ev.add_argument("--extend", action="store_true", help="also hold thinking up to each budget")
    ev.add_argument("--task", default=None, help="task to budget-force (default: the stage's first)")
    ev.add_argument("--budget-only", action="store_true", help="skip the pass@k evaluation")
    ev.add_argument("--out", default=None, help="output dir (default: RUN_DIR/eval/<stage>; for a Hugging "
                    "Face model dir ./eval_out/<its name>)")
    ev.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    pn = sub.add_parser("plan", help="per-device memory of a config on its mesh, before running it",
                        description="Per-device memory of a config's params, optimizer state, activations "
                        "and "
                        "caches on its mesh, computed from shapes (nothing is allocated).")
    pn.add_argument("config", help="YAML config file")
    pn.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help=SET_HELP)
    pn.add_argument("--devices", type=int, default=None, help="device count (default: this machine's)")
    pn.add_argument("--prompt-len", type=int, default=256, help="prompt tokens per rollout row")
    pn.add_argument("--memory-gb", type=float, default=None, help="per-device memory to check the plan against")
    pn.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ex = sub.add_parser("export", help="write a stage checkpoint as a Hugging Face model dir",
                        description="Write a stage checkpoint as a Hugging Face model dir for transformers "
                        "or "
                        "vLLM (config.json, safetensors, tokenizer files).")
    ex.add_argument("target", help="a run dir or a run's checkpoints/<stage> dir")
    ex.add_argument("out", help="output dir (config.json, safetensors, tokenizer files)")
    ex.add_argument("--stage", default=None, help="which stage (default: the last finished one)")
    ex.add_argument("--step", type=int, default=None,
                    help="a kept checkpoint step of the stage (default: its final, or newest, one)")
    ex.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                    help="dtype of the exported weights (default: the params' dtype)")
    pl = sub.add_parser("plot", help="PNG training curves of a run (run writes them after every stage)",
                        description="PNG training curves (reward, accuracy, length, KL, entropy, loss) of a "
                        "run "
                        "from its metrics.jsonl; run writes the same after every stage.")
    pl.add_argument("run_dir", help="a run dir (holding metrics.jsonl)")
    pl.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/plots/training_curves.png)")
    return ap


def _matplotlib_config_dir() -> None:
    """Matplotlib keeps its font cache in ``~/.config/matplotlib``; where the home directory cannot be written it
    warns in two long lines and rebuilds the cache in a fresh temporary directory every process. Use one
    directory per user under the temporary directory instead, quietly (``MPLCONFIGDIR`` set by the user wins)."""
    from reasoning_rl.config import ConfigError
    from reasoning_rl.paths import check_output_dir

    if "MPLCONFIGDIR" in os.environ:
        return
    try:
        check_output_dir(Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "matplotlib", "")
        return
    except ConfigError:
        pass
    import tempfile

    mine = Path(tempfile.gettempdir()) / f"matplotlib-{os.getuid()}"
    try:
        mine.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        return
    if mine.is_dir() and not mine.is_symlink() and mine.stat().st_uid == os.getuid():  # not someone else's
        os.environ["MPLCONFIGDIR"] = str(mine)


def _load_config(args):
    from reasoning_rl import config as config_lib

    raw = config_lib.load_raw(args.config)
    for o in args.overrides:
        config_lib.apply_override(raw, o)
    if getattr(args, "run_dir", None):
        raw["run_dir"] = args.run_dir
    if getattr(args, "no_plots", False) and isinstance(raw.get("log") or {}, dict):  # (else: from_dict names it)
        raw["log"] = {**(raw.get("log") or {}), "plots": False}  # log.plots off; log is not part of the hash
    return config_lib.from_dict(raw)


def enable_compile_cache() -> None:
    """Persist compiled XLA programs across processes (a resumed run recompiles nothing it compiled before).
    A home directory that cannot be written (read-only on some clusters' compute nodes) turns the cache off
    with one line, instead of a jax warning with a source line from each compile that tries it."""
    where = os.environ.get("REASONING_RL_COMPILE_CACHE", str(Path.home() / ".cache" / "reasoning_rl" / "xla"))
    if where.lower() in ("", "0", "off", "none"):
        return
    from reasoning_rl.config import ConfigError
    from reasoning_rl.paths import check_output_dir

    try:
        check_output_dir(where, "REASONING_RL_COMPILE_CACHE")
    except ConfigError as e:
        logging.getLogger("reasoning_rl").warning("compile cache off: %s; set it to a writable directory, or to off", e)
        return
    import jax

    try:
        jax.config.update("jax_compilation_cache_dir", where)
        if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # the caller's own threshold wins
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    except (AttributeError, ValueError) as e:  # a cache is an optimisation, never a reason to fail
        logging.getLogger("reasoning_rl").warning("compile cache not enabled: %s", e)


def cmd_run(args) -> int:
    import signal

    from reasoning_rl.stages.common import stop_on_sigterm

    # preempted outside a step loop: exit 75 with a line too (the caller's handler is put back afterwards: an
    # in-process caller, such as a test runner, keeps its own)
    previous = signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _run(args) -> int:
    import json

    from reasoning_rl import distributed
    from reasoning_rl.paths import out_of_space
    from reasoning_rl.pipeline import run_pipeline

    cfg = _load_config(args)
    distributed.split_cpu(cfg.mesh.cpu_devices)  # both before anything touches a device
    distributed.initialize(cfg.distributed)
    enable_compile_cache()
    try:
        summary = run_pipeline(cfg, cfg.run_dir, resume=args.resume, progress=not args.no_progress)
    except OSError as e:
        if out_of_space(e) and not e.filename:  # say where: the run dir is what a run fills
            e.filename = str(cfg.run_dir)
        raise
    if args.json:
        print(json.dumps({"run_dir": cfg.run_dir, "summary": summary}, indent=2))
    else:
        from reasoning_rl.report import format_report

        print(format_report(summary, cfg.run_dir))
    return 0


def cmd_eval(args) -> int:
    import json

    from reasoning_rl.paths import check_output_dir
    from reasoning_rl.stages.checkpoint_eval import run_eval

    if args.out:
        check_output_dir(args.out, "--out")
    enable_compile_cache()
    result = run_eval(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        from reasoning_rl.report import format_eval

        print(format_eval(result))
    return 0


def cmd_plan(args) -> int:
    import json

    from reasoning_rl.config import ConfigError
    from reasoning_rl.plan import format_plan, plan

    for flag, value in (("--devices", args.devices), ("--prompt-len", args.prompt_len),
                        ("--memory-gb", args.memory_gb)):
        if value is not None and value <= 0:
            raise ConfigError(f"{flag}: must be positive, got {value:g}")
    p = plan(_load_config(args), args.devices, args.prompt_len, args.memory_gb)
    print(json.dumps(p, indent=2) if args.json else format_plan(p))
    return 0 if p.get("fits", True) else 1


def cmd_export(args) -> int:
    from reasoning_rl.paths import check_output_dir
    from reasoning_rl.stages.checkpoint_eval import run_export

    check_output_dir(args.out, "export")
    print(run_export(args))
    return 0


def cmd_plot(args) -> int:
    from reasoning_rl.config import ConfigError
    from reasoning_rl.metrics import MetricsFileError
    from reasoning_rl.paths import check_output_file
    from reasoning_rl.plot import plot_training

    if not Path(args.run_dir).is_dir():
        raise ConfigError(f"plot: {args.run_dir} is not a directory")
    check_output_file(args.out or Path(args.run_dir) / "plots" / "training_curves.png", "--out")
    try:
        out = plot_training(args.run_dir, args.out)
    except (FileNotFoundError, MetricsFileError) as e:
        raise ConfigError(str(e)) from None
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        rc = _main(argv)
        if rc == EXIT_INTERRUPTED:  # a further Ctrl-C while the interpreter shuts down: exit at once, still 130
            from reasoning_rl.stages.common import exit_on_next_ctrl_c

            exit_on_next_ctrl_c()
        if rc != 0:
            _quiet_teardown()
        return rc
    except KeyboardInterrupt:  # Ctrl-C outside a stage's step loop (start-up, compiling, evaluation)
        import signal

        signal.signal(signal.SIGINT, lambda *_: os._exit(EXIT_INTERRUPTED))  # another one: no clean-up traceback
        print("interrupted (Ctrl-C) outside the training steps (start-up, compiling or evaluation); "
              "--resume continues from the last complete checkpoint", file=sys.stderr)
        _quiet_teardown()
        return EXIT_INTERRUPTED


def _quiet_teardown() -> None:
    """After the one line that says why a run stopped, nothing more: warnings raised while the interpreter tears
    down what the failure abandoned (an aborted asynchronous save's coroutine, a writer's unclosed file) would
    print after it, and a log's last line would no longer be the cause and its fix."""
    import warnings

    warnings.simplefilter("ignore")


def _main(argv: list[str] | None) -> int:
    # a log file (a cluster job, nohup) gets timestamps; a terminal shows the bar and short lines
    fmt = "%(levelname)s %(name)s: %(message)s" if sys.stderr.isatty() else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt, datefmt="%H:%M:%S", stream=sys.stderr)
    # third-party INFO lines (e.g. matplotlib's one-off font cache build) are not the run's story
    for noisy in ("absl", "jax", "orbax", "grain", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _matplotlib_config_dir()
    args = _parser().parse_args(argv)
    from reasoning_rl.checkpoint import CheckpointError, CheckpointUnusable
    from reasoning_rl.config import ConfigError
    from reasoning_rl.data.files import DataError
    from reasoning_rl.distributed import DistributedError
    from reasoning_rl.models.safetensors_io import ModelDirError
    from reasoning_rl.paths import out_of_space
    from reasoning_rl.stages.common import Preempted, StageFailed, Terminated

    try:
        return {"run": cmd_run, "eval": cmd_eval, "plan": cmd_plan, "export": cmd_export,
                "plot": cmd_plot}[args.command](args)
    except CheckpointUnusable as e:
        print(f"checkpoint error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (DataError, ModelDirError) as e:
        print(f"input error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except Terminated as e:
        print(f"preempted: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except Preempted as e:
        import signal

        if e.signum == signal.SIGINT:
            print(f"interrupted: {e}", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"preempted: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except (StageFailed, CheckpointError, DistributedError) as e:
        print(f"error: {e}{_full_disk_hint(args) if out_of_space(e) else ''}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:  # a full disk wherever the run writes (metrics, summary, tokenizer): the same fix
        if not out_of_space(e):
            raise
        print(f"error: {out_of_space(e)}{_full_disk_hint(args)}", file=sys.stderr)
        return EXIT_FAILED


def _full_disk_hint(args) -> str:
    return FULL_DISK_HINT if args.command == "run" else "; free space and run it again"


if __name__ == "__main__":
    sys.exit(main())
