"""Where outputs go: every directory a command will write is checked before any compute.

A read-only run dir (or its parent, its ``checkpoints/``, an export's output dir) or a path under a regular
file would otherwise fail with a traceback after minutes of work, or half-way through a checkpoint write.
``os.access`` asks the kernel, so a read-only mount counts even for root.
"""

from __future__ import annotations

import os
from pathlib import Path

from reasoning_rl.config import ConfigError


def _writable(p: Path) -> bool:
    return os.access(p, os.W_OK | os.X_OK)


def check_output_dir(path: str | Path, what: str) -> None:
    """``path`` is, or can be created as, a directory this process may write (ConfigError naming ``what``)."""
    p = Path(path).absolute()
    if p.exists():
        if not p.is_dir():
            raise ConfigError(f"{what}: {p} is a file, not a directory")
        if not _writable(p):
            raise ConfigError(f"{what}: {p} is not writable (read-only directory or file system)")
        return
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{what}: cannot create {p}: {parent} is a file, not a directory")
    if not _writable(parent):
        raise ConfigError(f"{what}: cannot create {p}: {parent} is not writable (read-only directory or file "
                          "system)")


def check_output_file(path: str | Path, what: str) -> None:
    """A file this process may create or replace."""
    p = Path(path).absolute()
    if p.is_dir():
        raise ConfigError(f"{what}: {p} is a directory, not a file")
    check_output_dir(p.parent, what)
    if p.exists() and not os.access(p, os.W_OK):
        raise ConfigError(f"{what}: {p} is not writable")


def check_run_dir(run_dir: str | Path, stages: list[str]) -> None:
    """Every place a run writes: the run dir, its files, ``checkpoints/`` and each stage's checkpoint dir."""
    run_dir = Path(run_dir)
    check_output_dir(run_dir, "run_dir")
    if not run_dir.exists():
        return
    dirs = [run_dir / "checkpoints", run_dir / "tensorboard", run_dir / "plots"]
    dirs += [run_dir / "checkpoints" / s for s in stages]
    for d in dirs:
        if d.exists():
            check_output_dir(d, "run_dir")
    for s in stages:  # old steps are deleted as new ones complete (checkpoint.keep)
        sdir = run_dir / "checkpoints" / s
        for step in (sdir.iterdir() if sdir.is_dir() else ()):
            if step.is_dir() and step.name.isdigit():
                check_output_dir(step, "run_dir")
    for f in ("metrics.jsonl", "summary.json", "config.yaml"):
        if (run_dir / f).exists():
            check_output_file(run_dir / f, "run_dir")
