"""Trusted test harness that runs INSIDE the code sandbox (stdlib only, one file).

Why a separate, self-contained script: the verdict on a candidate program must come
from code the candidate cannot reach, and this file is all the sandbox sees of the
package (it is loaded by ``STUB`` from its cached .pyc). Roles:

* the *runner* (started by the trainer inside the sandbox) keeps root there (bubblewrap
  leaves it CAP_SETUID/SETGID only), reads the job from stdin and never executes
  candidate code itself;
* *candidate processes* are forked by the runner and switch to an unprivileged
  throw-away uid before any candidate code runs, so the candidate can neither signal,
  trace nor read the runner. While the runner holds nothing secret (before it has read
  the assert sources) a plain fork is used; afterwards a fresh interpreter is exec'd
  (``main(["child", ...])``) so that no runner memory is inherited.

Two kinds of tests:

* stdin/stdout: the child runs the program as ``__main__`` with the test input on
  stdin; the runner only relays the captured stdout (capped). The expected output never
  enters the sandbox: the trainer compares it.
* assert: the test source is executed by the runner, never by the child. Names the test
  uses that are not builtins are looked up in the child over a small RPC protocol
  (``global``/``call``/``getattr``/...), with plain data (numbers, strings, containers)
  copied back and everything else kept as an opaque remote handle. The child sees only
  the calls and their arguments, never the expected values or the comparison, so
  exiting early, printing markers or monkeypatching ``assert``/builtins in the child
  cannot turn a failing test into a passing one.

Protocol with the trainer (both sides trusted, so ``marshal`` is fine and keeps the
runner's start-up light): two frames (4-byte little-endian length + marshalled dict) on
stdin - the spec without the assert sources, then ``{"asserts": [...]}``, read only
after every candidate process that may be a plain fork of the runner has been started;
on stdout a sequence of frames of the same kind: ``{"hello": {...}}``, then
``{"kind": "stdio", "k": i, "status": ..., "rc": ..., "out": bytes}`` or
``{"kind": "assert", "k": i, "pass": bool}`` per test, then ``{"done": True}``.
The RPC with a candidate child: requests are marshal frames (runner -> child, trusted
data), replies are ASCII Python literals parsed with ``ast.literal_eval`` (untrusted).
"""

import marshal
import os
import resource
import select
import signal
import struct
import sys
import time

_MAX_MSG = 64 << 20  # bytes in one RPC line
_MAX_ITEMS = 1_000_000  # elements copied out of one container
_MAX_DEPTH = 64
_PREIMPORT = (
    "abc", "array", "ast", "base64", "bisect", "calendar", "cmath", "collections",
    "collections.abc", "copy", "csv", "dataclasses", "datetime", "decimal", "enum", "fractions",
    "functools", "hashlib", "heapq", "io", "itertools", "json", "math", "numbers", "operator",
    "queue", "random", "re", "select", "signal", "socket", "statistics", "string", "struct",
    "subprocess", "textwrap", "threading", "time", "traceback", "types", "typing", "unicodedata",
)
_TRUSTED_MODULES = frozenset(
    ("math", "cmath", "collections", "itertools", "functools", "re", "string", "fractions",
     "decimal", "heapq", "bisect", "operator", "statistics", "random", "copy", "json")
)


# --------------------------------------------------------------------------- wire format
def _encode(v, store, depth=0):
    """Plain data -> tagged tree of literals (str, bool, None, list, dict); the rest via ``store``."""
    if v is None or v is True or v is False:
        return v
    t = type(v)
    if depth > _MAX_DEPTH:
        return store(v)
    if t is str:
        return v
    if t is int:
        return {"i": format(v, "x")}
    if t is float:
        return {"f": repr(v)}
    if t is list:
        return [_encode(x, store, depth + 1) for x in v[:_MAX_ITEMS]]
    if t is tuple:
        return {"t": [_encode(x, store, depth + 1) for x in v[:_MAX_ITEMS]]}
    if t is dict:
        return {"d": [[_encode(k, store, depth + 1), _encode(x, store, depth + 1)] for k, x in v.items()]}
    if t in (set, frozenset):
        return {"s" if t is set else "fs": [_encode(x, store, depth + 1) for x in v]}
    if t in (bytes, bytearray):
        return {"b": bytes(v).hex()}
    if t is complex:
        return {"c": [repr(v.real), repr(v.imag)]}
    # Subclasses of plain types (IntEnum, Counter, namedtuple, str subclasses ...) are
    # copied as their base type; everything else stays remote.
    for base in (bool, int, float, str, list, tuple, dict, set, frozenset, bytes, complex):
        if isinstance(v, base):
            return _encode(base(v), store, depth)
    return store(v)


