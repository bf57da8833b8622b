"""Run untrusted candidate programs against unit tests, isolated from the trainer.

Layers (outermost first):

1. **bubblewrap** (``backend="bwrap"``, default when ``bwrap`` works): new PID, network,
   IPC, UTS and cgroup namespaces; a read-only view of ``/usr`` and the interpreter's
   real install prefix; fresh size-capped tmpfs for the working dir, ``/tmp`` and
   ``/dev/shm``; an empty environment; all capabilities dropped except
   CAP_SETUID/SETGID, which the trusted runner (``_runner.py``) needs to start each
   candidate under a throw-away uid. Killing bwrap tears the whole PID namespace down.
2. **fallback** (no bwrap, ``REASONING_RL_SANDBOX=fallback`` or ``backend="fallback"``):
   the same runner started directly. As root it unshares network and mount namespaces
   itself: fresh size-capped tmpfs over the working dir, /tmp, /var/tmp and /dev/shm,
   and an empty read-only tmpfs over every top-level directory but the system ones
   (/root, /home, /work, /run, /var, ...), with only the interpreter install and the
   harness bound back. Weaker than bwrap: no PID namespace (the host's /proc stays
   visible, though other users' processes cannot be signalled or read), /etc and /usr
   stay readable. Without root it can only apply rlimits and a new session: no uid
   switch, so RLIMIT_NPROC counts all the user's processes and the candidate could
   signal the trainer - use bwrap there.
3. **always**: a dedicated uid per run (so RLIMIT_NPROC binds even when the trainer is
   root, and every leftover process can be killed by uid), rlimits on CPU, address
   space, processes, file size and open files, a seccomp filter against namespace
   creation/mount/ptrace/bpf, a per-test wall clock enforced by the runner, an overall
   wall clock enforced here that kills the process group, capped output everywhere.

The verdict never depends on anything the candidate process can write: stdout is
compared here, asserts are evaluated by the runner (see ``_runner.py``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import logging
import marshal
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from . import _runner

log = logging.getLogger("reasoning_rl.rewards")

RUNNER = os.path.abspath(_runner.__file__)
# The runner is loaded through ``_runner.STUB`` with its directory first on sys.path, so
# no module next to it may share a name with a stdlib module it imports at start-up.
_RUNNER_PYC = importlib.util.cache_from_source(RUNNER)
UID_BASE = 1_000_000_000  # far above any real account; see candidate_uid_range()
_UID_BLOCK = 1 << 14
OVERALL_SLACK_S = 5.0  # start-up allowance on top of the per-test budgets (whole-run wall clock)
_counter = itertools.count()
_uid_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-process resource limits for candidate code (runner limits derive from them).

    Worst-case memory of one run is about ``nproc * memory_mb`` plus three tmpfs of
    ``tmpfs_mb``; at most ``max_concurrent()`` runs are in flight.
    """

    memory_mb: int = 512  # RLIMIT_AS
    nproc: int = 8  # RLIMIT_NPROC for the candidate uid (threads count too)
    file_size_mb: int = 16  # RLIMIT_FSIZE
    open_files: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 1 << 20  # captured stdout per test
    tmpfs_mb: int = 32  # size of each private tmpfs (working dir, /tmp, /dev/shm)


def candidate_uid_range(pid: int | None = None) -> range:
    """Uids that runs started by process ``pid`` (default: this one) may use."""
    start = UID_BASE + ((os.getpid() if pid is None else pid) % 32768) * _UID_BLOCK
    return range(start, start + _UID_BLOCK)


def _next_uid() -> int:
    with _uid_lock:
        return candidate_uid_range()[next(_counter) % _UID_BLOCK]


# --------------------------------------------------------------------------- backends
_probe_lock = threading.Lock()
_probe_result: dict[str, bool] = {}


def _python_binds() -> list[str]:
    """bwrap args exposing the *real* interpreter install read-only at its own path."""
    exe = os.path.realpath(sys.executable)
    roots = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    if not any(exe.startswith(r + os.sep) for r in roots):
        roots.add(os.path.dirname(exe))
    args: list[str] = []
    made: set[str] = set()
    for root in sorted(roots):
        if root == "/usr" or root.startswith("/usr/"):
            continue
        parts = root.strip("/").split("/")
        for i in range(1, len(parts)):
            d = "/" + "/".join(parts[:i])
            if d not in made:  # parents of a bind are created 0700 by bwrap otherwise
                args += ["--perms", "0755", "--dir", d]
                made.add(d)
        args += ["--ro-bind", root, root]
    return args


