#!/usr/bin/env python
"""Paged KV cache with shared prompt pages against the contiguous cache, on long prompts (JSON on stdout).

W1-shaped model (random init, float32), ``--prompts`` prompts of ``--prompt-len`` tokens, ``--group``
samples each, ``--new`` new tokens. For the plain loop and for in-flight refill (``--slots``), prints
the cache's bytes (the K/V arrays: contiguous holds every row's copy of its prompt, paged holds a prompt's
full pages once per group), XLA's compiled temporaries, tokens/s, and whether the completions are identical.

    python tools/bench_paged.py [--prompts 8 --prompt-len 512 --group 8 --new 64 --page 64 --slots 32]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from bench import VOCAB, best_of, log, w1_config  # noqa: E402

from reasoning_rl.models import create  # noqa: E402
from reasoning_rl.rollout.sampler import PageLayout, SamplingParams, sample, sample_impl  # noqa: E402


def cache_bytes(cfg, sp: SamplingParams, prompts: int, tp: int) -> int:
    shapes = [cfg.kv_shape_of(cfg.cache_kind(i)) for i in cfg.cached_layers]  # (each kind's own shape)
    per_slot = sum(kk * kd + vk * vd for kk, kd, vk, vd in shapes) * 4
    rows = prompts * sp.group_size
    slots = sp.slots if 0 < sp.slots < rows else rows
    if not sp.page_size:
        return per_slot * slots * (tp + sp.max_new_tokens)
    lay = PageLayout.of(sp.page_size, prompts, slots, tp, sp.max_new_tokens)
    return per_slot * lay.pages * lay.page


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--page", type=int, default=64)
    ap.add_argument("--slots", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()

    cfg = w1_config(max_seq_len=args.prompt_len + args.new)
    mdef, params = create(cfg, seed=0)
    rng = np.random.default_rng(1)
    pt = rng.integers(3, VOCAB, (args.prompts, args.prompt_len)).astype(np.int32)
    pv = np.ones_like(pt, bool)
    stop = tuple(range(3, 3 + VOCAB // 64))  # some rows stop early, so refill has slots to reuse
    base = SamplingParams(args.new, 1.0, 0, 1.0, False, stop, 0, args.group)
    out: dict = {"machine": {"cpus": os.cpu_count(), "backend": jax.default_backend()},
                 "workload": {"model": "W1", "prompts": args.prompts, "prompt_len": args.prompt_len,
                              "group": args.group, "new_tokens": args.new, "page": args.page, "slots": args.slots}}
    for mode, slots in (("plain", 0), ("refill", args.slots)):
        res, toks = {}, {}
        for layout, page in (("contiguous", 0), ("paged", args.page)):
            sp = dataclasses.replace(base, slots=slots, page_size=page)
            log(f"{mode} / {layout} ...")
            fn = jax.jit(functools.partial(sample_impl, mdef, sp))
            mem = fn.lower(params, pt, pv, jax.random.key(0)).compile().memory_analysis()
            jax.device_get(sample(mdef, params, pt, pv, jax.random.key(1), sp))  # compile
            o, best = best_of(lambda: jax.device_get(sample(mdef, params, pt, pv, jax.random.key(0), sp)), args.reps)
            toks[layout] = o.tokens
            res[layout] = {"cache_mib": cache_bytes(cfg, sp, args.prompts, args.prompt_len) / 2**20,
                           "temp_mib": getattr(mem, "temp_size_in_bytes", 0) / 2**20, "s": best,
                           "tokens_per_s": int(o.lengths.sum()) / best}
        res["same_completions"] = bool(np.array_equal(toks["contiguous"], toks["paged"]))
        res["cache_ratio"] = res["paged"]["cache_mib"] / res["contiguous"]["cache_mib"]
        res["speed_ratio"] = res["paged"]["tokens_per_s"] / res["contiguous"]["tokens_per_s"]
        out[mode] = res
    print(json.dumps(out))


if __name__ == "__main__":
    main()