def _decode(o, load, depth=0):
    if depth > _MAX_DEPTH + 2:
        raise ValueError("too deep")
    if o is None or isinstance(o, (bool, str)):
        return o
    if isinstance(o, list):
        return [_decode(x, load, depth + 1) for x in o]
    if not isinstance(o, dict) or len(o) != 1:
        raise ValueError("bad value")
    (tag, x), = o.items()
    if tag == "i":
        return int(x, 16)
    if tag == "f":
        return float(x)
    if tag == "t":
        return tuple(_decode(e, load, depth + 1) for e in x)
    if tag == "s":
        return {_decode(e, load, depth + 1) for e in x}
    if tag == "fs":
        return frozenset(_decode(e, load, depth + 1) for e in x)
    if tag == "d":
        return {_decode(k, load, depth + 1): _decode(e, load, depth + 1) for k, e in x}
    if tag == "b":
        return bytes.fromhex(x)
    if tag == "c":
        return complex(float(x[0]), float(x[1]))
    if tag == "h":
        return load(int(x))
    raise ValueError("bad tag")


def _recv_frame(fd):
    """Child side: one length-prefixed marshal frame from the (trusted) runner."""
    (n,) = struct.unpack("<I", _read_exact(fd, 4))
    return marshal.loads(_read_exact(fd, n))


def _read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, min(n - len(buf), 1 << 20))
        if not chunk:
            raise _Broken("eof")
        buf += chunk
    return bytes(buf)


def _parse_reply(line):
    """Runner side: a reply from the (untrusted) child - Python literals only, never code."""
    import ast

    try:
        reply = ast.literal_eval(line.decode("ascii"))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, UnicodeDecodeError):
        raise _Broken("garbage") from None
    if not isinstance(reply, dict):
        raise _Broken("garbage")
    return reply


class _Lines:
    """Bounded, deadline-aware line reader over a raw fd (no unbounded buffering)."""

    def __init__(self, fd):
        self.fd, self.buf = fd, bytearray()

    def read(self, deadline, limit=_MAX_MSG):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 1]
                return line
            if len(self.buf) > limit:
                raise _Broken("message too large")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise _Timeout()
            if not select.select([self.fd], [], [], left)[0]:
                continue
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                raise _Broken("eof")
            self.buf += chunk


def _write_all(fd, data, deadline):
    view = memoryview(data)
    while view:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Timeout()
        if select.select([], [fd], [], left)[1]:
            view = view[os.write(fd, view[: 1 << 16]):]


# --------------------------------------------------------------------------- child side
STUB = "import sys;sys.path.insert(0,%r);import _runner;del sys.path[0];_runner.main(sys.argv[1:])"
"""``python -c`` loader: imports this module from its cached .pyc instead of compiling it."""


def _preimport():
    """Import common stdlib modules while still root (fallback: stdlib unreadable later)."""
    import importlib

    for name in _PREIMPORT:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001, S110 - optional module; the candidate gets the ImportError
            pass


def _drop_privileges(uid, gid):
    if uid >= 0:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            os._exit(126)


def _child_main(argv):
    mode, uid, gid, preimport = argv[0], int(argv[1]), int(argv[2]), argv[3] == "1"
    if preimport:
        _preimport()
    _drop_privileges(uid, gid)
    sys.argv = ["solution.py"]
    if mode == "stdio":
        src = _read_fd(3)
        os.close(3)
        os._exit(_run_main(src))
    else:
        _serve_rpc()


def _read_fd(fd):
    chunks = []
    while True:
        c = os.read(fd, 1 << 20)
        if not c:
            return b"".join(chunks)
        chunks.append(c)