def bwrap_argv(limits: Limits, seccomp_fd: int | None = None) -> list[str]:
    """The bubblewrap command line that starts the runner (the spec goes to its stdin)."""
    size = str(limits.tmpfs_mb << 20)
    args = ["bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/sandbox",
            "--setenv", "LANG", "C.UTF-8",
            "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
            "--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for f in ("/etc/ld.so.cache", "/etc/localtime"):
        args += ["--ro-bind-try", f, f]
    args += _python_binds()
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    args += ["--ro-bind", RUNNER, "/rrl/_runner.py",
             "--ro-bind-try", _RUNNER_PYC, "/rrl/__pycache__/" + os.path.basename(_RUNNER_PYC),
             "--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", size, "--tmpfs", "/tmp",
             "--perms", "1777", "--size", size, "--tmpfs", "/dev/shm",
             "--perms", "0777", "--size", size, "--tmpfs", "/sandbox", "--chdir", "/sandbox",
             os.path.realpath(sys.executable), "-I", "-S", "-B", "-c", _runner.STUB % "/rrl"]
    return args


def bwrap_available() -> bool:
    """True when bwrap is installed and can start the runner here (probed once)."""
    with _probe_lock:
        if "bwrap" not in _probe_result:
            ok = False
            if os.geteuid() != 0:
                # The design needs root: bwrap keeps CAP_SETUID for the runner so each
                # candidate gets its own uid. Unprivileged bwrap maps a single uid only.
                log.warning("not root: the bubblewrap backend is unavailable; using the weaker fallback")
            elif shutil.which("bwrap"):
                try:
                    outcome = _execute("bwrap", "print(input())", [{"stdin": "ok\n", "stdout": "ok"}],
                                       5.0, Limits())
                    ok = outcome == [True]
                except Exception as e:  # noqa: BLE001 - any failure means "not usable"
                    log.warning("bubblewrap present but unusable (%s); using the fallback sandbox", e)
            _probe_result["bwrap"] = ok
        return _probe_result["bwrap"]


def resolve_backend(backend: str | None = None) -> str:
    """``backend`` or $REASONING_RL_SANDBOX ("auto" | "bwrap" | "fallback") -> concrete backend."""
    choice = (backend or os.environ.get("REASONING_RL_SANDBOX") or "auto").lower()
    if choice not in ("auto", "bwrap", "fallback"):
        raise ValueError(f"unknown sandbox backend {choice!r}")
    if choice == "auto":
        return "bwrap" if bwrap_available() else "fallback"
    return choice


# --------------------------------------------------------------------------- running
_slots_lock = threading.Lock()
_slots: threading.BoundedSemaphore | None = None


def max_concurrent() -> int:
    """How many sandboxes may run at once ($REASONING_RL_CODE_WORKERS, default 2x cores)."""
    env = os.environ.get("REASONING_RL_CODE_WORKERS")
    return max(1, int(env)) if env else max(2, 2 * (os.cpu_count() or 1))


def _slot() -> threading.BoundedSemaphore:
    global _slots
    with _slots_lock:
        if _slots is None:
            _slots = threading.BoundedSemaphore(max_concurrent())
        return _slots


def run_tests(program: str, tests: Sequence[Mapping[str, Any]], timeout_s: float = 5.0,
              limits: Limits | None = None, backend: str | None = None) -> list[bool]:
    """Run ``program`` against ``tests``; one verdict per test (malformed tests fail).

    Blocks the calling thread (waiting on a subprocess, GIL released) and is safe to
    call from many threads; at most ``max_concurrent()`` sandboxes run at once.
    """
    limits = limits or Limits()
    with _slot():
        return _execute(resolve_backend(backend), program, tests, timeout_s, limits)


def normalise_output(text: str) -> list[str]:
    """Whitespace-insensitive view of program output used for stdout comparison."""
    return text.split()


def _execute(backend: str, program: str, tests: Sequence[Mapping[str, Any]], timeout_s: float,
             limits: Limits) -> list[bool]:
    stdio_idx = [i for i, t in enumerate(tests) if isinstance(t, Mapping) and "stdin" in t]
    assert_idx = [i for i, t in enumerate(tests)
                  if isinstance(t, Mapping) and "stdin" not in t and isinstance(t.get("assert"), str)]
    verdicts = [False] * len(tests)
    if not stdio_idx and not assert_idx:
        return verdicts
    timeout_s = float(min(max(timeout_s, 0.05), 600.0))
    root = os.geteuid() == 0
    uid = _next_uid() if root else -1
    if not root:
        _warn_unprivileged()
    spec = {
        "program": program, "backend": backend, "uid": uid, "gid": uid, "timeout_s": timeout_s,
        "stdio": [str(tests[i]["stdin"]) for i in stdio_idx],
        "n_asserts": len(assert_idx),
        "limits": {**dataclasses.asdict(limits), "cpu_s": timeout_s,
                   "nproc": limits.nproc if root else _user_nproc_budget(limits.nproc)},
    }
    workdir, pass_fds = None, ()
    if backend == "bwrap":
        program_bpf = _runner.seccomp_program()
        if program_bpf is not None:
            pass_fds = (_runner._memfd(program_bpf),)
        argv, cwd = bwrap_argv(limits, pass_fds[0] if pass_fds else None), "/"
    else:
        workdir = tempfile.mkdtemp(prefix=f"rrl-sbx-{os.getpid()}-")
        os.chmod(workdir, 0o777)
        argv = [os.path.realpath(sys.executable), "-I", "-S", "-B", "-c", _runner.STUB % os.path.dirname(RUNNER)]
        cwd = workdir
    n_jobs = len(stdio_idx) + len(assert_idx) + 1
    deadline = time.monotonic() + OVERALL_SLACK_S + n_jobs * (timeout_s + 0.5)
    cap = (1 << 16) + (len(stdio_idx) + 1) * (8 * limits.output_bytes + 4096)
    messages: list[dict] = []
    try:
        secret = {"asserts": [tests[i]["assert"] for i in assert_idx]}
        messages = _drive(argv, cwd, _frame(spec) + _frame(secret), deadline, cap, pass_fds)
    finally:
        for fd in pass_fds:
            os.close(fd)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        # The PID namespace takes bwrap's candidates with it; otherwise sweep by uid.
        if uid >= 0 and (backend != "bwrap" or not messages or "done" not in messages[-1]):
            _kill_uid(uid)
    for msg in messages:
        k = msg.get("k")
        if msg.get("kind") == "stdio" and isinstance(k, int) and 0 <= k < len(stdio_idx):
            i = stdio_idx[k]
            out = msg.get("out", b"").decode("utf-8", "replace")
            verdicts[i] = (msg.get("status") == "ok" and msg.get("rc") == 0 and
                           normalise_output(out) == normalise_output(str(tests[i].get("stdout", ""))))
        elif msg.get("kind") == "assert" and isinstance(k, int) and 0 <= k < len(assert_idx):
            verdicts[assert_idx[k]] = msg.get("pass") is True
    return verdicts


def _drive(argv: list[str], cwd: str, spec: bytes, deadline: float, cap: int,
           pass_fds: Sequence[int]) -> list[dict]:
    """Start the runner, feed it the spec, collect its result frames within the budget."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": cwd}
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=cwd, env=env, start_new_session=True,
                            close_fds=True, pass_fds=pass_fds)
    buf, finished = bytearray(), False
    try:
        if len(spec) <= 32768:  # fits the pipe buffer: no writer thread needed
            _feed(proc.stdin, spec)
        else:
            threading.Thread(target=_feed, args=(proc.stdin, spec), daemon=True).start()
        fd = proc.stdout.fileno()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                log.debug("sandbox run hit its overall wall-clock limit")
                break
            if not select.select([fd], [], [], left)[0]:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                finished = True
                break
            if len(buf) + len(chunk) > cap:
                break
            buf += chunk
    finally:
        _kill_group(proc, grace_s=1.0 if finished else 0.0)
        proc.stdout.close()
    return _frames(bytes(buf))


def _frame(obj: dict) -> bytes:
    data = marshal.dumps(obj)
    return struct.pack("<I", len(data)) + data


def _frames(data: bytes) -> list[dict]:
    """Split the runner's output into its (trusted, marshalled) frames; drop a torn tail."""
    out, pos = [], 0
    while pos + 4 <= len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        if pos + 4 + n > len(data):
            break
        try:
            msg = marshal.loads(data[pos + 4: pos + 4 + n])
        except (EOFError, ValueError, TypeError):
            break
        if isinstance(msg, dict):
            out.append(msg)
        pos += 4 + n
    return out


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
    except OSError:
        pass
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def _kill_group(proc: subprocess.Popen, grace_s: float = 0.0) -> None:
    """Let a finished runner exit by itself (``grace_s``), else SIGKILL its process group.

    Under bwrap, killing bwrap kills the sandbox's PID 1 (--die-with-parent), and with it
    every process in the PID namespace.
    """
    if grace_s > 0:
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log.error("sandbox process %d did not die", proc.pid)


_warned: set[str] = set()


def _warn_unprivileged() -> None:
    if "unprivileged" not in _warned:
        _warned.add("unprivileged")
        log.warning("code sandbox running without root: candidates share the trainer's uid and can "
                    "signal its processes; run as root (bwrap backend) for real isolation")


def host_pids_of_uid(uid: int) -> list[int]:
    """Live host processes whose real, effective or saved uid is ``uid`` (a /proc scan)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        except OSError:
            continue
        if str(uid) in fields.get("Uid", "").split()[:3] and not fields.get("State", "").strip().startswith("Z"):
            found.append(int(name))
    return found


def _kill_uid(uid: int) -> None:
    """Defence in depth after the runner is gone: nothing of ``uid`` may survive."""
    for _ in range(50):
        pids = host_pids_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)
    log.error("processes of sandbox uid %d survived: %s", uid, host_pids_of_uid(uid))


def _user_nproc_budget(extra: int) -> int:
    """Without a private uid RLIMIT_NPROC counts every process of the user: add ours."""
    me = str(os.getuid())
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/status") as f:
                    if any(line.startswith("Uid:") and line.split()[1] == me for line in f):
                        n += 1
            except OSError:
                pass
    return n + extra
