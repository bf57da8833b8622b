"""Progress of the long phases of a run: a tqdm bar on a terminal, plain log lines everywhere else.

A cluster job or ``nohup`` sends stderr to a file, where a bar is silent (tqdm turns itself off) and a run of
twenty minutes would print nothing. There every phase (training steps, evaluation, rejection sampling,
teacher traces) logs one plain line every ``log.every_s`` seconds and one when it ends, e.g.::

    grpo: step 30/150 | reward 0.712 | acc 0.650 | len 38.2 | 2.10 s/step | ETA 4m 12s

``configure`` sets the process-wide behaviour once (the pipeline does, from the config's ``log`` section and
``--no-progress``); phases then create ``Progress`` objects without threading settings through every call.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, Self

log = logging.getLogger("reasoning_rl.progress")

_SETTINGS: dict[str, Any] = {"every_s": 30.0, "enabled": True, "terminal": None}


def configure(every_s: float | None = None, enabled: bool | None = None,
              terminal: bool | None = None) -> None:
    """``every_s``: seconds between plain lines (0: a line per update); ``enabled=False`` (``--no-progress``):
    no bar and no periodic lines, only the line at each phase's end; ``terminal``: force the bar (True) or the
    plain lines (False) instead of asking whether stderr is a TTY."""
    if every_s is not None:
        _SETTINGS["every_s"] = float(every_s)
    if enabled is not None:
        _SETTINGS["enabled"] = bool(enabled)
    if terminal is not None:
        _SETTINGS["terminal"] = bool(terminal)


def on_terminal() -> bool:
    """Whether progress goes to a terminal (a bar) rather than a file or pipe (plain lines)."""
    if _SETTINGS["terminal"] is not None:
        return _SETTINGS["terminal"]
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def duration(seconds: float) -> str:
    """``45 s``, ``3m 05s``, ``1h 02m``: wall times and ETAs rounded to what a reader needs."""
    if not math.isfinite(seconds):
        return "?"
    s = round(max(seconds, 0.0))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def per_unit(seconds: float, unit: str) -> str:
    """``2.10 s/step``, ``4.2 ms/completion``."""
    return f"{seconds:.2f} s/{unit}" if seconds >= 0.1 else f"{seconds * 1e3:.1f} ms/{unit}"


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) >= 100 else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


class Progress:
    """One phase's progress: ``total`` units (steps, completions, samples), ``initial`` already done (resume).

    ``note`` qualifies the total, e.g. ``up to 400 steps, stops at loss 0.1`` for a stage that may end early
    (its ETA is then an upper bound). ``update(**fields)`` counts one unit and shows the fields (reward,
    accuracy, ...); ``advance(n, **fields)`` counts ``n``; ``close()`` logs the phase's end line when no bar
    showed it."""

    def __init__(self, name: str, total: int, initial: int = 0, enabled: bool | None = None, *,
                 unit: str = "step", note: str = ""):
        self.name, self.total, self.done, self.unit, self.note = name, int(total), int(initial), unit, note
        self.initial = int(initial)
        self.enabled = _SETTINGS["enabled"] if enabled is None else (bool(enabled) and _SETTINGS["enabled"])
        self.fields: dict[str, Any] = {}
        self.t0 = time.perf_counter()
        self._t_first: float | None = None  # after the first update (which may include compiling)
        self._n_first = 0
        self._last_line = self.t0
        self._closed = False
        self.bar = None
        if self.enabled and on_terminal():
            try:
                from tqdm import tqdm

                desc = f"{name} ({note})" if note else name
                self.bar = tqdm(total=self.total, initial=self.initial, desc=desc, unit=f" {unit}",
                                dynamic_ncols=True, leave=True, mininterval=1.0)
            except Exception:  # noqa: BLE001 - a bar is a convenience: fall back to plain lines
                self.bar = None

    # ------------------------------------------------------------------ figures

    def seconds_per_unit(self) -> float:
        """Mean time per unit since the first update (the first one carries the compile time), else since
        the start."""
        now = time.perf_counter()
        if self._t_first is not None and self.done - self._n_first > 0:
            return (now - self._t_first) / (self.done - self._n_first)
        n = self.done - self.initial
        return (now - self.t0) / n if n > 0 else math.nan

    def eta(self) -> float:
        return self.seconds_per_unit() * max(self.total - self.done, 0)

    def line(self) -> str:
        """The plain progress line: name, count / total, fields, time per unit, ETA."""
        head = f"{self.name}: {self.unit} {self.done}/{self.total}"
        parts = [head + (f" ({self.note})" if self.note else "")]
        parts += [f"{k} {_value(v)}" for k, v in self.fields.items()]
        spu = self.seconds_per_unit()
        if math.isfinite(spu):
            parts.append(per_unit(spu, self.unit))
            eta = duration(self.eta())
            parts.append(f"ETA at most {eta}" if self.note else f"ETA {eta}")
        return " | ".join(parts)

    # ------------------------------------------------------------------ updates

    def update(self, **fields: Any) -> None:
        self.advance(1, **fields)

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += int(n)
        if self._t_first is None:
            self._t_first, self._n_first = time.perf_counter(), self.done
        self.fields.update(fields)
        if self.bar is not None:
            if fields:
                self.bar.set_postfix({k: _value(v) for k, v in fields.items()}, refresh=False)
            self.bar.update(int(n))
            return
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last_line >= _SETTINGS["every_s"] and self.done < self.total:
            self._last_line = now
            log.info("%s", self.line())

    def close(self, message: str | None = None) -> None:
        """End of the phase: closes the bar, or logs the end line (count, wall time, last fields)."""
        if self._closed:
            return
        self._closed = True
        if self.bar is not None:
            self.bar.close()
            return
        wall = time.perf_counter() - self.t0
        head = f"{self.name}: {self.done}/{self.total} {self.unit}s in {duration(wall)}"
        if message:
            head += f" ({message})"
        elif self.done < self.total:
            head += " (stopped early)"
        spu = self.seconds_per_unit()
        parts = [head] + [f"{k} {_value(v)}" for k, v in self.fields.items()]
        if math.isfinite(spu) and self.done > self.initial:
            parts.append(per_unit(spu, self.unit))
        log.info("%s", " | ".join(parts))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> bool:
        if exc[0] is None:
            self.close()
        elif self.bar is not None:
            self.bar.close()
            self._closed = True
        return False
