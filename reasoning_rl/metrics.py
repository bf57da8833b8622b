"""Run outputs: ``metrics.jsonl`` (one object per step), ``rollouts.jsonl`` (a few rollouts per step, to
read what the policy writes), TensorBoard events (scalars, and the rollouts as text); progress
lines and bars are ``progress.py``'s.

On resume the JSONL files are cut back to the restored step, so they always read as one uninterrupted
run, the same as if the run had never stopped. ``rollouts.jsonl`` is rotated by size (``rollouts.jsonl.1``
is the previous one), so a long run keeps its recent rollouts without filling the disk.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import time
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


log = logging.getLogger("reasoning_rl")


def _tensorboardx():
    """tensorboardX's summary protos and event-file writer, imported with torch hidden: tensorboardX imports
    torch at import time where it is installed (about a second and a few hundred MB per process) only to
    accept torch tensors, and we log floats and text. A torch some other code already imported is left
    alone."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # ``import torch`` raises ImportError, which tensorboardX handles
    try:
        from tensorboardX import summary
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto import event_pb2
    finally:
        if hide and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return summary, EventsWriter, event_pb2


class EventFile:
    """TensorBoard events, written in the caller's thread. tensorboardX's ``SummaryWriter`` writes from a
    thread of its own and flushes again from an exit hook, so a write that failed (a full disk, a lost mount)
    printed tracebacks from both after the run's own error line. Here a failed write is one warning and the
    events stop there: TensorBoard shows ``metrics.jsonl``, it is never a reason to fail a run."""

    def __init__(self, logdir: Path, flush_s: float = 30.0):
        self.logdir, self.flush_s = logdir, flush_s
        self._summary, writer, self._pb = _tensorboardx()
        logdir.mkdir(parents=True, exist_ok=True)
        self._w = writer(str(logdir / "events"))
        self._flushed = time.monotonic()

    def scalars(self, values: dict[str, float], step: int) -> None:
        s = self._summary.Summary()
        for tag, v in values.items():  # TensorBoard's tags: letters, digits, _ . / - (pass@4 -> pass_at_4)
            s.value.extend(self._summary.scalar(re.sub(r"[^\w./-]", "_", tag.replace("@", "_at_")), v).value)
        self._add(s, step)

    def text(self, tag: str, text: str, step: int) -> None:
        self._add(self._summary.text(tag, text), step)

    def _add(self, summary, step: int) -> None:
        if self._w is None:
            return
        try:
            self._w.write_event(self._pb.Event(summary=summary, step=int(step), wall_time=time.time()))
            if time.monotonic() - self._flushed >= self.flush_s:
                self._w.flush()
                self._flushed = time.monotonic()
        except Exception as e:  # noqa: BLE001 - shown once; the run's record is metrics.jsonl
            self._give_up(e)

    def close(self) -> None:
        if self._w is not None:
            try:
                self._w.close()  # flushes
            except Exception as e:  # noqa: BLE001
                self._give_up(e)
            self._w = None

    def _give_up(self, e: Exception) -> None:
        from reasoning_rl.paths import out_of_space

        log.warning("tensorboard: writing events in %s failed (%s); no more TensorBoard events in this run "
                    "(metrics.jsonl has every record)", self.logdir, out_of_space(e) or e)
        try:
            self._w._py_recordio_writer._writer.close()  # what was not flushed is lost either way
        except Exception:  # noqa: BLE001, S110 - the file is being dropped
            pass
        self._w = None


# the key every held-out record (eval.every's curve, stages/evaluate.py) has and no step record has
HELD_OUT_POINT = "held_out/problems"


class MetricsWriter:
    def __init__(self, run_dir: str | Path, tensorboard: bool = True, enabled: bool = True):
        """``enabled=False`` (hosts other than the primary) writes nothing."""
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        self._f = None
        self._healed = False  # a torn last line is cut before the first record is appended
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb_dir = Path(run_dir) / "tensorboard" if tensorboard else None  # opened at the first record:
        self._f = open(self.path, "a")  # a run that stops on bad input before its first step adds no file
        self._global = {}

    def _tensorboard(self):
        if self._tb is None and self._tb_dir is not None:
            try:
                self._tb = EventFile(self._tb_dir)
            except Exception:  # noqa: BLE001 - tensorboard is a convenience, never a reason to fail a run
                self._tb_dir = None
        return self._tb

    def truncate(self, stage: str, after_step: int) -> None:
        """Drop this stage's records with step > after_step (and everything written after them)."""
        if not self.enabled:
            return
        self._f.close()
        _truncate(self.path, stage, after_step)
        _truncate(self.path.with_name("rollouts.jsonl"), stage, after_step)
        self._f = open(self.path, "a")

    def _drop_torn_tail(self) -> None:
        """A killed process's unfinished last line: cut it before appending, or the next record would be glued
        onto it (one garbage line in the middle of the file)."""
        self._healed = True
        size = self.path.stat().st_size if self.path.exists() else 0
        if size == 0:
            return
        with open(self.path, "rb") as f:
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
        data = self.path.read_bytes()
        self._f.close()
        with open(self.path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
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
            self._tb.text(f"{stage}/rollouts", rollouts_markdown(records), step)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if not self._healed:
            self._drop_torn_tail()
        rec = {k: _plain(v) for k, v in record.items()}
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()
        if self._tensorboard() is not None:
            stage, step = rec.get("stage", ""), rec.get("step", 0)
            self._tb.scalars({f"{stage}/{k}": v for k, v in rec.items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}, step)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class MetricsFileError(ValueError):
    """A malformed ``metrics.jsonl``; the message names ``file:line`` and the problem."""

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
    """The records of ``RUN/metrics.jsonl``. A torn last line (a process killed mid-write) is left out; any
    other line that is not a JSON object raises MetricsFileError naming it."""
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return []
    data = p.read_bytes()
    lines = data.split(b"\n")
    out = []
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        torn = i == len(lines)  # no newline after it: the write never finished
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if torn:
                break
            what = f"not UTF-8 text (byte {e.start})" if isinstance(e, UnicodeDecodeError) else \
                f"not valid JSON ({e.msg} at column {e.colno})"
            raise MetricsFileError(f"{p}:{i}: {what}") from None
        if not isinstance(rec, dict):
            raise MetricsFileError(f"{p}:{i}: expected a JSON object, got {type(rec).__name__}")
        out.append(rec)
    return out
