"""Throughput of the reward-model reward: rollout rows scored per second, batched on the mesh (one forward per
``batch_size`` rows) against one forward per row, with a verifiable reward's rate for scale.

The reward model is the R1 pipeline's (configs/r1_pipeline.yaml: its model section with a score head, random
weights: the rate does not depend on them); rows are helpfulness prompts with completions of the pipeline's
length. Prints one JSON line, e.g. {"rm_rows_per_s": 2400.0, "rm_per_row_rows_per_s": 60.0, ...}.
Usage: python tools/bench_rewards.py [--rows 1024] [--batch-size 256] [--cpu-devices 0] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1024, help="rows scored per timed call")
    ap.add_argument("--batch-size", type=int, default=256, help="rows per reward-model forward")
    ap.add_argument("--per-row", type=int, default=64, help="rows scored one forward each (the slow way)")
    ap.add_argument("--cpu-devices", type=int, default=0, help="split the CPU host into this many devices")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small sizes: a check that it runs")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.per_row, args.repeats = 128, 8, 1
    from reasoning_rl import distributed

    distributed.split_cpu(args.cpu_devices)

    from reasoning_rl import config as C
    from reasoning_rl.rewards import RewardComputer, RewardSpec
    from reasoning_rl.rewards.reward_model import RewardModelScorer
    from reasoning_rl.stages.common import Runtime
    from reasoning_rl.stages.reward_model import RewardRuntime

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    raw = C.load_raw(os.path.join(root, "configs", "r1_pipeline.yaml"))
    raw["mesh"] = {"data": -1}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = C.from_dict({**raw, "run_dir": tmp})
        rt = Runtime(cfg, tmp)
        rrt = RewardRuntime.of(rt, C.stage(cfg, "helpfulness_rm"))
        params = rrt.init_params(0)
        task = rt.task_for(C.stage(cfg, "helpfulness_rm").task)
        pairs = [task.pair("train", i) for i in range(args.rows)]
        prompts, texts = [p["prompt"] for p in pairs], [p["chosen"] for p in pairs]

        def timed(fn, n_rows):
            fn()  # compile / warm up
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            return n_rows / best

        batched = RewardModelScorer(rt, rrt.mdef, params, args.batch_size)
        per_row = RewardModelScorer(rt, rrt.mdef, params, 1)
        k = args.per_row
        verifier = RewardComputer([RewardSpec("format", 1.0)], max_workers=1)
        rows = [{"prompt": p} for p in prompts]
        out = {
            "rm_rows_per_s": round(timed(lambda: batched(prompts, texts), len(texts)), 1),
            "rm_per_row_rows_per_s": round(timed(lambda: per_row(prompts[:k], texts[:k]), k), 1),
            "format_reward_rows_per_s": round(timed(lambda: verifier(texts, rows), len(texts)), 1),
            "rows": len(texts), "batch_size": args.batch_size, "forwards_per_call": -(-len(texts) // args.batch_size),
            "mean_tokens": round(sum(len(rt.tok.encode(p)) + len(rt.tok.encode(t)) for p, t in zip(prompts, texts))
                                 / len(texts), 1),
            "devices": len(rt.mesh.devices.flat), "model": {k: getattr(cfg.model, k) for k in ("d_model", "n_layers")},
            "cpus": os.cpu_count(),
        }
        out["batched_speedup"] = round(out["rm_rows_per_s"] / out["rm_per_row_rows_per_s"], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
