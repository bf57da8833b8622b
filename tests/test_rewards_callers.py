"""The rewards as plain functions: from a script without a main guard, from threads, under ``ulimit``,
from a copy of the package under /tmp in a folder with a space; and a reward that cannot be computed is an
error at once, never a zero."""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from reasoning_rl.rewards import RewardComputer, RewardSpec, math as rmath, sandbox, score_math

REPO = Path(__file__).resolve().parents[1]
GOOD = "def double(n):\n    return 2 * n\n\nif __name__ == '__main__':\n    print(double(int(input())))\n"
TESTS = [{"stdin": "3\n", "stdout": "6"}, {"assert": "assert double(10) == 20"}]
ISOLATING = sandbox.bwrap_available() or os.geteuid() == 0
NEEDS_SANDBOX = pytest.mark.skipif(not ISOLATING, reason="no isolating sandbox here: install bubblewrap")

# No ``if __name__ == "__main__":`` guard on purpose: helper processes must not re-run this file.
SCRIPT = textwrap.dedent("""
    import sys, threading
    sys.path.insert(0, {where!r})
    from reasoning_rl.rewards import score_code, score_math, sandbox
    assert sandbox.__file__.startswith({where!r}), sandbox.__file__
    print("START", flush=True)
    out = {{}}
    def work(i):
        out[i] = (score_math("<answer>\\\\sqrt{{4}}</answer>", "2"), score_math("<answer>\\\\frac{{1}}{{3}}</answer>", "0.5"),
                  score_math("<answer>x^2 + 2x + 1</answer>", "(x+1)^2"))
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    [t.start() for t in threads]; [t.join() for t in threads]
    print("MATH", sorted(set(out.values())))
    if {code}:
        res = []
        t = threading.Thread(target=lambda: res.append(score_code({good!r}, {tests!r})))
        t.start(); t.join()
        print("CODE", res[0], sandbox.resolve_backend())
""")


def _run_script(tmp_path, where, code=True, limits=""):
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT.format(where=str(where), good=GOOD, tests=TESTS, code=code))
    cmd = f"{limits} exec {sys.executable!r} {str(script)!r}"
    t0 = time.monotonic()
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    return p, time.monotonic() - t0


def test_score_math_from_a_script_without_a_main_guard(tmp_path):
    p, took = _run_script(tmp_path, REPO, code=False)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("START") == 1  # nothing re-ran the script
    assert "MATH [(1.0, 0.0, 1.0)]" in p.stdout
    assert took < 10, f"{took:.1f}s"


@NEEDS_SANDBOX
def test_rewards_under_memory_and_process_limits_from_a_copy_under_tmp_with_a_space(tmp_path):
    """``ulimit -v`` 8 GB and ``ulimit -u`` 400; the package copied under /tmp into a folder whose name has a
    space (the root fallback mounts a fresh /tmp: the harness must be bound back from there)."""
    where = Path(tempfile.mkdtemp(prefix="rrl clone ", dir="/tmp"))
    try:
        shutil.copytree(REPO / "reasoning_rl", where / "reasoning_rl",
                        ignore=shutil.ignore_patterns("__pycache__"))
        os.chmod(where, 0o755)
        p, _ = _run_script(tmp_path, where, limits="ulimit -v 8388608; ulimit -u 400;")
        assert p.returncode == 0, p.stderr[-3000:]
        assert "MATH [(1.0, 0.0, 1.0)]" in p.stdout
        assert f"CODE 1.0 {sandbox.resolve_backend()}" in p.stdout
        if os.geteuid() == 0:  # and the root fallback, explicitly
            env = {**os.environ, "REASONING_RL_SANDBOX": "fallback"}
            q = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(where)!r}); "
                                "from reasoning_rl.rewards import score_code; "
                                f"print(score_code({GOOD!r}, {TESTS!r}))"],
                               capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
            assert q.returncode == 0 and q.stdout.strip() == "1.0", q.stderr[-3000:]
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_a_math_pool_that_cannot_start_fails_at_once(monkeypatch):
    rmath.shutdown_pool()
    monkeypatch.setattr(rmath, "WORKER", "/nonexistent/_mathworker.py")
    try:
        t0 = time.monotonic()
        with pytest.raises(rmath.MathVerifyUnavailable, match="could not start"):
            score_math("<answer>\\sqrt{4}</answer>", "2")
        assert time.monotonic() - t0 < 10
        t0 = time.monotonic()
        comp = RewardComputer([RewardSpec("math", 1.0)], max_workers=4)
        res = comp(["<answer>\\sqrt{4}</answer>"] * 8, [{"answer": "2"}] * 8)
        assert time.monotonic() - t0 < 2  # every later call fails at once, not after a timeout each
        assert res.errors["math"] == 8 and res.error_metrics() == {"reward_errors/math": 8}
        assert "could not start" in res.first_error["math"]
        comp.close()
        # plain numbers never need a worker
        assert score_math("<answer>0.5</answer>", "1/2") == 1.0
    finally:
        rmath.shutdown_pool()
        monkeypatch.undo()
    assert score_math("<answer>\\sqrt{4}</answer>", "2") == 1.0  # a fresh pool after the fault is gone


def test_a_math_worker_that_dies_is_replaced_then_reported(monkeypatch):
    rmath.shutdown_pool()
    assert score_math("<answer>\\sqrt{9}</answer>", "3") == 1.0
    pool = rmath._get_pool()
    for w in list(pool.idle):
        w.proc.kill()  # e.g. the OOM killer: the next check retries on a fresh worker
        w.proc.wait()
    assert score_math("<answer>\\sqrt{9}</answer>", "3") == 1.0
    rmath.shutdown_pool()
