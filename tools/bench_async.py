"""Synchronous vs asynchronous GRPO on one host split into a sampler device and a trainer device.

W1's shape (Qwen2-like, d_model 256, 4 layers, 4 heads / 2 KV heads of 64, ffn 704, QKV bias, untied
embeddings; the vocabulary is the task tokenizer's 48, not 512; 8 prompts x 8 samples of up to 128 new tokens, one update per batch) on the built-in
arithmetic task, random init, run through the real GRPO stage (``run_grpo``) in one process, in one sitting:
1. ``sync-split``: the sampler on device 0 and the trainer on device 1, taking turns (``rollout.mode sync``);
2. ``async``: the same split, the sampler decoding the next batch while the trainer updates
   (``rollout.mode async``, ``max_staleness 1``, truncated-IS correction);
3. ``sync-shared`` (for reference): both phases data-parallel over both devices.
Seconds per step are medians over the steps after ``--warmup`` (compiling excluded). The theoretical bound
for async is ``max(sample, update) / (sample + update)`` of the split synchronous run's phase times, if the
two devices had their own cores; ``core_bound`` is the other floor: the synchronous step's CPU seconds (all
threads, ``cpu_s_per_step``) spread over the machine's cores, as a fraction of its wall time. Two XLA CPU
devices on one host share its cores, so when sampling and updating already keep them busy in turn, running
them at once cannot finish sooner than that. ``bound`` is the larger of the two.
The last line of stdout is JSON with ``sync.s_per_step`` and ``async.s_per_step``.
Usage: python tools/bench_async.py [--steps 8] [--warmup 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reasoning_rl.distributed import split_cpu  # noqa: E402


def config(mode: str, split: int, steps: int, run_dir: str):
    from reasoning_rl import config as C

    raw = {
        "seed": 0, "run_dir": run_dir,
        "model": {"d_model": 256, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "head_dim": 64,
                  "ffn_dim": 704, "qkv_bias": True, "tie_embeddings": False, "max_seq_len": 1024},
        "tokenizer": {"vocab_size": 48},
        "task": {"name": "arithmetic", "digits": 4, "terms": 2, "held_out_size": 16},
        "rollout": {"prompts_per_step": 8, "group_size": 8, "max_new_tokens": 128, "temperature": 1.0,
                    "stop_at_answer": False, "mode": mode, "max_staleness": 1},
        "optimizer": {"lr": 1e-5, "weight_decay": 0.0},
        "rewards": [{"name": "accuracy", "weight": 1.0}, {"name": "format", "weight": 0.1}],
        "mesh": {"cpu_devices": 2, "rollout_devices": split},
        "checkpoint": {"every": 10_000, "keep": 1},
        "stages": [{"name": "grpo", "kind": "grpo", "steps": steps}],
    }
    return C.from_dict(raw)


def measure(name: str, mode: str, split: int, steps: int, warmup: int) -> dict:
    import numpy as np

    from reasoning_rl.metrics import MetricsWriter, read_metrics
    from reasoning_rl.stages.common import Runtime
    from reasoning_rl.stages.grpo import run_grpo

    with tempfile.TemporaryDirectory() as d:
        cfg = config(mode, split, steps, d)
        rt = Runtime(cfg, d)
        writer = MetricsWriter(d, tensorboard=False)
        cpu = []  # the process's CPU seconds (all threads) at each step's metrics line
        write = writer.write
        writer.write = lambda rec: (cpu.append(time.process_time()), write(rec))[1]
        t0 = time.perf_counter()
        run_grpo(rt, cfg.stages[0], rt.init_params(), writer, progress=False)
        total = time.perf_counter() - t0
        writer.close()
        recs = [r for r in read_metrics(d) if r["stage"] == "grpo"][warmup:]
    med = lambda k: float(np.median([r[k] for r in recs])) if recs and k in recs[0] else None  # noqa: E731
    cpu_step = float(np.median(np.diff(cpu[warmup:]))) if len(cpu) > warmup + 1 else None
    out = {"s_per_step": med("seconds"), "sample_s": med("sample_s"), "update_s": med("update_s"),
           "cpu_s_per_step": cpu_step, "steps_timed": len(recs), "total_s": round(total, 2)}
    for k in ("wait_s", "sampler_busy_frac", "trainer_busy_frac", "is_ratio_mean"):
        if med(k) is not None:
            out[k] = med(k)
    print(f"{name}: {out}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out (compiling)")
    args = ap.parse_args()
    os.environ.setdefault("REASONING_RL_COMPILE_CACHE", "off")
    split_cpu(2)
    sync = measure("sync-split", "sync", 1, args.steps, args.warmup)
    asy = measure("async", "async", 1, args.steps, args.warmup)
    shared = measure("sync-shared", "sync", 0, args.steps, args.warmup)
    ts, tu = sync["sample_s"], sync["update_s"]
    bound = max(ts, tu) / (ts + tu) if ts and tu else None
    # Overlap cannot beat the machine's cores either: the synchronous step's CPU seconds (sampling + update, all
    # threads) spread over every core is a floor for the async step too, whatever the phase times say.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    core_bound = sync["cpu_s_per_step"] / cores / sync["s_per_step"] if sync["cpu_s_per_step"] else None
    print(json.dumps({"sync": sync, "async": asy, "sync_shared": shared,
                      "async_over_sync": round(asy["s_per_step"] / sync["s_per_step"], 3),
                      "theoretical_bound": round(bound, 3) if bound else None,
                      "core_bound": round(core_bound, 3) if core_bound else None,
                      "bound": round(max(bound or 0, core_bound or 0), 3), "target": 0.65, "cpus": cores}))


if __name__ == "__main__":
    main()
