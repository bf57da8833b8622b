"""Code reward and its sandbox: honest programs score honestly, hostile ones score 0.

Every hostile program runs under each backend that isolates for the current user
(bubblewrap as root and as an ordinary user, the fallback as root) with a short per-test
timeout, and the host is checked afterwards: no files written, no secrets read, no
connections made, no processes left behind, trainer alive. As root (CI), the whole module
also runs again as an unprivileged user (``test_unprivileged_suite``).
"""

import hashlib
import json
import os
import pathlib
import socket
import tempfile
import textwrap
import threading
import time
import uuid

import pytest

from reasoning_rl.rewards import RewardComputer, RewardSpec, get, sandbox, score_code

REPO = pathlib.Path(__file__).resolve().parents[1]
TOKEN = uuid.uuid4().hex[:12]
SECRET = f"rrl-secret-{uuid.uuid4().hex}"
HOST_SENTINEL = f"/tmp/rrl_sentinel_{TOKEN}"
REPO_SENTINEL = str(REPO / f"rrl_pwned_{TOKEN}.txt")
HOME_SECRET_NAME = f".rrl_home_secret_{TOKEN}"
T = 1.0  # per-test timeout for hostile programs

ROOT = os.geteuid() == 0
NO_BWRAP = ("bubblewrap is not installed or cannot start a sandbox here: install it (apt-get install bubblewrap; "
            "`make test` does as root) - these tests never run candidates unisolated instead")
BACKENDS = [
    pytest.param("bwrap", marks=pytest.mark.skipif(not sandbox.bwrap_available(), reason=NO_BWRAP)),
    pytest.param("fallback", marks=pytest.mark.skipif(not ROOT, reason="the fallback sandbox isolates only as root")),
]

DOUBLE_IO = [{"stdin": "3\n", "stdout": "6\n"}, {"stdin": "10\n", "stdout": "20"}]
DOUBLE_ASSERT = [{"assert": "assert double(3) == 6"}, {"assert": "assert double(10) == 20"}]
DOUBLE_ALL = DOUBLE_IO + DOUBLE_ASSERT
GOOD_DOUBLE = "def double(n):\n    return 2 * n\n\nif __name__ == '__main__':\n    print(double(int(input())))\n"


def _protected_digest():
    h = hashlib.sha256()
    for p in sorted((REPO / "reasoning_rl" / "rewards").glob("*.py")) + [pathlib.Path(__file__)]:
        h.update(p.read_bytes())
    return h.hexdigest()


DIGEST = _protected_digest()


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def run(program, tests, backend, timeout_s=T):
    return score_code(textwrap.dedent(program), tests, timeout_s, backend=backend)


# --------------------------------------------------------------------------- honest programs
def test_honest_full_and_partial(backend):
    assert run(GOOD_DOUBLE, DOUBLE_ALL, backend, 5.0) == 1.0
    buggy = "def double(n):\n    return 6 if n == 3 else n\nif __name__ == '__main__':\n    print(double(int(input())))\n"
    assert run(buggy, DOUBLE_ALL, backend, 5.0) == 0.5
    assert run(GOOD_DOUBLE, DOUBLE_IO + [{"stdin": "1", "stdout": "3"}], backend, 5.0) == pytest.approx(2 / 3)


def test_honest_assert_features(backend):
    program = """
        import math
        class Solution:
            def two_sum(self, xs, target):
                seen = {}
                for i, x in enumerate(xs):
                    if target - x in seen:
                        return [seen[target - x], i]
                    seen[x] = i
        def evens(n):
            yield from range(0, n, 2)
        def root(x):
            if x < 0:
                raise ValueError("negative")
            return math.sqrt(x)
        def stats(xs):
            return {"min": min(xs), "max": max(xs), "set": set(xs), "t": tuple(xs)}
        LIMIT = 10
    """
    tests = [
        {"assert": "assert Solution().two_sum([2, 7, 11], 9) == [0, 1]"},
        {"assert": "assert list(evens(7)) == [0, 2, 4, 6]"},
        {"assert": "assert math.isclose(root(2.0), 1.41421356, rel_tol=1e-6)"},
        {"assert": "try:\n    root(-1)\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError"},
        {"assert": "assert stats([3, 1, 2]) == {'min': 1, 'max': 3, 'set': {1, 2, 3}, 't': (3, 1, 2)}"},
        {"assert": "assert all(root(x * x) == x for x in range(5))"},
        {"assert": "assert LIMIT == 10 and isinstance(LIMIT, int)"},
        {"assert": "assert root(4) == 3"},  # genuinely wrong expectation -> fails
        {"assert": "assert undefined_fn(1) == 1"},
        {"assert": "this is not python"},
    ]
    assert run(program, tests, backend, 5.0) == pytest.approx(7 / 10)


