#!/usr/bin/env python
"""Workload W1 (the peers' workload in ../shared/peers): sampler tokens/s and GRPO seconds per step.

Qwen2-shaped model, random init, float32: vocab 512, d_model 256, 4 layers, 4 heads (head_dim 64), 2 KV heads,
ffn 704, QKV bias, untied embeddings, rope_theta 10000 (3,215,616 params).
- Sampler: 64 prompts x 32 random tokens -> 128 new tokens each, T=1.0, no top-k/top-p, no early stop.
- GRPO: 8 prompts x group 8 = 64 completions of 128 tokens, reward = fraction of even token ids, beta 0,
  AdamW(lr 1e-5, wd 0), one update per batch.
Prints progress on stderr and one JSON line on stdout, with the peers' keys (sampler.tokens_per_s,
sampler.warmup_s, grpo.s_per_step, grpo.warmup_step_s, grpo.gen_s_per_step, grpo.update_s_per_step).

``fraction_of_peak`` compares the FLOPs each part does with the rate of one large float32 GEMM on the same
machine, measured at start (``gemm_gflops``): a fixed figure would only hold for one CPU (the 2-core AVX2
reference machine peaks near 157 GFLOP/s; a 2-core AVX-512 one measures about three times that).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from reasoning_rl import sharding as shd
from reasoning_rl.algorithms.advantages import compute_advantages
from reasoning_rl.algorithms.steps import init_state, make_grpo_step, make_optimizer
from reasoning_rl.config import AlgorithmConfig, OptimizerConfig
from reasoning_rl.data.batching import rollout_batch
from reasoning_rl.distributed import split_cpu
from reasoning_rl.models import TransformerConfig, create
from reasoning_rl.rollout.sampler import SamplingParams, sample
from reasoning_rl.stages.common import jit_train_step

VOCAB, PROMPT, NEW = 512, 32, 128
GEMM_N = 1536  # side of the square float32 GEMM that measures the machine's dense-math rate


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def w1_config(**kw) -> TransformerConfig:
    base = dict(vocab_size=VOCAB, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=64, ffn_dim=704,
                rope_theta=10000.0, qkv_bias=True, tie_embeddings=False, norm_eps=1e-6, max_seq_len=1024)
    base.update(kw)
    return TransformerConfig(**base)


def best_of(fn, reps: int):
    """(last result, fastest wall seconds) of ``reps`` calls of ``fn``."""
    best, res = None, None
    for _ in range(reps):
        t0 = time.perf_counter()
        res = fn()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return res, best


def flops_per_token(cfg: TransformerConfig, ctx: int) -> float:
    """Forward FLOPs per token: 2 x matmul params + attention scores/values over ``ctx`` keys."""
    d, h, k, hd, f, L = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim, cfg.n_layers
    mat = L * (d * h * hd * 2 + d * k * hd * 2 + 3 * d * f) + d * cfg.vocab_size
    return 2 * mat + L * 4 * h * hd * ctx


def gemm_gflops(reps: int = 10) -> float:
    """Best rate of a ``GEMM_N``-cubed float32 matmul on one device (all the host's cores): the practical
    peak that ``fraction_of_peak`` divides by."""
    rng = np.random.default_rng(0)
    a, b = (jax.device_put(rng.standard_normal((GEMM_N, GEMM_N), np.float32)) for _ in range(2))
    f = jax.jit(lambda x, y: x @ y)
    _, best = best_of(lambda: f(a, b).block_until_ready(), reps + 1)
    return 2 * GEMM_N**3 / best / 1e9


def prompts(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(3, VOCAB, (n, PROMPT)).astype(np.int32), np.ones((n, PROMPT), bool)


def bench_sampler(mdef, params, iters: int, ctx, peak: float) -> dict:
    sp = SamplingParams(NEW, 1.0, 0, 1.0, False, (), 0, 1)
    pt, pv = (jax.device_put(a, shd.batch_sharding(ctx, a.shape)) for a in prompts(64, 1))
    times = []
    for i in range(iters + 1):
        t0 = time.perf_counter()
        with shd.use(ctx):
            out = sample(mdef, params, pt, pv, jax.random.key(i), sp)
        jax.block_until_ready(out)
        dt = time.perf_counter() - t0
        assert int(out.lengths.min()) == NEW
        times.append(dt)
        log(f"[sampler] call {i} ({'warm-up' if i == 0 else 'timed'}): {dt:.3f}s, {64 * NEW / dt:.0f} tok/s")
    mean = float(np.mean(times[1:]))
    fl = 64 * (PROMPT * flops_per_token(mdef.cfg, PROMPT) + NEW * flops_per_token(mdef.cfg, PROMPT + NEW // 2))
    return {"batch": 64, "prompt_len": PROMPT, "new_tokens": NEW, "warmup_s": times[0], "timed_calls": iters,
            "mean_s_per_call": mean, "tokens_per_s": 64 * NEW / mean,
            "best_tokens_per_s": 64 * NEW / float(np.min(times[1:])),
            "fraction_of_peak": fl / mean / 1e9 / peak}


def bench_grpo(mdef, params, steps: int, ctx, peak: float, logits_chunk: int = 0) -> dict:
    n_prompts, g = 8, 8
    ocfg = OptimizerConfig(name="adamw", lr=1e-5, weight_decay=0.0, max_grad_norm=0.0)
    acfg = AlgorithmConfig(beta=0.0)
    tx = make_optimizer(ocfg, steps + 1)
    state = jax.device_put(init_state(params, tx, 0), shd.replicated(ctx.mesh), may_alias=False)
    step = jit_train_step(make_grpo_step(mdef, acfg, ocfg, tx, 1.0, logits_chunk, group=g), state, ctx)
    sp = SamplingParams(NEW, 1.0, 0, 1.0, False, (), 0, g)
    step_t, gen_t, upd_t = [], [], []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        pt, pv = prompts(n_prompts, 100 + i)
        with shd.use(ctx):
            out = jax.device_get(sample(mdef, state.params, *(jax.device_put(a, shd.batch_sharding(ctx, a.shape))
                                                              for a in (pt, pv)), jax.random.key(1000 + i), sp))
        t1 = time.perf_counter()
        rewards = (out.tokens % 2 == 0).mean(axis=1).astype(np.float32)
        adv = np.asarray(compute_advantages("grpo", rewards, g))
        batch = rollout_batch(pt, pv, out.tokens, out.mask, out.logprobs, adv, g)
        state, m = step(state, {k: jax.device_put(v, shd.batch_sharding(ctx, v.shape)) for k, v in batch.items()})
        jax.block_until_ready(m)
        t2 = time.perf_counter()
        step_t.append(t2 - t0)
        gen_t.append(t1 - t0)
        upd_t.append(t2 - t1)
        log(f"[grpo] step {i}: {t2 - t0:.3f}s (rollout {t1 - t0:.3f}s, update {t2 - t1:.3f}s)")
    tokens = n_prompts * g * (PROMPT + NEW)
    upd_flops = 3 * tokens * flops_per_token(mdef.cfg, (PROMPT + NEW) // 2)
    gen_flops = n_prompts * PROMPT * flops_per_token(mdef.cfg, PROMPT) + n_prompts * g * NEW * flops_per_token(
        mdef.cfg, PROMPT + NEW // 2)
    s = float(np.mean(step_t[1:]))
    return {"prompts_per_step": n_prompts, "group_size": g, "completions_per_step": n_prompts * g,
            "max_completion_len": NEW, "warmup_step_s": step_t[0], "timed_steps": steps, "s_per_step": s,
            "step_times_s": step_t, "gen_s_per_step": float(np.mean(gen_t[1:])),
            "update_s_per_step": float(np.mean(upd_t[1:])),
            "fraction_of_peak": (upd_flops + gen_flops) / s / 1e9 / peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sampler-iters", type=int, default=3)
    ap.add_argument("--grpo-steps", type=int, default=4)
    ap.add_argument("--skip-sampler", action="store_true")
    ap.add_argument("--skip-grpo", action="store_true")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--logits-chunk", type=int, default=0)
    ap.add_argument("--decode-layers", default="auto", choices=["auto", "scan", "unroll"],
                    help="model.decode_layers (auto: the layer scan on CPU)")
    ap.add_argument("--cpu-devices", type=int, default=0,
                    help="split the CPU host into this many devices, data-parallel (mesh.cpu_devices; 0: one)")
    args = ap.parse_args()
    split_cpu(args.cpu_devices)
    import importlib.metadata as md

    cfg = w1_config(dtype=args.dtype, decode_layers=args.decode_layers)
    mdef, params = create(cfg, 0)
    ctx = shd.context(shd.make_mesh({"data": -1}))
    params = jax.device_put(params, shd.replicated(ctx.mesh))
    n_params = int(sum(x.size for x in jax.tree.leaves(params)))
    result = {"project": "reasoning_rl", "workload": "W1",
              "versions": {"python": sys.version.split()[0], "jax": jax.__version__,
                           "reasoning_rl": md.version("reasoning-rl")},
              "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
              "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg()[0], "n_params": n_params,
              "dtype": args.dtype, "cpu_devices": args.cpu_devices, "gemm_gflops": gemm_gflops()}
    log(f"[peak] float32 GEMM {GEMM_N}^3: {result['gemm_gflops']:.0f} GFLOP/s")
    if not args.skip_sampler:
        result["sampler"] = bench_sampler(mdef, params, args.sampler_iters, ctx, result["gemm_gflops"])
    if not args.skip_grpo:
        result["grpo"] = bench_grpo(mdef, params, args.grpo_steps, ctx, result["gemm_gflops"], args.logits_chunk)
    result["loadavg_end"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
