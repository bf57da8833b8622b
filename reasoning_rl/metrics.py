"""Run outputs: ``metrics.jsonl`` (one object per step), ``rollouts.jsonl`` (a few rollouts per step, to
read what the policy writes), TensorBoard events (scalars, and the rollouts as text), and a progress bar.

On resume the JSONL files are cut back to the restored step, so they always read as one uninterrupted
run, the same as if the run had never stopped. ``rollouts.jsonl`` is rotated by size (``rollouts.jsonl.1``
is the previous one), so a long run keeps its recent rollouts without filling the disk.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np


def _plain(v: Any) -> Any:
    if isinstance(v, (np.generic,)):
        v = v.item()
    if hasattr(v, "shape") and getattr(v, "shape", None) == ():
        v = float(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


class MetricsWriter:
    def __init__(self, run_dir: str | Path, tensorboard: bool = True, enabled: bool = True):
        """``enabled=False`` (hosts other than the primary) writes nothing."""
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        self._f = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), flush_secs=30)
            except Exception:  # tensorboard is a convenience, never a reason to fail a run
                self._tb = None
        self._f = open(self.path, "a")
        self._global = {}

    def truncate(self, stage: str, after_step: int) -> None:
        """Drop this stage's records with step > after_step (and everything written after them)."""
        if not self.enabled:
            return
        self._f.close()
        _truncate(self.path, stage, after_step)
        _truncate(self.path.with_name("rollouts.jsonl"), stage, after_step)
        self._f = open(self.path, "a")

    def write_rollouts(self, records: list[dict[str, Any]], max_bytes: int = 64 * 2**20, keep: int = 3) -> None:
        """Append rollouts (``stage``/``step`` in each) to ``rollouts.jsonl``, rotating it past ``max_bytes``,
        and show them in TensorBoard's text tab."""
        if not self.enabled or not records:
            return
        path = self.path.with_name("rollouts.jsonl")
        if path.exists() and path.stat().st_size >= max_bytes:
            _rotate(path, keep)
        with open(path, "a") as f:
            f.writelines(json.dumps({k: _plain(v) for k, v in r.items()}, ensure_ascii=False) + "\n" for r in records)
        if self._tb is not None:
            stage, step = records[0].get("stage", ""), records[0].get("step", 0)
            self._tb.add_text(f"{stage}/rollouts", rollouts_markdown(records), step)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        rec = {k: _plain(v) for k, v in record.items()}
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()
        if self._tb is not None:
            stage, step = rec.get("stage", ""), rec.get("step", 0)
            for k, v in rec.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self._tb.add_scalar(f"{stage}/{k}", v, step)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
        if self._tb is not None:
            self._tb.close()


def _truncate(path: Path, stage: str, after_step: int) -> None:
    """Cut a JSONL file of step records back to ``stage``'s ``after_step`` (and a torn last line)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break  # a torn last line from a killed process
        if rec.get("stage") == stage and rec.get("step", 0) > after_step:
            break
        keep.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(k + "\n" for k in keep))
    os.replace(tmp, path)


def _rotate(path: Path, keep: int) -> None:
    """``path`` -> ``path.1`` -> ... -> ``path.<keep>`` (the oldest dropped)."""
    old = Path(f"{path}.{keep}")
    if old.exists():
        old.unlink()
    for i in range(keep - 1, 0, -1):
        p = Path(f"{path}.{i}")
        if p.exists():
            os.replace(p, f"{path}.{i + 1}")
    os.replace(path, f"{path}.1")


def rollouts_markdown(records: list[dict[str, Any]]) -> str:
    """Rollouts as TensorBoard text (markdown): prompt and completion verbatim, then the scores."""

    def block(text: Any) -> str:
        return "\n".join("    " + line for line in str(text).splitlines()) or "    (empty)"

    parts = []
    for r in records:
        rewards = ", ".join(f"{k} {v:.3g}" for k, v in (r.get("rewards") or {}).items() if isinstance(v, float))
        parts.append(f"**prompt**\n\n{block(r.get('prompt'))}\n\n**completion**\n\n{block(r.get('completion'))}\n\n"
                     f"answer `{r.get('answer')}` · reference `{r.get('reference')}` · correct {r.get('correct')} · "
                     f"reward {r.get('reward', float('nan')):.3g} ({rewards}) · {r.get('tokens')} tokens"
                     f"{' · hit the token limit' if r.get('truncated') else ''}")
    return "\n\n---\n\n".join(parts)


def read_metrics(run_dir: str | Path) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


class Progress:
    """A tqdm bar per stage showing step, reward and accuracy (silent when not on a terminal)."""

    def __init__(self, stage: str, total: int, initial: int = 0, enabled: bool = True):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, desc=stage, dynamic_ncols=True, leave=True,
                                mininterval=1.0, disable=None)
            except Exception:
                self.bar = None

    def update(self, **fields: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in fields.items()},
                                 refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