def test_honest_stdio_features(backend):
    program = """
        import sys, threading
        data = sys.stdin.read().split()
        with open("scratch.txt", "w") as f:     # the private working dir is writable
            f.write(" ".join(data))
        out = []
        t = threading.Thread(target=lambda: out.append(sum(map(int, open("scratch.txt").read().split()))))
        t.start(); t.join()
        print(out[0]); print("héllo ✓")
    """
    big = " ".join(["1"] * 300_000)  # > pipe buffers both ways
    tests = [{"stdin": "1 2 3", "stdout": "6\nhéllo ✓"}, {"stdin": big, "stdout": "300000 héllo ✓"}]
    assert run(program, tests, backend, 10.0) == 1.0


def test_code_reward_extracts_program_and_all_or_nothing(backend):
    fn = get("code")
    completion = "<think>easy</think>\n<answer>\n```python\n" + GOOD_DOUBLE + "```\n</answer>"
    ex = {"tests": DOUBLE_ALL}
    assert fn(completion, ex, backend=backend) == 1.0
    partial = {"tests": DOUBLE_ALL + [{"stdin": "1", "stdout": "0"}]}
    assert fn(completion, partial, backend=backend) == 0.8
    assert fn(completion, partial, all_or_nothing=True, backend=backend) == 0.0
    assert fn("```python\nprint(6)\n```", {"tests": json.dumps(DOUBLE_IO)}, backend=backend) == 0.5


@pytest.mark.parametrize("program,tests", [
    (None, DOUBLE_IO), (b"print(6)", DOUBLE_IO[:1]), ("", DOUBLE_IO), ("print(1)", []), ("print(1)", None),
    ("print(1)", "not json"), ("print(1)", [{"weird": 1}, 5, None]), ("x" * 2_000_000, DOUBLE_IO),
    ("\x00\ud800", DOUBLE_IO), (12, DOUBLE_IO),
])
def test_score_code_never_raises(program, tests):
    score = score_code(program, tests, 2.0)
    assert 0.0 <= score <= 1.0
    if program == b"print(6)":
        assert score == 1.0


# --------------------------------------------------------------------------- hostile programs
# Looks through every readable page of its own process for the test source, e.g.
# "double(10) == 20", and answers with the expected value it finds (-1 if none).
# The _control variant proves the scanner works: it plants such a string itself.
MEMORY_SCANNER = textwrap.dedent("""
    import ctypes, re
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: make /proc/self/mem readable again
    def scan(n):
        pattern = re.compile(rb"double\\(%d\\) == (\\d+)" % n)
        with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
            for line in maps:
                addr, perms = line.split()[:2]
                if not perms.startswith("r"):
                    continue
                lo, hi = (int(x, 16) for x in addr.split("-"))
                try:
                    mem.seek(lo)
                    hit = pattern.search(mem.read(hi - lo))
                except (OSError, ValueError, OverflowError, MemoryError):
                    continue
                if hit:
                    return int(hit.group(1))
        return -1
""")