def _run_main(src):
    """Run ``src`` as ``__main__``; flush stdio; return the process exit code."""
    import types

    mod = types.ModuleType("__main__")
    sys.modules["__main__"] = mod
    code = 0
    try:
        exec(compile(src, "solution.py", "exec"), mod.__dict__)  # noqa: S102 - the candidate, sandboxed
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code & 0xFF
        else:
            code = 1
    except BaseException:  # noqa: BLE001 - any candidate failure is exit code 1
        import traceback

        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - e.g. the candidate closed stdout
            code = code or 1
    return code


def _serve_rpc():
    import types

    out = 4
    table = {}

    def store(v):
        table[id(v)] = v
        return {"h": id(v)}

    def send(obj):
        data = memoryview((ascii(obj) + "\n").encode())
        while data:  # blocking is fine: the runner reads
            data = data[os.write(out, data):]

    first = _recv_frame(3)
    mod = types.ModuleType("solution")
    sys.modules["solution"] = mod
    try:
        exec(compile(first["program"], "solution.py", "exec"), mod.__dict__)  # noqa: S102 - sandboxed
    except BaseException as e:  # noqa: BLE001 - SystemExit included: an early exit defines nothing
        send({"ready": False, "err": type(e).__name__})
        return
    send({"ready": True})
    ns = mod.__dict__
    while True:
        try:
            req = _recv_frame(3)
        except (_Broken, EOFError, ValueError, TypeError):
            return
        try:
            load = table.__getitem__
            op = req["op"]
            if op == "global":
                if req["name"] not in ns:
                    raise NameError(req["name"])
                val = ns[req["name"]]
            else:
                target = table[req["ref"]]
                args = [_decode(a, load) for a in req.get("args", [])]
                if op == "call":
                    kw = {k: _decode(v, load) for k, v in req.get("kwargs", {}).items()}
                    val = target(*args, **kw)
                elif op == "getattr":
                    val = getattr(target, req["name"])
                elif op == "list":
                    import itertools

                    val = list(itertools.islice(target, _MAX_ITEMS))
                elif op == "len":
                    val = len(target)
                elif op == "getitem":
                    val = target[args[0]]
                elif op == "contains":
                    val = args[0] in target
                elif op == "bool":
                    val = bool(target)
                elif op == "str":
                    val = str(target)
                else:
                    raise ValueError(op)
            res = {"ok": _encode(val, store)}
        except BaseException as e:  # noqa: BLE001 - reported to the runner, which fails the test
            res = {"err": type(e).__name__}
        send(res)


# --------------------------------------------------------------------------- runner side
class _Timeout(BaseException):
    """Raised in the runner when a test exceeds its wall-clock budget."""


class _Broken(Exception):
    """The child hung up or sent garbage."""


class RemoteError(Exception):
    """An exception raised inside the candidate whose type is not a builtin one."""


def _on_alarm(signum, frame):
    raise _Timeout()


