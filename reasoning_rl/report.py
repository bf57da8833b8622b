"""What a run tells its user: the start-up facts, each stage's gain over its starting checkpoint, and the
end-of-run table.

The gain of a stage is the change in its held-out figures over those of the checkpoint it started from,
taken from ``summary.json`` when that checkpoint is an earlier stage of the same run evaluated the same way
(same problems, samples, temperature, token limit; same tasks for the top-level figures, and per task in a
config with several). It is stored in ``summary.json`` under ``gain`` and printed in the table, so "what did
RL add over the cold start" is answered without arithmetic. A start that cannot be compared (an outside
checkpoint, other eval settings) says why instead.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from reasoning_rl.config import Config, StageConfig, _to_plain, eval_sampling
from reasoning_rl.progress import duration

GAIN_SKIP = {"num_problems", "samples_per_problem", "temperature", "wall_seconds"}


def _metric_order(key: str) -> tuple:
    m = re.fullmatch(r"(pass|maj)@(\d+)", key)
    if m:
        return (0 if m.group(1) == "pass" else 1, int(m.group(2)))
    return (2, key)


def _settings(stage: StageConfig) -> str:
    """How a stage's held-out figures are sampled (besides the tasks): problems, samples, k, temperature,
    filters, token limit, stop rule. Not the budget curve's settings or the held-out curve's (``eval.every``,
    ``eval.every_problems``): neither changes the end-of-stage figures."""
    from reasoning_rl.config import EVAL_SCHEDULE

    ev = _to_plain(stage.eval)
    for k in ("budget", *EVAL_SCHEDULE):
        ev.pop(k, None)
    r = stage.rollout
    return json.dumps({"eval": ev, **eval_sampling(stage),
                       "max_new_tokens": stage.eval.max_new_tokens or r.max_new_tokens,
                       "stop_at_answer": r.stop_at_answer, **({"stop": list(r.stop)} if r.stop else {})},
                      sort_keys=True, default=str)


def _task_specs(cfg: Config, stage: StageConfig) -> dict[str, str]:
    """Each task a stage is evaluated on (its own first, then the config's others, as ``stage_eval`` does),
    with what decides it: the task config and the correctness rewards it may be scored by."""
    from reasoning_rl.stages.sources import CORRECTNESS_REWARDS, config_sources, stage_sources

    out: dict[str, str] = {}
    for s in stage_sources(stage) + config_sources(cfg):
        if s.name not in out:
            correctness = [x.name for x in s.rewards if x.name in CORRECTNESS_REWARDS]
            out[s.name] = json.dumps([_to_plain(s.task), correctness], sort_keys=True, default=str)
    return out


def stage_gain(cfg: Config, stage: StageConfig, figures: dict, parent: dict, summary: dict) -> dict | None:
    """The ``gain`` entry of ``stage``: its figures minus its starting checkpoint's, or why there are none.
    None for a stage that starts from fresh weights (there is nothing to gain over).

    The top-level figures are compared when both stages were scored the same way on the same own tasks; in a
    config with several tasks, every task both were scored on the same way is compared under ``tasks``."""
    from reasoning_rl.config import stage as stage_of
    from reasoning_rl.stages.sources import stage_sources

    kind = parent.get("kind")
    if kind == "fresh":
        return None
    if kind != "stage":
        what = "a Hugging Face checkpoint" if kind == "hf" else "a checkpoint of another run"
        return {"over": parent.get("path") or parent.get("checkpoint"),
                "not_comparable": f"started from {what}, which this run did not evaluate"}
    name = parent["stage"]
    before = summary.get(name)
    if before is None:
        return {"over": name, "not_comparable": f"stage {name} has no figures in summary.json"}
    try:
        prev = stage_of(cfg, name)
    except KeyError:
        return {"over": name, "not_comparable": f"stage {name} is not in this config"}
    if _settings(prev) != _settings(stage):
        return {"over": name, "not_comparable": f"stage {name} was evaluated with other eval settings"}
    mine, theirs = _task_specs(cfg, stage), _task_specs(cfg, prev)
    own = [s.name for s in stage_sources(stage)]
    out: dict[str, Any] = {"over": name}
    if own == [s.name for s in stage_sources(prev)] and all(mine[t] == theirs.get(t) for t in own):
        out.update(deltas(figures, before))
    a, b = figures.get("tasks") or {}, before.get("tasks") or {}
    per = {t: deltas(a[t], b[t]) for t in a if t in b and mine.get(t) == theirs.get(t)}
    if per:
        out["tasks"] = per
    if len(out) == 1:
        out["not_comparable"] = f"stage {name} was evaluated on other tasks"
    return out


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def deltas(after: dict, before: dict) -> dict[str, float]:
    """``after - before`` for every top-level held-out figure both have (pass@k, maj@k, greedy accuracy,
    format rate, mean response length)."""
    out = {}
    for k in sorted(after, key=_metric_order):
        a, b = after[k], before.get(k)
        if k in GAIN_SKIP or not _is_num(a) or not _is_num(b):
            continue
        if math.isfinite(a) and math.isfinite(b):
            out[k] = float(a) - float(b)
    return out


# --------------------------------------------------------------------------- the end-of-run table


def _num(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def _signed(v: Any) -> str:
    return f"{v:+.3f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def _gain_cell(g: dict) -> str:
    if not g:
        return "-"
    if "not_comparable" in g:
        return f"n/a: {g['not_comparable']}"
    if "pass@1" not in g:
        return f"per task below (over {g['over']})" if g.get("tasks") else "-"
    return f"{_signed(g.get('pass@1'))} / {_signed(g.get('greedy_accuracy'))} over {g['over']}"


def _columns(summary: dict) -> list[str]:
    keys: set[str] = set()
    for s in summary.values():
        keys |= {k for k in s if re.fullmatch(r"(pass|maj)@\d+", k)}
    return sorted(keys, key=_metric_order)


def _row(name: str, s: dict, cols: list[str], steps: str, wall: str, gain: str) -> list[str]:
    return ([name, s.get("kind", ""), steps] + [_num(s.get(c)) for c in cols]
            + [_num(s.get("greedy_accuracy")), _num(s.get("format_rate")),
               _num(s.get("mean_response_tokens"), 1), wall, gain])


def format_table(summary: dict) -> str:
    """One row per stage (held-out pass@1, pass@k, maj@k, greedy accuracy, format rate, mean response length,
    wall time, gain in pass@1 / greedy accuracy over the starting checkpoint), plus a row per task of a
    multi-task stage and one for a distill stage's GRPO baseline."""
    cols = _columns(summary)
    head = ["stage", "kind", "steps"] + cols + ["greedy", "format", "length", "wall", "gain pass@1 / greedy"]
    rows = []
    for name, s in summary.items():
        if not isinstance(s, dict) or "kind" not in s:  # e.g. the pipeline's "helpfulness" object
            continue
        steps = str(s.get("steps", "-"))
        if isinstance(s.get("stopped_early"), dict):
            steps = f"{s['stopped_early']['step']} (stopped early)"
        g = s.get("gain") or {}
        wall = duration(s["wall_seconds"]) if isinstance(s.get("wall_seconds"), (int, float)) else "-"
        cell = _gain_cell(g) if s.get("kind") != "reward_model" else \
            f"held-out pair accuracy {_num(s.get('pair_accuracy'))}"
        rows.append(_row(name, s, cols, steps, wall, cell))
        for task, t in (s.get("tasks") or {}).items():
            tg = (g.get("tasks") or {}).get(task)
            cell = _gain_cell({"over": g["over"], **tg}) if tg else ""
            rows.append(_row(f"  {task}", {**t, "kind": ""}, cols, "", "", cell))
        b = s.get("grpo_baseline")
        if isinstance(b, dict):
            bw = duration(b["wall_seconds"]) if isinstance(b.get("wall_seconds"), (int, float)) else "-"
            rows.append(_row("  grpo baseline", {**b, "kind": "grpo"}, cols, str(b.get("steps", "-")), bw,
                             ""))
    return _table(head, rows, numeric=set(range(3, len(head) - 1)))


def _table(head: list[str], rows: list[list[str]], numeric: set[int]) -> str:
    """Plain aligned columns (numbers right-aligned): readable in a log file as on a terminal."""
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]

    def fmt(r):
        return "  ".join((c.rjust(w) if i in numeric else c.ljust(w))
                         for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]).rstrip()


