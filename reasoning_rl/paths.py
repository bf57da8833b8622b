"""Where outputs go: every directory a command will write is checked before any compute.

A read-only run dir (or its parent, its ``checkpoints/``, an export's output dir) or a path under a regular
file would otherwise fail with a traceback after minutes of work, or half-way through a checkpoint write.
``os.access`` asks the kernel, so a read-only mount counts even for root.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import time
from pathlib import Path

from reasoning_rl.config import ConfigError

log = logging.getLogger("reasoning_rl")


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


_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


def out_of_space(e: BaseException) -> str | None:
    """``no space left on device (PATH)`` (or the quota's) when ``e`` or what it was raised from is a write
    that found the file system full: an OSError, or a tensorstore error carrying its errno (orbax's writes).
    A full disk stops a run wherever it writes (a checkpoint, metrics.jsonl, the tokenizer), and the fix is
    the same: free space, then --resume."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL:
            return _FULL[e.errno] + (f" ({e.filename})" if e.filename else "")
        text = str(e)
        for code, what in _FULL.items():
            if os.strerror(code) in text or f"os_error_code='{code}'" in text:
                m = re.search(r'local file "([^"]+)"', text) or re.search(r'Failed writing: "([^"]+)"', text)
                return what + (f" ({m.group(1)})" if m else "")
        e = e.__cause__ or e.__context__
    return None


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


class RunDirLock:
    """An exclusive lock on a run dir for as long as a run writes into it. A second ``run`` on the same dir (a
    cluster job requeued while the first still runs, the same command started twice) would otherwise interleave
    its checkpoints and metrics with the first's. ``flock`` on ``RUN/.lock``: the kernel releases it when the
    holder exits, however it dies (kill -9 included), so a lock is never stale. The file says who holds it."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock (creating the run dir), or ConfigError naming the holder."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            raise ConfigError(f"run_dir: {self.path.parent} is in use by another run"
                              f"{f' ({holder})' if holder else ''}; wait for it to end, stop it, or use another "
                              "--run-dir") from None
        except OSError as e:  # a file system without flock (some network mounts): run unguarded, and say so
            os.close(fd)
            log.warning("run_dir: cannot lock %s (%s): nothing stops a second run on this dir", self.path, e)
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                  .encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None