class _Runner:
    def __init__(self, spec):
        self.spec = spec
        self.lim = spec["limits"]
        self.uid, self.gid = spec["uid"], spec["gid"]
        self.exe = sys.executable
        self.dir = os.path.dirname(os.path.abspath(__file__))
        # Until the assert sources (the only secret the sandbox ever holds) are read,
        # candidates may run in plain forks of the runner; afterwards only in fresh
        # interpreters.
        self.secrets_loaded = False
        self.env = {"PATH": "/usr/bin:/bin", "HOME": os.getcwd(), "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
        self.preimport = "0"
        # Without a private uid, RLIMIT_NPROC counts the processes this uid already has where
        # it is counted (the sandbox's user namespace under unprivileged bubblewrap): add them.
        self.nproc_base = 0 if self.uid >= 0 else _count_processes() if spec.get("pid1") else 0

    # ---- process control
    def spawn(self, mode, fds, fresh=True):
        """Start a candidate process with ``fds`` ({target: source}) wired up.

        ``fresh``: fork + exec a new interpreter, so nothing of the runner's memory is
        inherited - required once the runner holds secrets. Otherwise the candidate runs
        in a plain fork, which saves an interpreter start per test.
        """
        import fcntl

        pid = os.fork()
        if pid:
            return pid
        try:
            os.setsid()
            high = {t: fcntl.fcntl(s, fcntl.F_DUPFD, 64) for t, s in fds.items()}
            for t, s in high.items():
                os.dup2(s, t)
            os.closerange(max(fds) + 1, 1 << 16)
            self._limits()
            if fresh:
                argv = [self.exe, "-I", "-S", "-B", "-c", STUB % self.dir, "child", mode, str(self.uid),
                        str(self.gid), self.preimport]
                os.execve(self.exe, argv, self.env)
            else:
                os.environ.clear()
                os.environ.update(self.env)
                _drop_privileges(self.uid, self.gid)
                sys.argv = ["solution.py"]
                if mode == "stdio":
                    os._exit(_run_main(self.spec["program"]))
                _serve_rpc()
                os._exit(0)
        finally:
            os._exit(127)

    def _limits(self):
        lim = self.lim
        cpu = int(lim["cpu_s"]) + 1
        pairs = [
            (resource.RLIMIT_CPU, (cpu, cpu + 1)),
            (resource.RLIMIT_AS, (lim["memory_mb"] << 20,) * 2),
            (resource.RLIMIT_FSIZE, (lim["file_size_mb"] << 20,) * 2),
            (resource.RLIMIT_NOFILE, (lim["open_files"],) * 2),
            (resource.RLIMIT_CORE, (0, 0)),
            (resource.RLIMIT_NPROC, (lim["nproc"] + self.nproc_base,) * 2),
        ]
        for res, val in pairs:
            resource.setrlimit(res, val)

    def sweep(self, pgid, verify=False):
        """Kill every process the candidate may have left behind.

        With a dedicated uid we fork a helper that becomes that uid and calls
        ``kill(-1, SIGKILL)``: the kernel signals every process of the uid in one pass
        under the tasklist lock, and a fork racing with it is aborted because its parent
        already has SIGKILL pending - so a fork bomb cannot outrun it. ``verify`` also
        scans /proc afterwards and repeats if anything is left (used once per run).
        Without a dedicated uid (unprivileged fallback) only the candidate's process
        group can be killed.
        """
        if self.uid < 0:
            if self.spec.get("pid1"):
                # Unprivileged bubblewrap: we are PID 1 of the sandbox's PID namespace, so a
                # helper's kill(-1) reaches every other process in it (all candidates) but
                # never us - the same one-pass, fork-bomb-proof sweep as with a private uid.
                pid = os.fork()
                if pid == 0:
                    try:
                        os.kill(-1, signal.SIGKILL)
                    finally:
                        os._exit(0)
                os.waitpid(pid, 0)
                return
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
            return
        for _ in range(5):
            pid = os.fork()
            if pid == 0:
                try:
                    os.setgroups([])
                    os.setgid(self.gid)
                    os.setuid(self.uid)
                    os.kill(-1, signal.SIGKILL)
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
            if not verify or not _pids_of_uid(self.uid):
                return

    def reap(self, pid):
        """Wait for ``pid`` (already killed or exited); return its exit code / -signal.

        Also reaps orphans re-parented to us (the runner is a child subreaper), so no
        zombie outlives the run.
        """
        try:
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            code = -9
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        return code

    # ---- stdin/stdout tests
    def run_stdio(self, k, stdin_text):
        src_fd = _memfd(self.spec["program"].encode("utf-8", "surrogatepass"))
        in_fd = _memfd(stdin_text.encode("utf-8", "surrogatepass"))
        r, w = os.pipe()
        null = os.open(os.devnull, os.O_WRONLY)
        pid = self.spawn("stdio", {0: in_fd, 1: w, 2: null, 3: src_fd}, fresh=self.secrets_loaded)
        for fd in (src_fd, in_fd, w, null):
            os.close(fd)
        deadline = time.monotonic() + self.spec["timeout_s"]
        out, status = self._collect(r, pid, deadline)
        os.close(r)
        rc = self.reap(pid)
        if status == "ok" and rc != 0:
            status = "error"
        return {"kind": "stdio", "k": k, "status": status, "rc": rc, "out": out[: self.lim["output_bytes"]]}

    def _collect(self, r, pid, deadline):
        cap, buf = self.lim["output_bytes"], bytearray()
        try:
            pidfd = os.pidfd_open(pid)  # readable once the process exits (Linux >= 5.3)
        except (AttributeError, OSError):
            pidfd = None  # older kernels: poll without reaping
        status, exited = "ok", False
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    status = "timeout"
                    break
                watch = [r] if exited or pidfd is None else [r, pidfd]
                ready = select.select(watch, [], [], left if pidfd is not None else min(left, 0.01))[0]
                if not exited and (pidfd in ready if pidfd is not None else _has_exited(pid)):
                    exited = True
                    # the main process is gone: kill stragglers so the pipe reaches EOF
                    self.sweep(pid)
                    deadline = min(deadline, time.monotonic() + 1.0)
                if r in ready:
                    chunk = os.read(r, 1 << 16)
                    if not chunk:
                        break
                    buf += chunk
                    if len(buf) > cap:
                        status = "output_limit"
                        break
        finally:
            if pidfd is not None:
                os.close(pidfd)
        if status != "ok" or not exited:
            self.sweep(pid)
        return bytes(buf), status

    # ---- assert tests
    def start_child(self):
        """An RPC child with the candidate module loaded, or None if loading fails."""
        child = _Child(self)
        if child.start(time.monotonic() + self.spec["timeout_s"]):
            return child
        child.close()
        return None

    def run_asserts(self, tests, child):
        """Judge each assert test; ``child`` was started before the tests were read."""
        alive = child is not None  # a module that fails to load cannot pass anything
        t = self.spec["timeout_s"]
        for k, src in enumerate(tests):
            if child is None and alive:
                child = self.start_child()  # after a crash/timeout: fresh interpreter
                alive = child is not None
            ok = False
            if child is not None:
                ok, healthy = self.judge(src, child, time.monotonic() + t)
                if not healthy:
                    child.close()
                    child = None
            yield {"kind": "assert", "k": k, "pass": ok}
        if child is not None:
            child.close()

    def judge(self, src, child, deadline):
        """Execute one test's source here, with candidate names bound to remote proxies."""
        import ast
        import builtins
        import importlib

        try:
            tree = ast.parse(src, "<test>", "exec")
        except SyntaxError:
            return False, True
        loads, stores = set(), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                (loads if isinstance(node.ctx, ast.Load) else stores).add(node.id)
            elif isinstance(node, ast.alias):
                stores.add((node.asname or node.name).split(".")[0])
        env = {"__builtins__": builtins, "__name__": "__test__"}
        child.deadline = deadline
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 0.001))
        try:
            for name in sorted(loads - stores):
                if hasattr(builtins, name):
                    continue
                if name in _TRUSTED_MODULES:
                    env[name] = importlib.import_module(name)
                    continue
                try:
                    env[name] = child.rpc({"op": "global", "name": name})
                except NameError:
                    pass
            exec(compile(tree, "<test>", "exec"), env)  # noqa: S102 - dataset test code, in the runner
            return True, True
        except _Timeout:
            return False, False
        except _Broken:
            return False, False
        except BaseException:  # noqa: BLE001 - any other failure fails this test only
            return False, child.alive
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)


