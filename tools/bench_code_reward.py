"""Throughput of the sandboxed code reward: trivial programs scored per second, for every backend.

Measures each backend that isolates here in its own process: bubblewrap as this user, and, when this
is root, the root fallback and bubblewrap as an ordinary user (``nobody``, via ``tools/unprivileged.py``)
- most users are not root. Prints one JSON line, e.g.
{"results": {"bwrap-root": {...}, "fallback-root": {...}, "bwrap-unprivileged": {...}}, "target_per_s": 20, ...}.
Usage: python tools/bench_code_reward.py [--n 200] [--tests 1] [--kind stdio|assert|mixed] [--workers N]
       [--only BACKEND]   (one backend in this process: bwrap | fallback | none-unsafe)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __name__ == "__main__" and not os.environ.get("RRL_BENCH_STAGED"):
    sys.path.insert(0, str(HERE.parent))

from reasoning_rl.rewards import sandbox, score_code  # noqa: E402

PROGRAM = "def double(n):\n    return 2 * n\n\nif __name__ == '__main__':\n    print(double(int(input())))\n"
TARGET_PER_S = 20.0  # unprivileged bubblewrap, 2 cores


def make_tests(kind: str, n: int) -> list[dict]:
    tests = []
    for i in range(n):
        use_assert = kind == "assert" or (kind == "mixed" and i % 2)
        tests.append({"assert": f"assert double({i}) == {2 * i}"} if use_assert
                     else {"stdin": f"{i}\n", "stdout": f"{2 * i}\n"})
    return tests


def measure(backend: str, n: int, tests: list[dict], workers: int) -> dict:
    backend = sandbox.resolve_backend(backend)
    assert score_code(PROGRAM, tests, backend=backend) == 1.0, "warm-up program failed"
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        scores = list(pool.map(lambda _: score_code(PROGRAM, tests, backend=backend), range(n)))
    dt = time.perf_counter() - t0
    return {"programs_per_s": round(n / dt, 2), "backend": backend, "uid": os.getuid(), "programs": n,
            "all_passed": all(s == 1.0 for s in scores)}


def _child(args, only: str, nobody: bool = False) -> dict:
    argv = ["--only", only, "--n", str(args.n), "--tests", str(args.tests), "--kind", args.kind,
            "--workers", str(args.workers)]
    if not nobody:
        p = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv], capture_output=True, text=True)
    else:
        sys.path.insert(0, str(HERE))
        import unprivileged

        why = unprivileged.why_not()
        if why:
            return {"skipped": why}
        where = Path(tempfile.mkdtemp(prefix="rrl-bench-"))
        env = unprivileged.stage(where, files=("tools/bench_code_reward.py",))
        env["RRL_BENCH_STAGED"] = "1"
        p = unprivileged.run(["python", str(where / "src" / "tools" / "bench_code_reward.py"), *argv], env,
                             cwd=str(where / "home"))
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="programs to score per backend")
    ap.add_argument("--tests", type=int, default=1, help="tests per program")
    ap.add_argument("--kind", default="stdio", choices=["stdio", "assert", "mixed"])
    ap.add_argument("--workers", type=int, default=sandbox.max_concurrent(), help="concurrent scorers")
    ap.add_argument("--only", default=None, choices=list(sandbox.BACKENDS), help="one backend, this process")
    args = ap.parse_args()
    tests = make_tests(args.kind, args.tests)
    if args.only:
        print(json.dumps(measure(args.only, args.n, tests, args.workers)))
        return
    root = os.geteuid() == 0
    results = {("bwrap-root" if root else "bwrap-unprivileged"): _child(args, "bwrap")}
    if root:
        results["fallback-root"] = _child(args, "fallback")
        results["bwrap-unprivileged"] = _child(args, "bwrap", nobody=True)
    unpriv = results["bwrap-unprivileged"].get("programs_per_s")
    print(json.dumps({"results": results, "tests_per_program": args.tests, "kind": args.kind,
                      "workers": args.workers, "cpus": os.cpu_count(), "target_per_s": TARGET_PER_S,
                      "unprivileged_meets_target": unpriv is not None and unpriv >= TARGET_PER_S}))


if __name__ == "__main__":
    main()
