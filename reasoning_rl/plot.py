"""PNG plots: a run's training curves (``reasoning-rl plot RUN_DIR``) and budget-forcing curves.

Matplotlib runs on the Agg backend, so plotting works on headless machines and never opens a window.
Training curves put the stages one after another on a shared step axis (a stage boundary is a dotted
line), one colour per stage; noisy RL series are drawn faintly with a moving average on top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from reasoning_rl.metrics import HELD_OUT_POINT, MetricsFileError, read_metrics

HELD_OUT = "held_out/pass@1"  # eval.every's held-out curve, drawn with markers in the accuracy panel

PANELS = (("reward_mean", "reward"), ("accuracy", "accuracy"), ("response_len", "response length (tokens)"),
          ("kl", "KL to reference"), ("entropy", "entropy"), ("loss", "loss"))


def _task_accuracy(key: str) -> bool:
    """A mixture task's training accuracy (``arithmetic/accuracy``), not a count of the accuracy reward's
    errors (``reward_errors/accuracy``) or a held-out figure."""
    return key.endswith("/accuracy") and not key.startswith(("reward_errors/", "held_out/"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    head = np.cumsum(y[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(y, kernel, mode="valid")])


def _by_stage(records: list[dict], path: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for i, r in enumerate(records, 1):
        step = r.get("step", 0)
        if isinstance(step, bool) or not isinstance(step, int):
            raise MetricsFileError(f"{path}: record {i} has step {step!r}, not an integer")
        # step 0 holds a stage's sampling figures, not a training step; a held-out point there is the stage's start
        if step >= 1 or HELD_OUT_POINT in r:
            out.setdefault(str(r.get("stage")), []).append(r)
    return out


def _rl_betas(run_dir: Path, stages: list[str]) -> dict[str, float]:
    """KL weight of each GRPO run among ``stages`` (a distill stage's ``<name>/grpo_baseline`` included), from
    the run's config; empty when the config cannot be read."""
    from reasoning_rl import config as config_lib

    try:
        cfg = config_lib.from_dict(config_lib.load_raw(run_dir / "config.yaml", stored=True))
    except (config_lib.ConfigError, OSError):
        return {}
    out = {}
    for st in cfg.stages:
        if st.kind == "grpo" and st.name in stages:
            out[st.name] = st.algorithm.beta
        if f"{st.name}/grpo_baseline" in stages:
            out[f"{st.name}/grpo_baseline"] = st.algorithm.beta
    return out


def empty_reason(key: str, title: str, rl: dict[str, float]) -> str:
    """Why a panel has nothing to draw, written in the panel (an empty frame reads as a broken plot);
    ``rl`` is ``_rl_betas`` of the run."""
    if key == "kl":
        if rl and all(b == 0 for b in rl.values()):
            return "KL not computed: beta = 0\n(no reference model; algorithm.beta > 0 adds one)"
        if not rl:
            return "KL not computed: no GRPO stage"
    if key in ("reward_mean", "accuracy", "response_len", "entropy") and not rl:
        return f"{title}: logged by GRPO stages only;\nthis run has none yet"
    return f"no {key!r} in metrics.jsonl"


def panel_notes(run_dir: str | Path, records: list[dict] | None = None) -> dict[str, str]:
    """For each training-curve panel with no data point: the sentence it shows instead."""
    run_dir = Path(run_dir)
    stages = _by_stage(read_metrics(run_dir) if records is None else records, run_dir / "metrics.jsonl")
    notes, rl = {}, None
    for key, title in PANELS:
        has = any(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                  for recs in stages.values() for r in recs for k in r
                  if k == key or (key == "accuracy" and (_task_accuracy(k) or k == HELD_OUT)))
        if not has:
            rl = _rl_betas(run_dir, list(stages)) if rl is None else rl  # the config, parsed once
            notes[key] = empty_reason(key, title, rl)
    return notes


def plot_training(run_dir: str | Path, out: str | Path | None = None, smooth: int = 10) -> Path:
    """Write the run's training curves to ``out`` (default ``RUN_DIR/plots/training_curves.png``)."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl records to plot")
    stages = _by_stage(records, run_dir / "metrics.jsonl")
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    offset = 0
    for si, (stage, recs) in enumerate(stages.items()):
        colour = colours[si % len(colours)]
        steps = np.asarray([r["step"] for r in recs]) + offset
        for ax, (key, title) in zip(axes.flat, PANELS):
            series = {key: key}
            if key == "accuracy":  # per-task accuracies of a mixture stage, dashed
                series.update({k: k for r in recs for k in r if _task_accuracy(k)})
            for name, k in series.items():
                pts = [(s, r[k]) for s, r in zip(steps, recs) if isinstance(r.get(k), (int, float))]
                if not pts:
                    continue
                x, y = map(np.asarray, zip(*pts))
                style = "--" if "/" in name else "-"
                label = stage if name == key else f"{stage}: {name.split('/')[0]}"
                if len(y) > smooth > 1:
                    ax.plot(x, y, style, color=colour, alpha=0.25, linewidth=0.8)
                    ax.plot(x, _smooth(y, smooth), style, color=colour, label=label)
                else:
                    ax.plot(x, y, style, color=colour, label=label, marker="." if len(y) < 20 else None)
            if key == "accuracy":  # held-out pass@1 (eval.every): few points, each on the same problems
                pts = [(s, r[HELD_OUT]) for s, r in zip(steps, recs) if isinstance(r.get(HELD_OUT), (int, float))]
                if pts:
                    x, y = map(np.asarray, zip(*pts))
                    ax.plot(x, y, "o:", color=colour, markersize=4, label=f"{stage}: held-out pass@1")
            ax.set_title(title)
        offset = int(steps.max()) if len(steps) else offset
        for ax in axes.flat:
            ax.axvline(offset, color="grey", linestyle=":", linewidth=0.8)
    notes = panel_notes(run_dir, records)
    for ax, (key, title) in zip(axes.flat, PANELS):
        ax.set_xlabel("step (stages in order)")
        if key in notes:
            ax.set_title(title)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, notes[key], transform=ax.transAxes, ha="center", va="center", fontsize=10,
                    color="dimgrey")
        elif ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"training curves: {run_dir.name}")
    fig.tight_layout()
    out = Path(out) if out is not None else run_dir / "plots" / "training_curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_budget(result: dict[str, Any], out: str | Path, title: str = "budget forcing") -> Path:
    """Accuracy against thinking budget (and the thinking actually used) from ``evaluation.budget_curve``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    b = result["budgets"]
    ax.plot(b, result["accuracy"], "o-", label="accuracy")
    ax.set_xlabel("thinking budget (tokens)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    handles = ax.get_lines()
    if "mean_think_tokens" in result:
        ax2 = ax.twinx()
        handles += ax2.plot(b, result["mean_think_tokens"], "s--", color="grey", alpha=0.6, label="thinking used")
        ax2.set_ylabel("mean thinking tokens")
    ax.set_title(title)
    ax.legend(handles=handles, loc="upper left")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