class _Child:
    """Runner-side handle on one RPC child process."""

    def __init__(self, runner):
        self.runner = runner
        self.alive = False
        self.deadline = 0.0

    def start(self, deadline):
        req_r, self.req_w = os.pipe()
        self.resp_r, resp_w = os.pipe()
        null = os.open(os.devnull, os.O_RDWR)
        self.pid = self.runner.spawn("rpc", {0: null, 1: null, 2: null, 3: req_r, 4: resp_w},
                                     fresh=self.runner.secrets_loaded)
        for fd in (req_r, resp_w, null):
            os.close(fd)
        self.lines = _Lines(self.resp_r)
        self.alive = True
        self.deadline = deadline
        try:
            self._send({"program": self.runner.spec["program"]})
            reply = _parse_reply(self.lines.read(deadline, limit=4096))
            return reply.get("ready") is True
        except (_Timeout, _Broken):
            self.alive = False
            return False

    def _send(self, obj):
        data = marshal.dumps(obj)
        _write_all(self.req_w, struct.pack("<I", len(data)) + data, self.deadline)

    def rpc(self, req):
        if not self.alive:
            raise _Broken("dead")
        try:
            self._send(req)
            reply = _parse_reply(self.lines.read(self.deadline))
        except (_Timeout, _Broken):
            self.alive = False
            raise
        if "err" in reply:
            import builtins

            cls = getattr(builtins, str(reply["err"]), None)
            if isinstance(cls, type) and issubclass(cls, Exception):
                raise cls("raised in candidate")
            raise RemoteError(str(reply["err"]))
        return _decode(reply.get("ok"), lambda ref: _Remote(self, ref))

    def close(self):
        for fd in (self.req_w, self.resp_r):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass
        self.runner.sweep(self.pid)
        self.runner.reap(self.pid)
        self.alive = False