HOSTILE = {
    "infinite_loop": ("while True:\n    pass\n", DOUBLE_ALL, 0.0),
    "infinite_loop_in_function": ("def double(n):\n    while True: pass\n", DOUBLE_ASSERT, 0.0),
    "sleep_past_timeout": ("import time\ntime.sleep(60)\nprint(6)\n", DOUBLE_IO[:1], 0.0),
    "ignore_signals_and_spin": ("""
                for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGXCPU, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        while True: pass
    """, DOUBLE_IO[:1], 0.0),
    "fork_bomb": ("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """, DOUBLE_IO[:1], 0.0),
    "thread_bomb": ("""
        import threading, time
        ts = []
        while True:
            t = threading.Thread(target=time.sleep, args=(30,)); t.start(); ts.append(t)
    """, DOUBLE_IO[:1], 0.0),
    "raise_rlimits_then_fork": ("""
        import os, resource
        for r in (resource.RLIMIT_NPROC, resource.RLIMIT_AS, resource.RLIMIT_CPU):
            try:
                resource.setrlimit(r, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)); print("raised")
            except (ValueError, OSError):
                pass
        try:
            os.setuid(0); print("root")
        except OSError:
            pass
    """, [{"stdin": "", "stdout": "raised"}, {"stdin": "", "stdout": "root"}], 0.0),
    "memory_bomb": ("x = []\nwhile True:\n    x.append(bytearray(50 << 20))\n", DOUBLE_IO[:1], 0.0),
    "memory_bomb_in_assert": ("def double(n):\n    return len(bytearray(8 << 30))\n", DOUBLE_ASSERT, 0.0),
    "huge_output": ("import sys\nwhile True:\n    sys.stdout.write('6\\n' * 10000)\n", DOUBLE_IO[:1], 0.0),
    "huge_return_value": ("def double(n):\n    return [0] * (10 ** 8)\n", DOUBLE_ASSERT[:1], 0.0),
    "deep_recursion": ("""
        import sys
        sys.setrecursionlimit(10 ** 9)
        def f(n):
            return f(n + 1) + 1
        print(f(0))
    """, DOUBLE_IO[:1], 0.0),
    "fill_disk": ("""
        import os
        i = 0
        while True:
            with open(f"big{i}", "wb") as f:
                f.write(b"x" * (64 << 20))
            i += 1
    """, DOUBLE_IO[:1], 0.0),
    "write_host_tmp_and_repo": (f"""
        import os
        for path in ({HOST_SENTINEL!r}, {REPO_SENTINEL!r}, "/var/tmp/rrl_{TOKEN}", "/dev/shm/rrl_{TOKEN}"):
            try:
                open(path, "w").write("pwned")
            except OSError:
                pass
        # show whether anything stuck (in the sandbox's own view)
        print(int(os.path.exists({REPO_SENTINEL!r})))
    """, [{"stdin": "", "stdout": "1"}], 0.0),
    "tamper_with_harness_and_tests": (f"""
        import glob, os
        hits = 0
        for pattern in ("/rrl/*", {str(REPO / 'reasoning_rl/rewards/*.py')!r}, {str(REPO / 'tests/*.py')!r},
                        "/proc/1/cwd/*", "/proc/*/cwd/*.py"):
            for path in glob.glob(pattern):
                try:
                    with open(path, "a") as f:
                        f.write("\\nraise SystemExit(0)  # pwned\\n")
                    hits += 1
                except OSError:
                    pass
        print(hits)
    """, [{"stdin": "", "stdout": "0"}], 1.0),  # honest: it really could not tamper
    "read_secret_env": ("""
        import os, glob
        found = set()
        v = os.environ.get("RRL_TEST_SECRET")
        if v: found.add(v)
        for path in glob.glob("/proc/*/environ"):
            try:
                for kv in open(path, "rb").read().split(b"\\0"):
                    if kv.startswith(b"RRL_TEST_SECRET="):
                        found.add(kv.split(b"=", 1)[1].decode())
            except OSError:
                pass
        print(" ".join(sorted(found)))
    """, [{"stdin": "", "stdout": SECRET}], 0.0),
    "read_host_home": (f"""
        import os
        for home in (os.path.expanduser("~"), "/root", os.environ.get("HOME", "")):
            try:
                print(open(os.path.join(home, {HOME_SECRET_NAME!r})).read())
            except OSError:
                pass
    """, [{"stdin": "", "stdout": SECRET}], 0.0),
    "network_connect": ("""
        import socket, sys
        port = int(input())
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=0.5)
            s.sendall(b"leak")
            print("connected")
        except OSError:
            pass
    """, None, 0.0),  # tests filled in by the test (needs the port)
    "kill_parent": ("""
        import os, signal
        for target in (os.getppid(), 1):
            for sig in (signal.SIGKILL, signal.SIGSTOP):
                try:
                    os.kill(target, sig)
                except OSError:
                    pass
        for pgid in (os.getpgid(os.getppid()), 1):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        print(2 * int(input()))
    """, DOUBLE_IO, 1.0),  # honest answer after failed attacks: 1.0 proves the harness survived
    "kill_everyone": ("import os, signal\nos.kill(-1, signal.SIGKILL)\n", DOUBLE_ALL, 0.0),
    "early_sys_exit": ("import sys\nsys.exit(0)\ndef double(n):\n    return 0\n", DOUBLE_ALL, 0.0),
    "early_os_exit": ("import os\nos._exit(0)\n", DOUBLE_ALL, 0.0),
    "exit_inside_function": ("import os\ndef double(n):\n    os._exit(0)\n", DOUBLE_ASSERT, 0.0),
    "sys_exit_inside_function": ("import sys\ndef double(n):\n    sys.exit(0)\n", DOUBLE_ASSERT, 0.0),
    "fake_pass_markers": ("""
        import os, sys, json, struct, marshal
        def double(n):
            return None
        fake = {"kind": "assert", "k": 0, "pass": True}
        print("PASS"); print("OK"); print(json.dumps(fake)); print("All tests passed")
        for fd in range(0, 256):
            for blob in (json.dumps({"ok": True}).encode() + b"\\n", json.dumps({"ready": True}).encode() + b"\\n",
                         struct.pack("<I", len(marshal.dumps(fake))) + marshal.dumps(fake)):
                try:
                    os.write(fd, blob)
                except OSError:
                    pass
    """, DOUBLE_ASSERT, 0.0),
    "always_equal_object": ("""
        class Liar:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __bool__(self): return True
            def __hash__(self): return 0
        def double(n):
            return Liar()
    """, DOUBLE_ASSERT, 0.0),
    "monkeypatch_builtins": ("""
        import builtins, sys
        builtins.AssertionError = type("Never", (Exception,), {})
        builtins.isinstance = lambda *a: True
        builtins.abs = lambda x: 0
        builtins.__import__ = None
        sys.modules["json"] = None
        def double(n):
            return -1
    """, DOUBLE_ASSERT + [{"assert": "assert abs(double(1)) == 2"}], 0.0),
    "forge_rpc_replies": ("""
        import marshal, os, struct, sys
        # A protocol-aware forger answering every request itself with the value 6: that is
        # exactly a function that always returns 6, so only the test expecting 6 passes.
        def frame():
            head = os.read(3, 4)
            if len(head) < 4:
                os._exit(0)
            (n,) = struct.unpack("<I", head)
            data = b""
            while len(data) < n:
                data += os.read(3, n - len(data))
            return marshal.loads(data)
        if sys.modules.get("__main__") is not None:
            os.write(4, ascii({"ready": True}).encode() + b"\\n")
            while True:
                req = frame()
                reply = {"ok": {"h": 1}} if req.get("op") == "global" else {"ok": {"i": "6"}}
                os.write(4, ascii(reply).encode() + b"\\n")
    """, DOUBLE_ASSERT, 0.5),
    "constant_output": ("print(6)\n", DOUBLE_IO, 0.5),
    "scan_memory_for_expected": ("""
        import gc
        def double(n):
            for o in gc.get_objects():
                if isinstance(o, str) and "assert" in o and "==" in o:
                    return int(o.rsplit("==", 1)[1])
                if isinstance(o, dict) and "stdout" in o:
                    return int(o["stdout"])
            return None
        if __name__ == "__main__":
            print(double(int(input())))
    """, DOUBLE_ALL, 0.0),
    "scan_process_memory": (MEMORY_SCANNER + textwrap.dedent("""
        def double(n):
            return scan(n)
    """), DOUBLE_ASSERT, 0.0),
    "scan_process_memory_after_respawn": (MEMORY_SCANNER + textwrap.dedent("""
        def double(n):
            if n == 3:
                while True:  # time out: the harness restarts the child in a fresh interpreter
                    pass
            return scan(n)
    """), DOUBLE_ASSERT, 0.0),
    # control: the scanner does find a value that really is in its memory
    "scan_process_memory_control": (MEMORY_SCANNER + textwrap.dedent("""
        HINT = "double(10) == 20"
        def double(n):
            return scan(n)
    """), DOUBLE_ASSERT, 0.5),
    "read_harness_memory": ("""
        import os, glob
        got = 0
        for path in glob.glob("/proc/*/mem") + glob.glob("/proc/*/environ"):
            pid = path.split("/")[2]
            if pid in ("self", "thread-self", str(os.getpid())):
                continue
            try:
                with open(path, "rb") as f:
                    f.read(1); got += 1
            except OSError:
                pass
        print(got)
    """, [{"stdin": "", "stdout": "0"}], 1.0),  # honest: nothing outside itself is readable
    "escape_via_namespaces": ("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        ok = []
        for flags in (0x10000000, 0x00020000, 0x40000000, 0x20000000):  # user, mount, net, pid
            ok.append(libc.unshare(flags) == 0)
        ok.append(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None) == 0)
        print(sum(ok))
    """, [{"stdin": "", "stdout": "0"}], 1.0),  # honest: every attempt fails
    "background_process_outlives_run": (f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(1.5 * {T} + 1)
                open({HOST_SENTINEL!r} + "_late", "w").write("late")
                os._exit(0)
            os._exit(0)
        print(6)
    """, DOUBLE_IO[:1], 1.0),  # the program itself is "correct"; its child must die
}


