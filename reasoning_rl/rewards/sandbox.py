"""Run untrusted candidate programs against unit tests, isolated from the trainer.

The same guarantees hold for every user, root or not (the adversarial suite in
``tests/test_rewards_code.py`` runs both ways): no network (not even the host's
loopback), nothing of the host visible but the read-only interpreter install (no
``$HOME``, no checkout, no caller's working directory), nothing written outside the
candidate's own tmpfs, none of the caller's environment, no process alive after the call,
and a verdict the candidate cannot forge.

Backends (``resolve_backend``; never a silent downgrade):

1. **bwrap** (default wherever bubblewrap works): new PID, network, IPC, UTS and cgroup
   namespaces; read-only ``/usr`` and the interpreter's real install prefix; fresh
   size-capped tmpfs for the working dir, ``/tmp`` and ``/dev/shm``; an empty
   environment; a seccomp filter. Killing bwrap tears the whole PID namespace down.

   * as root, bwrap keeps CAP_SETUID/SETGID for the trusted runner (``_runner.py``),
     which starts each candidate under a throw-away uid;
   * as an ordinary user, bwrap also makes a user namespace, and the runner runs as the
     namespace's PID 1 with no capabilities. Candidates share its uid but cannot signal it
     (the kernel drops signals to a PID-namespace init that it does not handle), cannot
     read its memory, fds or environment (it is not dumpable; ptrace and
     process_vm_readv are filtered), and are swept with one ``kill(-1)`` that spares only
     PID 1. Process limits count inside the namespace.
2. **fallback** (root only, when bubblewrap is missing): the runner unshares network and
   mount namespaces itself: fresh tmpfs over the working dir, /tmp, /var/tmp and
   /dev/shm, an empty read-only tmpfs over every non-system top-level directory, with
   only the interpreter install and the harness bound back (wherever they live, /tmp
   included). Weaker than bwrap: no PID namespace (the host's /proc stays visible,
   though other users' processes cannot be signalled or read), /etc and /usr readable.
3. **none-unsafe** (only by that name): candidates run with rlimits and a new session
   but no isolation at all; logged loudly.

Where nothing isolating works, ``resolve_backend`` raises ``SandboxUnavailable`` naming
the cause and the fix, and a run refuses to start (exit code 2). A sandbox that fails for
a reason of the machine raises ``SandboxError``: the reward counts an error, never a 0.

Always: rlimits on CPU, address space, processes, file size and open files, a per-test
wall clock enforced by the runner, an overall wall clock enforced here that kills the
process group, capped output everywhere. The verdict never depends on anything the
candidate process can write: stdout is compared here, asserts are evaluated by the
runner (see ``_runner.py``).
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
_warned: set[str] = set()


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


def bwrap_argv(limits: Limits, seccomp_fd: int | None = None, privileged: bool | None = None) -> list[str]:
    """The bubblewrap command line that starts the runner (the spec goes to its stdin).

    ``privileged`` (default: running as root): keep CAP_SETUID/SETGID for the runner so each
    candidate gets its own uid. Otherwise bubblewrap makes a user namespace and the runner
    runs as the sandbox's PID 1 with no capabilities (see ``_runner.py``: ``pid1``).
    """
    privileged = os.geteuid() == 0 if privileged is None else privileged
    size = str(limits.tmpfs_mb << 20)
    args = ["bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/sandbox",
            "--setenv", "LANG", "C.UTF-8"]
    if privileged:
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-user", "--as-pid-1", "--cap-drop", "ALL"]
    args += ["--ro-bind", "/usr", "/usr"]
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


class SandboxUnavailable(RuntimeError):
    """No backend that isolates candidates works here; the message names the cause and the fix."""


class SandboxError(RuntimeError):
    """A sandbox run failed for a reason of the machine, not of the candidate (counted as a reward error)."""


BACKENDS = ("auto", "bwrap", "fallback", "none-unsafe")
_probe_reason: dict[str, str] = {}


def _probe(backend: str) -> str | None:
    """Run a known-good program through ``backend`` once per process: None if it scores right, else why not.

    The canary has a stdin/stdout test and an assert test, so both the runner start-up and the
    candidate interpreters (a fresh one too, after a crash) are exercised from wherever the
    interpreter and this package are installed.
    """
    canary = "def f(n):\n    return n + 1\n\nif __name__ == '__main__':\n    print(f(int(input())))\n"
    tests = [{"stdin": "1\n", "stdout": "2"}, {"assert": "assert f(1) == 2"}]
    with tempfile.TemporaryFile() as err:
        try:
            verdicts = _execute(backend, canary, tests, 10.0, Limits(), stderr=err)
        except Exception as e:  # noqa: BLE001 - any failure means "not usable"; the reason is reported
            verdicts = f"{type(e).__name__}: {e}"
        if verdicts == [True, True]:
            return None
        err.seek(0)
        lines = [ln for ln in err.read(1 << 16).decode("utf-8", "replace").splitlines() if ln.strip()]
    why = verdicts if isinstance(verdicts, str) else f"a known-good program scored {verdicts}"
    return why + (f"; it said: {lines[-1].strip()[:300]}" if lines else "")


def _probed(backend: str) -> str | None:
    with _probe_lock:
        if backend not in _probe_reason:
            _probe_reason[backend] = _probe(backend) or ""
        return _probe_reason[backend] or None


def bwrap_available() -> bool:
    """True when bubblewrap is installed and can start the runner here, as root or not (probed once)."""
    if not shutil.which("bwrap"):
        return False
    return _probed("bwrap") is None


def _unavailable_message() -> str:
    if not shutil.which("bwrap"):
        cause = "bubblewrap (bwrap) is not installed"
        fix = "install it (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"
    else:
        cause = f"bubblewrap cannot start a sandbox here ({_probed('bwrap')})"
        fix = ("allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, or on Ubuntu "
               "kernel.apparmor_restrict_unprivileged_userns=0) or run as root")
    return (f"code rewards need an isolating sandbox, but {cause}: {fix}; or set the code reward's "
            "sandbox: none-unsafe to run candidate programs unisolated")


def resolve_backend(backend: str | None = None) -> str:
    """``backend`` or $REASONING_RL_SANDBOX (one of ``BACKENDS``) -> a backend that isolates here.

    ``auto``: bubblewrap when it works (as root or as an ordinary user), else, as root, the
    fallback (namespaces set up by the runner itself). Never a silent downgrade to running
    candidates unisolated: that takes ``none-unsafe`` by name. Raises SandboxUnavailable
    (naming the cause and the fix) when nothing isolating works.
    """
    choice = (backend or os.environ.get("REASONING_RL_SANDBOX") or "auto").lower()
    if choice not in BACKENDS:
        raise ValueError(f"unknown sandbox backend {choice!r}; expected one of {', '.join(BACKENDS)}")
    if choice == "none-unsafe":
        _warn_unsafe()
        return choice
    if choice in ("auto", "bwrap") and bwrap_available():
        return "bwrap"
    if choice == "bwrap":
        raise SandboxUnavailable(_unavailable_message())
    if os.geteuid() != 0:
        if choice == "fallback":
            raise SandboxUnavailable("the fallback sandbox isolates only as root; " + _unavailable_message())
        raise SandboxUnavailable(_unavailable_message())
    reason = _probed("fallback")
    if reason is not None:
        raise SandboxUnavailable(f"code rewards need an isolating sandbox: bubblewrap is unavailable and the "
                                 f"root fallback sandbox failed its self-test ({reason}); install bubblewrap")
    return "fallback"


def describe_backend(backend: str | None = None) -> str:
    """One line for logs: which backend runs candidates and how it isolates them."""
    choice = (backend or os.environ.get("REASONING_RL_SANDBOX") or "auto").lower()
    b = "none-unsafe" if choice == "none-unsafe" else resolve_backend(backend)
    if b == "bwrap":
        how = "own uid per candidate" if os.geteuid() == 0 else "user namespace, runner as PID 1"
        return f"code sandbox: bubblewrap ({how}; no network, private /tmp, host files hidden)"
    if b == "fallback":
        return "code sandbox: root fallback (own uid, network and mount namespaces; no PID namespace)"
    return UNSAFE_WARNING


UNSAFE_WARNING = ("code sandbox: none-unsafe - candidate programs run UNISOLATED with the trainer's uid "
                  "(they can reach the network, read and write your files and signal your processes)")


def _warn_unsafe() -> None:
    if "unsafe" not in _warned:
        _warned.add("unsafe")
        log.warning(UNSAFE_WARNING)


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
             limits: Limits, stderr: Any = subprocess.DEVNULL) -> list[bool]:
    stdio_idx = [i for i, t in enumerate(tests) if isinstance(t, Mapping) and "stdin" in t]
    assert_idx = [i for i, t in enumerate(tests)
                  if isinstance(t, Mapping) and "stdin" not in t and isinstance(t.get("assert"), str)]
    verdicts = [False] * len(tests)
    if not stdio_idx and not assert_idx:
        return verdicts
    timeout_s = float(min(max(timeout_s, 0.05), 600.0))
    root = os.geteuid() == 0
    uid = _next_uid() if root and backend != "none-unsafe" else -1
    pid1 = backend == "bwrap" and not root
    # Unprivileged bubblewrap counts processes in its own user namespace (the runner adds its
    # own count there); run unisolated, every process of the user counts.
    nproc = limits.nproc if uid >= 0 or pid1 else _user_nproc_budget(limits.nproc)
    spec = {
        "program": program, "backend": backend, "uid": uid, "gid": uid, "timeout_s": timeout_s,
        "pid1": pid1, "stdio": [str(tests[i]["stdin"]) for i in stdio_idx],
        "n_asserts": len(assert_idx),
        "limits": {**dataclasses.asdict(limits), "cpu_s": timeout_s, "nproc": nproc},
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
        messages = _drive(argv, cwd, _frame(spec) + _frame(secret), deadline, cap, pass_fds, stderr)
    finally:
        for fd in pass_fds:
            os.close(fd)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        # The PID namespace takes bwrap's candidates with it; otherwise sweep by uid.
        if uid >= 0 and (backend != "bwrap" or not messages or "done" not in messages[-1]):
            _kill_uid(uid)
    if not messages or "hello" not in messages[0]:
        # The runner never started (nothing a candidate does runs before its first frame):
        # the machine is at fault, not the program. Never a silent zero.
        raise SandboxError(f"the {backend} sandbox did not start (no word from the test runner)")
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
           pass_fds: Sequence[int], stderr: Any = subprocess.DEVNULL) -> list[dict]:
    """Start the runner, feed it the spec, collect its result frames within the budget."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": cwd}
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=stderr, cwd=cwd, env=env, start_new_session=True,
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