def _arg(v):
    def store(x):
        if isinstance(x, _Remote):
            return {"h": x._ref}
        raise TypeError(f"cannot pass {type(x).__name__} to the candidate")

    return _encode(v, store)


class _Remote:
    """Opaque proxy for a non-plain object living in the candidate process."""

    __slots__ = ("_child", "_ref")

    def __init__(self, child, ref):
        self._child, self._ref = child, ref

    def _rpc(self, op, *args, **extra):
        return self._child.rpc({"op": op, "ref": self._ref, "args": [_arg(a) for a in args], **extra})

    def __call__(self, *args, **kwargs):
        return self._rpc("call", *args, kwargs={k: _arg(v) for k, v in kwargs.items()})

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._rpc("getattr", name=name)

    def __iter__(self):
        return iter(self._rpc("list"))

    def __len__(self):
        return self._rpc("len")

    def __getitem__(self, key):
        return self._rpc("getitem", key)

    def __contains__(self, item):
        return self._rpc("contains", item)

    def __bool__(self):
        return self._rpc("bool")

    def __str__(self):
        text = self._rpc("str")
        return text if isinstance(text, str) else "<remote object>"

    def __eq__(self, other):
        return isinstance(other, _Remote) and other._ref == self._ref

    def __hash__(self):
        return hash(self._ref)

    def __repr__(self):
        return "<remote object>"