@pytest.fixture(scope="module")
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)
    yield srv
    srv.close()


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile(name, backend, listener, monkeypatch):
    assert len(HOSTILE) >= 25
    program, tests, expected = HOSTILE[name]
    monkeypatch.setenv("RRL_TEST_SECRET", SECRET)
    if name == "network_connect":
        tests = [{"stdin": str(listener.getsockname()[1]), "stdout": "connected"}]
    home_secret = None
    before = _my_processes()
    if name == "read_host_home":
        home_secret = pathlib.Path(os.path.expanduser("~")) / HOME_SECRET_NAME
        home_secret.write_text(SECRET)
    try:
        t0 = time.monotonic()
        score = run(program, tests, backend)
        elapsed = time.monotonic() - t0
    finally:
        if home_secret is not None:
            home_secret.unlink()
    assert score == pytest.approx(expected), name
    assert elapsed < 10 + 2 * len(tests) * T, f"{name} took {elapsed:.1f}s"
    # the host is untouched
    for path in (HOST_SENTINEL, REPO_SENTINEL, f"/var/tmp/rrl_{TOKEN}", f"/dev/shm/rrl_{TOKEN}"):
        assert not os.path.exists(path), path
    with pytest.raises(BlockingIOError):
        listener.accept()
    assert _protected_digest() == DIGEST
    # no process of the call is left, whatever uid it ran under
    assert not _new_processes(before), name
    # the trainer is healthy and the sandbox still works
    assert run(GOOD_DOUBLE, DOUBLE_IO[:1], backend, 5.0) == 1.0


