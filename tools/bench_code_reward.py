"""Throughput of the sandboxed code reward: trivial programs scored per second.

Prints one JSON line, e.g. {"programs_per_s": 40.1, "backend": "bwrap", ...}.
Usage: python tools/bench_code_reward.py [--n 200] [--backend auto|bwrap|fallback]
       [--tests 1] [--kind stdio|assert|mixed] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reasoning_rl.rewards import sandbox, score_code

PROGRAM = "def double(n):\n    return 2 * n\n\nif __name__ == '__main__':\n    print(double(int(input())))\n"


def make_tests(kind: str, n: int) -> list[dict]:
    tests = []
    for i in range(n):
        use_assert = kind == "assert" or (kind == "mixed" and i % 2)
        tests.append({"assert": f"assert double({i}) == {2 * i}"} if use_assert
                     else {"stdin": f"{i}\n", "stdout": f"{2 * i}\n"})
    return tests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="programs to score")
    ap.add_argument("--backend", default="auto", choices=["auto", "bwrap", "fallback"])
    ap.add_argument("--tests", type=int, default=1, help="tests per program")
    ap.add_argument("--kind", default="stdio", choices=["stdio", "assert", "mixed"])
    ap.add_argument("--workers", type=int, default=sandbox.max_concurrent(), help="concurrent scorers")
    args = ap.parse_args()
    backend = sandbox.resolve_backend(args.backend)
    tests = make_tests(args.kind, args.tests)
    assert score_code(PROGRAM, tests, backend=backend) == 1.0, "warm-up program failed"
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        scores = list(pool.map(lambda _: score_code(PROGRAM, tests, backend=backend), range(args.n)))
    dt = time.perf_counter() - t0
    print(json.dumps({
        "programs_per_s": round(args.n / dt, 2), "backend": backend, "programs": args.n,
        "tests_per_program": args.tests, "kind": args.kind, "workers": args.workers,
        "all_passed": all(s == 1.0 for s in scores), "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
