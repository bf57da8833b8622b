#!/usr/bin/env python
"""In-flight refill against the plain batch loop on a long-tailed length distribution (JSON on stdout).

W1-shaped model (random init, float32). Long-tailed lengths come from a stop set: with near-uniform
next-token probabilities, ``--stop-frac`` of the vocabulary as stop tokens ends a row at each step with about
that probability, so lengths are geometric: most rows stop early, a few run to ``--new`` tokens.

- ``plain``: the batch loop on ``--slots`` rows at a time (waves of ``slots / group`` prompts); a wave runs
  until its longest row stops.
- ``refill``: the same rows on ``--slots`` batch slots with in-flight refill; free slots take waiting rows
  inside the jitted loop.
- ``plain_whole``: every row in one batch (for reference: no waves, but a batch as long as its longest row).

Both loops key every row by its global index, so their completions must be identical; the benchmark checks
it and prints tokens/s, slot utilisation (generated tokens / slot-steps) and the speed-up.

    python tools/bench_refill.py [--prompts 64 --group 8 --slots 64 --new 256 --stop-frac 0.02]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from bench import VOCAB, best_of, log, prompts, w1_config  # noqa: E402

from reasoning_rl.models import create  # noqa: E402
from reasoning_rl.rollout.sampler import SamplingParams, sample  # noqa: E402


def run_plain(mdef, params, pt, pv, sp, slots, seed):
    g = sp.group_size
    per = slots // g
    outs, steps = [], 0
    for i in range(0, pt.shape[0], per):
        o = jax.device_get(sample(mdef, params, pt[i:i + per], pv[i:i + per], jax.random.key(seed), sp, row0=i * g))
        outs.append(o)
        steps += int(o.slot_steps)
    return np.concatenate([o.tokens for o in outs]), np.concatenate([o.lengths for o in outs]), steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--stop-frac", type=float, default=0.02)
    ap.add_argument("--refill-min", type=int, default=0)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.slots % args.group:
        raise SystemExit("--slots must be a multiple of --group (plain waves are whole groups)")

    mdef, params = create(w1_config(), seed=0)
    pt, pv = prompts(args.prompts, 1)
    stop = tuple(range(3, 3 + max(1, round(args.stop_frac * VOCAB))))
    base = SamplingParams(args.new, 1.0, 0, 1.0, False, stop, 0, args.group)
    refill_sp = SamplingParams(args.new, 1.0, 0, 1.0, False, stop, 0, args.group, slots=args.slots,
                               refill_min=args.refill_min)
    rows = args.prompts * args.group
    out: dict = {"machine": {"cpus": os.cpu_count(), "backend": jax.default_backend()},
                 "workload": {"model": "W1", "prompts": args.prompts, "group": args.group, "rows": rows,
                              "slots": args.slots, "max_new_tokens": args.new, "stop_tokens": len(stop)}}

    log("compiling ...")
    run_plain(mdef, params, pt, pv, base, args.slots, args.seed + 1)
    jax.device_get(sample(mdef, params, pt, pv, jax.random.key(args.seed + 1), refill_sp))
    jax.device_get(sample(mdef, params, pt, pv, jax.random.key(args.seed + 1), base))

    log("plain waves ...")
    (p_toks, p_len, p_steps), p_s = best_of(lambda: run_plain(mdef, params, pt, pv, base, args.slots, args.seed),
                                          args.reps)
    log("refill ...")
    r, r_s = best_of(lambda: jax.device_get(sample(mdef, params, pt, pv, jax.random.key(args.seed), refill_sp)),
                   args.reps)
    log("plain, whole batch ...")
    w, w_s = best_of(lambda: jax.device_get(sample(mdef, params, pt, pv, jax.random.key(args.seed), base)),
                   args.reps)

    gen = int(p_len.sum())
    same = bool(np.array_equal(p_toks, r.tokens) and np.array_equal(p_len, r.lengths)
                and np.array_equal(w.tokens, r.tokens))
    lens = np.asarray(r.lengths)
    out["lengths"] = {"mean": float(lens.mean()), "p50": float(np.median(lens)), "p90": float(np.percentile(lens, 90)),
                      "max": int(lens.max()), "at_limit_frac": float(np.mean(lens >= args.new))}
    out["plain"] = {"s": p_s, "tokens_per_s": gen / p_s, "slot_utilisation": gen / p_steps}
    out["refill"] = {"s": r_s, "tokens_per_s": gen / r_s, "slot_utilisation": gen / int(r.slot_steps)}
    out["plain_whole"] = {"s": w_s, "tokens_per_s": gen / w_s, "slot_utilisation": gen / int(w.slot_steps)}
    out["generated_tokens"] = gen
    out["same_completions"] = same
    out["speedup_vs_plain"] = p_s / r_s
    out["speedup_vs_plain_whole"] = w_s / r_s
    print(json.dumps(out))


if __name__ == "__main__":
    main()