def _my_processes() -> set[int]:
    """Live pids of this user other than this process's own (non-sandbox) children."""
    me = str(os.getuid())
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open(f"/proc/{name}/status") as f:
                    fields = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
            except OSError:
                continue
            if fields.get("Uid", "").split()[:1] == [me] and not fields.get("State", "").strip().startswith("Z"):
                out.add(int(name))
    return out


def _new_processes(before: set[int], wait_s: float = 5.0) -> set[int]:
    """Sandbox processes that appeared during a call and are still alive: as root, those of this process's
    candidate uids; as an ordinary user, new bwrap / runner / candidate processes of this user."""
    deadline = time.monotonic() + wait_s
    while True:
        if ROOT:  # candidates run under this process's own uid range (other test workers sandbox as root too)
            new = {pid for uid in _live_uids(sandbox.candidate_uid_range()) for pid in sandbox.host_pids_of_uid(uid)}
        else:  # as an ordinary user (the suite runs serially then): anything of the sandbox's that is new
            new = {p for p in _my_processes() - before if _is_sandbox_process(p)}
        if not new or time.monotonic() > deadline:
            return new
        time.sleep(0.1)


def _is_sandbox_process(pid: int) -> bool:
    """bwrap, the runner or a candidate (not e.g. a math-verify worker or a pytest-xdist helper)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return b"bwrap" in cmd or b"_runner" in cmd or cmd.startswith(b"solution")


def test_no_stray_processes_or_files(backend):
    """Runs last in this module (pytest keeps file order within a worker)."""
    before = _my_processes()
    run(HOSTILE["background_process_outlives_run"][0], DOUBLE_IO[:1], backend)
    time.sleep(1.5 * T + 1.5)  # past the moment the escaped child would have written
    assert not os.path.exists(HOST_SENTINEL + "_late")
    stray = _new_processes(before)
    assert not stray, f"sandbox processes survived: {stray}"
    leftovers = [p for p in os.listdir(tempfile.gettempdir()) if p.startswith(f"rrl-sbx-{os.getpid()}-")]
    assert not leftovers
    assert os.getpid() > 0 and run(GOOD_DOUBLE, DOUBLE_IO, backend, 5.0) == 1.0


def _live_uids(uid_range):
    """Uids in ``uid_range`` that own a live process (zombies cannot run: ignored)."""
    uids = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/status") as f:
                    lines = f.read().splitlines()
            except OSError:
                continue
            if any(line.startswith("State:") and line.split()[1] == "Z" for line in lines):
                continue
            for line in lines:
                if line.startswith("Uid:"):
                    uids.update(int(u) for u in line.split()[1:4] if int(u) in uid_range)
    return uids


# --------------------------------------------------------------------------- concurrency & plumbing
def test_concurrent_scoring_through_reward_computer():
    comp = RewardComputer([RewardSpec("code", 1.0, {"timeout_s": 2.0})], max_workers=8)
    good = f"<answer>{GOOD_DOUBLE}</answer>"
    bad = "<answer>print(6)</answer>"
    hang = "<answer>while True: pass</answer>"
    completions = [good, bad, hang, good] * 4
    t0 = time.monotonic()
    res = comp(completions, [{"tests": DOUBLE_IO}] * len(completions))
    assert list(res.per_reward["code"]) == [1.0, 0.5, 0.0, 1.0] * 4
    assert res.errors["code"] == 0
    assert time.monotonic() - t0 < 60
    comp.close()


def test_thread_safety_many_threads():
    results = {}

    def work(i):
        results[i] = score_code(f"print({i} * 2)", [{"stdin": "", "stdout": str(2 * i)}], 5.0)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert results == {i: 1.0 for i in range(12)}


def test_backend_selection(monkeypatch):
    if ROOT:
        monkeypatch.setenv("REASONING_RL_SANDBOX", "fallback")
        assert sandbox.resolve_backend() == "fallback"
    if sandbox.bwrap_available():
        assert sandbox.resolve_backend("bwrap") == "bwrap"
        assert sandbox.resolve_backend("auto") == "bwrap"
    monkeypatch.setenv("REASONING_RL_SANDBOX", "nonsense")
    with pytest.raises(ValueError, match="unknown sandbox backend 'nonsense'"):
        sandbox.resolve_backend()
    with pytest.raises(ValueError):  # a score that was not computed is an error, never a 0
        score_code("print(1)", [{"stdin": "", "stdout": "1"}])


def test_no_isolating_backend_refuses_with_cause_and_fix(monkeypatch):
    """bwrap missing from PATH: asking for it names the cause and the fix; without root nothing isolates."""
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(sandbox.SandboxUnavailable) as e:
        sandbox.resolve_backend("bwrap")
    msg = str(e.value)
    assert "bubblewrap (bwrap) is not installed" in msg and "apt-get install bubblewrap" in msg
    assert "none-unsafe" in msg and "\n" not in msg
    if not ROOT:
        for choice in ("auto", "fallback"):
            with pytest.raises(sandbox.SandboxUnavailable):
                sandbox.resolve_backend(choice)
        with pytest.raises(sandbox.SandboxUnavailable):
            get("code")("<answer>print(1)</answer>", {"tests": [{"stdin": "", "stdout": "1"}]})


def test_none_unsafe_runs_unisolated_only_by_name(caplog):
    """The explicit unsafe setting runs candidates (and says so loudly)."""
    assert "UNISOLATED" in sandbox.describe_backend("none-unsafe")
    assert run(GOOD_DOUBLE, DOUBLE_ALL, "none-unsafe", 5.0) == 1.0
    assert get("code")(f"<answer>{GOOD_DOUBLE}</answer>", {"tests": DOUBLE_IO}, sandbox="none-unsafe") == 1.0


def test_a_sandbox_that_cannot_start_is_an_error_not_a_zero(monkeypatch):
    """The runner never speaking (a broken install, say) raises SandboxError; RewardComputer counts it."""
    monkeypatch.setattr(sandbox, "RUNNER", "/nonexistent/_runner.py")
    monkeypatch.setattr(sandbox._runner, "STUB", "import sys; sys.exit(3)  # %r")
    backend = "bwrap" if sandbox.bwrap_available() else "none-unsafe"
    with pytest.raises(sandbox.SandboxError, match="did not start"):
        run(GOOD_DOUBLE, DOUBLE_IO, backend)
    comp = RewardComputer([RewardSpec("code", 1.0, {"sandbox": backend})], max_workers=2)
    res = comp([f"<answer>{GOOD_DOUBLE}</answer>"] * 3, [{"tests": DOUBLE_IO}] * 3)
    assert res.errors["code"] == 3 and res.error_metrics() == {"reward_errors/code": 3}
    assert "did not start" in res.first_error["code"]
    comp.close()


def test_candidate_uid_range_is_unprivileged():
    r = sandbox.candidate_uid_range()
    assert r.start >= sandbox.UID_BASE and r.stop < 2 ** 31
    assert all(sandbox._next_uid() in r for _ in range(5))


def test_overall_wall_clock_kills_everything(backend, monkeypatch):
    """If the runner itself overruns, the trainer kills the whole sandbox (and its uid)."""
    monkeypatch.setattr(sandbox, "OVERALL_SLACK_S", -3.7)  # budget: 3 jobs * 1.5s - 3.7s = 0.8s
    swept = []
    real_kill_uid = sandbox._kill_uid
    monkeypatch.setattr(sandbox, "_kill_uid", lambda uid: (swept.append(uid), real_kill_uid(uid)))
    program = "import os, time\nos.fork(); os.fork()\ntime.sleep(30)\n"
    before = _my_processes()
    t0 = time.monotonic()
    assert run(program, [{"stdin": "", "stdout": ""}] * 2, backend) == 0.0
    assert time.monotonic() - t0 < 8
    if ROOT:
        assert swept  # the run ended without the runner's "done": the emergency path ran
    assert not _new_processes(before)


# --------------------------------------------------------------------------- as an ordinary user
def _unprivileged():
    import importlib.util

    spec = importlib.util.spec_from_file_location("unprivileged", REPO / "tools" / "unprivileged.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.skipif(not ROOT, reason="already running as an ordinary user: the module above is that run")
def test_unprivileged_suite(tmp_path):
    """This whole module again as ``nobody`` (CI runs as root): every hostile program under unprivileged
    bubblewrap, with the same expectations and host checks as root's - 0 escapes either way."""
    import xml.etree.ElementTree as ET

    up = _unprivileged()
    why = up.why_not()
    if why:
        pytest.skip(f"cannot drop to an unprivileged user here: {why}")
    if not sandbox.bwrap_available():
        pytest.skip(NO_BWRAP)
    where = pathlib.Path(tempfile.mkdtemp(prefix="rrl unprivileged "))  # a space in the path, under /tmp
    try:
        env = up.stage(where, modules=("numpy", "pytest", "_pytest", "pluggy", "iniconfig", "packaging", "py",
                                       "pygments"), files=("tests/test_rewards_code.py", "tools/unprivileged.py"))
        report = where / "home" / "report.xml"
        p = up.run(["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                    str(where / "src" / "tests" / "test_rewards_code.py"), "--junitxml", str(report)],
                   env, cwd=str(where / "home"), timeout=900)
        assert p.returncode == 0, (p.stdout + p.stderr)[-5000:]
        cases = {c.get("name"): c for c in ET.parse(report).getroot().iter("testcase")}
        hostile = [n for n in cases if n.startswith("test_hostile[") and "bwrap" in n[len("test_hostile["):].split("-")]
        assert len(hostile) == len(HOSTILE) >= 25
        for n in hostile + ["test_no_stray_processes_or_files[bwrap]", "test_honest_full_and_partial[bwrap]",
                            "test_overall_wall_clock_kills_everything[bwrap]",
                            "test_no_isolating_backend_refuses_with_cause_and_fix"]:
            assert list(cases[n]) == [], f"{n} did not pass as an ordinary user: {ET.tostring(cases[n])[:500]}"
    finally:
        import shutil

        shutil.rmtree(where, ignore_errors=True)