def format_eval(result: dict) -> str:
    """What ``reasoning-rl eval`` prints (``--json`` prints ``result`` itself): the held-out figures (per task
    for several), pass@1 by difficulty, the accuracy-against-thinking-budget curve, and the files written."""
    lines: list[str] = []
    stage = result.get("stage", "")
    held = result.get("held_out")
    if isinstance(held, dict):
        tasks = held.get("tasks") or {}
        first = next(iter(tasks.values()), held)
        filters = "".join(f", {k.replace('_', '-')} {first[k]}" for k in ("top_k", "top_p", "min_p") if k in first)
        lines.append(f"held-out evaluation of {stage} ({result.get('target')}): {first.get('num_problems')} "
                     f"problems x {first.get('samples_per_problem')} samples at T={first.get('temperature')}{filters}")
        cols = _columns({"h": held, **tasks})
        head = ["stage / task"] + cols + ["greedy", "format", "length"]

        def row(name: str, s: dict) -> list[str]:
            return ([name] + [_num(s.get(c)) for c in cols] + [_num(s.get("greedy_accuracy")),
                    _num(s.get("format_rate")), _num(s.get("mean_response_tokens"), 1)])

        rows = [row(stage + (" (mean of its own tasks)" if tasks else ""), held)]
        rows += [row(f"  {t}", v) for t, v in tasks.items()]
        lines += [_table(head, rows, numeric=set(range(1, len(head)))), ""]
        diff = [(t, d, v) for t, s in (tasks.items() if tasks else [("", held)])
                for d, v in (s.get("by_difficulty") or {}).items()]
        if diff:
            head = (["task"] if tasks else []) + ["difficulty", "problems", "pass@1", "length"]
            rows = [([t] if tasks else []) + [str(d), str(v.get("n", "-")), _num(v.get("pass@1")),
                                              _num(v.get("mean_response_tokens"), 1)] for t, d, v in diff]
            lines += [_table(head, rows, numeric={len(head) - 3, len(head) - 2, len(head) - 1}), ""]
    curve = result.get("budget_forcing")
    if isinstance(curve, dict):
        how = "greedy" if curve.get("greedy") else f"{curve.get('samples')} samples"
        lines.append(f"accuracy against thinking budget ({curve.get('task')}, {curve.get('num_problems')} "
                     f"problems, {how}{', thinking extended to the budget' if curve.get('extend') else ''}):")
        head = ["budget", "accuracy", "thinking tokens", "forced", "format"]
        rows = [[str(b), _num(a), _num(t, 1), _num(f), _num(fr)] for b, a, t, f, fr in
                zip(curve["budgets"], curve["accuracy"], curve["mean_think_tokens"], curve["forced_rate"],
                    curve["format_rate"])]
        lines += [_table(head, rows, numeric=set(range(5))), ""]
    out = Path(result.get("out", "."))
    written = [n for n in ("eval.json", "samples.jsonl", "budget_forcing.json", "budget_forcing.png")
               if (out / n).is_file()]
    lines.append(f"written: {out}{os.sep} ({', '.join(written)})")
    return "\n".join(lines)