# --------------------------------------------------------------------------- helpers
def _has_exited(pid):
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _memfd(data):
    fd = os.memfd_create("data", os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _pids_of_uid(uid):
    """Live (non-zombie) pids whose real/effective/saved uid is ``uid``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                text = f.read()
        except OSError:
            continue
        state = uids = None
        for line in text.splitlines():
            if line.startswith("State:"):
                state = line.split()[1]
            elif line.startswith("Uid:"):
                uids = line.split()[1:4]
        if uids and str(uid) in uids and state != "Z":
            found.append(int(name))
    return found


_KEEP_TOP = frozenset(["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "proc", "dev", "tmp"])
_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x1, 0x20, 0x1000, 0x4000, 0x40000


def _fallback_isolate(spec, libc):
    """Best-effort isolation without bubblewrap (see sandbox.py for the threat model).

    As root: a private network namespace (no interface up) and a private mount
    namespace in which the working dir, /tmp, /var/tmp and /dev/shm are small fresh
    tmpfs mounts and every other top-level directory except the system ones (/usr,
    /lib*, /bin, /etc, /proc, /dev) is covered by an empty read-only tmpfs - /root,
    /home, /work, /run (unix sockets), /var ... - with only the interpreter's install and
    this harness bound back read-only, wherever they live (a checkout or virtualenv
    under /tmp included). So the candidate can neither reach the network, nor leave
    files on the host, nor read the dataset, the repo or anyone's home.
    """
    info = {"netns": False, "mountns": False}
    if os.geteuid() != 0:
        return info
    clone_newns, clone_newnet = 0x00020000, 0x40000000
    info["netns"] = libc.unshare(clone_newnet) == 0
    if libc.unshare(clone_newns) != 0:
        return info
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return info
    real = os.path.realpath
    wanted = {real(sys.base_prefix), real(sys.base_exec_prefix), os.path.dirname(real(sys.executable)),
              os.path.dirname(os.path.abspath(__file__))}
    expose = sorted(p for p in wanted if not any(p.startswith(q + "/") for q in wanted))
    handles = {p: os.open(p, os.O_PATH) for p in expose}  # reachable after the covers go on
    try:
        size = f"size={spec['limits']['tmpfs_mb']}m,mode=".encode()
        work = os.getcwd().encode()
        ok = libc.mount(b"tmpfs", work, b"tmpfs", 0, size + b"0777") == 0
        os.chdir(work)  # keep a handle on the new mount before /tmp is covered
        covered = []
        for path in ("/tmp", "/var/tmp", "/dev/shm"):
            if os.path.isdir(path) and not os.path.islink(path):
                ok &= libc.mount(b"tmpfs", path.encode(), b"tmpfs", 0, size + b"1777") == 0
                covered.append(path)
        ok &= _bind_back(libc, covered, expose, handles, readonly_top=False)
        info["mountns"] = ok and _hide_host_dirs(libc, expose, handles)
    finally:
        for fd in handles.values():
            os.close(fd)
    return info


def _bind_back(libc, tops, expose, handles, readonly_top):
    """Bind each exposed path lying under a freshly covered ``tops`` dir back in, read-only."""
    ok = True
    for top in tops:
        for path in expose:
            if path.startswith(top + "/"):
                os.makedirs(path, 0o755, exist_ok=True)
                for d in _parents(path, top):  # traversable by the candidate uid
                    os.chmod(d, 0o755)
                src = f"/proc/self/fd/{handles[path]}".encode()
                ok &= libc.mount(src, path.encode(), None, _MS_BIND | _MS_REC, None) == 0
                ok &= libc.mount(None, path.encode(), None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY, None) == 0
        if readonly_top:
            ok &= libc.mount(None, top.encode(), None, _MS_REMOUNT | _MS_RDONLY, None) == 0
    return ok


def _parents(path, top):
    out, d = [], os.path.dirname(path)
    while d.startswith(top + "/"):
        out.append(d)
        d = os.path.dirname(d)
    return out


def _hide_host_dirs(libc, expose, handles):
    ok = True
    tops = []
    for entry in sorted(os.listdir("/")):
        top = "/" + entry
        if entry in _KEEP_TOP or os.path.islink(top) or not os.path.isdir(top):
            continue
        if libc.mount(b"tmpfs", top.encode(), b"tmpfs", 0, b"size=1m,mode=0755") != 0:
            ok = False
            continue
        tops.append(top)
    return _bind_back(libc, tops, expose, handles, readonly_top=True) and ok


def _count_processes():
    """Live processes visible in /proc (in the sandbox: all of them share our uid)."""
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                        n += 1
            except (OSError, IndexError):
                pass
    return n


def _world_traversable(path):
    """Can any uid reach ``path``? (decides whether children must pre-import the stdlib)"""
    while path and path != "/":
        try:
            if not os.stat(path).st_mode & 0o001:
                return False
        except OSError:
            return False
        path = os.path.dirname(path)
    return True


_SECCOMP_NRS = {
    # arch: (audit arch, clone, clone3, blocked syscalls)
    "x86_64": (0xC000003E, 56, 435, [272, 308, 165, 166, 155, 101, 321, 323, 298, 250, 248, 249, 425,
                                     428, 429, 430, 431, 432, 433, 442, 169, 175, 313, 246, 320, 310, 311]),
    "aarch64": (0xC00000B7, 220, 435, [97, 268, 40, 39, 41, 117, 280, 282, 241, 219, 217, 218, 425,
                                       428, 429, 430, 431, 432, 433, 442, 142, 105, 273, 104, 294, 270, 271]),
}


def seccomp_program():
    """Classic-BPF seccomp filter (bytes of ``struct sock_filter[]``) or None if unsupported.

    Denies namespace creation (unshare, setns, clone with CLONE_NEW*; clone3 answers
    ENOSYS so libc falls back to clone), mounts, ptrace, bpf, perf, keyrings, io_uring
    and module/kexec calls. Candidates have no capabilities, but an unprivileged user
    namespace would give them mount rights (e.g. an unbounded tmpfs in RAM) and a larger
    kernel attack surface. Foreign-ABI syscalls (x32, i386 via int 0x80) are denied too.
    """
    arch = _SECCOMP_NRS.get(os.uname().machine)
    if arch is None:
        return None
    audit, nr_clone, nr_clone3, blocked = arch
    eperm, enosys = 0x00050000 | 1, 0x00050000 | 38
    allow = 0x7FFF0000
    ld, jeq, jset, jge, ret = 0x20, 0x15, 0x45, 0x35, 0x06
    ns_flags = 0x10000000 | 0x00020000 | 0x40000000 | 0x04000000 | 0x08000000 | 0x20000000 | 0x02000000
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, audit), (ret, 0, 0, eperm), (ld, 0, 0, 0)]
    if audit == 0xC000003E:
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, eperm)]  # x32 ABI
    for nr in blocked:
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, eperm)]
    prog += [(jeq, 0, 1, nr_clone3), (ret, 0, 0, enosys)]
    prog += [(jeq, 0, 3, nr_clone), (ld, 0, 0, 16), (jset, 0, 1, ns_flags), (ret, 0, 0, eperm)]
    prog += [(ret, 0, 0, allow)]
    return b"".join(struct.pack("HBBI", *ins) for ins in prog)


def _install_seccomp(libc):
    """Install ``seccomp_program()`` on this process (fallback backend; bwrap does it itself)."""
    import ctypes

    raw = seccomp_program()
    if raw is None:
        return False
    buf = ctypes.create_string_buffer(raw)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(raw) // 8, ctypes.addressof(buf))
    pr_set_no_new_privs, pr_set_seccomp, mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
        return False
    return libc.prctl(pr_set_seccomp, mode_filter, ctypes.byref(fprog), 0, 0) == 0


def _seccomp_active():
    with open("/proc/self/status") as f:
        return any(line.startswith("Seccomp:") and line.split()[1] == "2" for line in f)


def _emit(obj):
    data = marshal.dumps(obj)
    data = memoryview(struct.pack("<I", len(data)) + data)
    while data:
        data = data[os.write(1, data):]


def _runner_main():
    spec = _recv_frame(0)  # part 1 only: program, stdin inputs, limits (no secrets)
    # the runner evaluates test expressions on candidate-supplied data: bound it too
    mem = max(1024, spec["limits"]["memory_mb"] * 2) << 20
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    hello = {"uid": spec["uid"], "pid": os.getpid()}
    if spec.get("pid1"):
        # PID 1 of the sandbox: the kernel drops any signal a candidate sends us unless we
        # handle it, so drop Python's SIGINT handler; and keep our /proc entries (memory,
        # fds, environment) unreadable to candidates, which share our uid here.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
    if spec["backend"] == "fallback":
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        hello.update(_fallback_isolate(spec, libc))
        pr_set_child_subreaper = 36  # orphans re-parent to us and get reaped in reap()
        hello["subreaper"] = libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0
        # Without a uid switch the candidate shares our uid: at least keep it out of our
        # /proc entries (fds, memory), so it cannot write frames to our stdout.
        pr_set_dumpable = 4
        libc.prctl(pr_set_dumpable, 0, 0, 0, 0)
        if spec.get("seccomp", True):
            _install_seccomp(libc)
    hello["seccomp"] = _seccomp_active()
    runner = _Runner(spec)
    preimport = spec["uid"] >= 0 and not _world_traversable(os.path.dirname(os.__file__))
    runner.preimport = "1" if preimport else "0"
    if preimport:
        _preimport()
    hello["preimport"] = preimport
    _emit({"hello": hello})
    for k, stdin_text in enumerate(spec["stdio"]):
        _emit(runner.run_stdio(k, stdin_text))
    if spec["n_asserts"]:
        child = runner.start_child()  # forked before any expected value is in memory
        runner.secrets_loaded = True
        tests = _recv_frame(0)["asserts"]
        for res in runner.run_asserts(tests, child):
            _emit(res)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if runner.uid >= 0 or spec.get("pid1"):
        runner.sweep(0, verify=True)
    _emit({"done": True})


def main(argv):
    """Entry point: ``[]`` -> runner, ``["child", ...]`` -> candidate child."""
    if argv and argv[0] == "child":
        _child_main(argv[1:])
    else:
        _runner_main()


if __name__ == "__main__":
    main(sys.argv[1:])