def format_report(summary: dict, run_dir: str | Path) -> str:
    """The end-of-run report: the table, then where the summary, the plot and TensorBoard's events are."""
    run_dir = Path(run_dir)
    lines = [f"held-out results ({run_dir}):", format_table(summary), ""]
    h = summary.get("helpfulness")
    if isinstance(h, dict):
        lines[-1:-1] = [f"helpfulness: reward-model pair accuracy {_num(h.get('pair_accuracy'))}; hidden judge "
                        f"{_num(h.get('judge_before'))} -> {_num(h.get('judge_after'))}; arithmetic pass@1 "
                        f"{_num(h.get('arithmetic_before'))} -> {_num(h.get('arithmetic_after'))}"]
    plot = run_dir / "plots" / "training_curves.png"
    tb = run_dir / "tensorboard"
    lines.append(f"summary:     {run_dir / 'summary.json'}")
    lines.append(f"plots:       {plot}" if plot.is_file() else "plots:       none written (log.plots off, or "
                 f"see the warning above); `reasoning-rl plot {run_dir}` writes them")
    lines.append(f"tensorboard: tensorboard --logdir {tb}" if tb.is_dir() else "tensorboard: no event files "
                 "(tensorboardX is not installed)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- start-up


def param_count(mdef) -> int:
    import jax
    import numpy as np

    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(mdef.abstract_params())))


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"


def resume_point(cfg: Config, run_dir: Path) -> str:
    """Where this invocation starts: finished stages it skips and the step the first unfinished one resumes
    from (its newest checkpoint step on disk; a damaged one falls back to the one before, with a warning)."""
    from reasoning_rl.checkpoint import read_manifest, stage_complete

    done = []
    for st in cfg.stages:
        sdir = run_dir / "checkpoints" / st.name
        if stage_complete(read_manifest(sdir / "manifest.json"), cfg, st.name):
            done.append(st.name)
            continue
        steps = sorted(int(p.name) for p in sdir.iterdir() if p.name.isdigit()) if sdir.is_dir() else []
        where = f"stage {st.name} from " + (f"its checkpoint at step {steps[-1]}" if steps else "step 0")
        head = f"stages {', '.join(done)} complete (skipped); " if done else ""
        return head + where if (done or steps) else "a new run, from the first stage"
    return f"all stages complete ({', '.join(done)}): nothing to train" if done else "no stages"


def startup_lines(cfg: Config, rt, run_dir: Path, models: dict[str, Any]) -> list[str]:
    """Devices, mesh, parameter counts, the resolved run dir and the resume point: what a log of a cluster
    job should show before the first step."""
    import jax

    devs = jax.devices()
    kinds = sorted({d.device_kind for d in devs})
    hosts = f" on {jax.process_count()} hosts" if jax.process_count() > 1 else ""
    mesh = " ".join(f"{k}={v}" for k, v in rt.mesh.shape.items())
    params = ", ".join(f"{name} {_count(param_count(m))}" for name, m in models.items())
    return [f"devices: {len(devs)} x {jax.default_backend()} ({', '.join(kinds)}){hosts}",
            f"mesh: {mesh}",
            f"parameters: {params}",
            f"run dir: {run_dir.absolute()}",
            f"resume: {resume_point(cfg, run_dir)}"]
