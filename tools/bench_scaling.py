#!/usr/bin/env python
"""Scaling benchmarks (JSON on stdout, progress on stderr); nothing here is a timed test.

- ``compile``: seconds to compile the GRPO train step (and the sampler) of the W1-shaped model at several
  depths. Layers run under ``lax.scan``, so compile time should barely grow with depth.
- ``memory``: the GRPO step's compiled memory (XLA's own accounting: arguments, outputs, temporaries) for a
  long response, with log-probs computed in sequence chunks and with whole ``[B, T, V]`` logits, beside the
  bytes the materialised float32 logits alone would take. Abstract shapes only: nothing is allocated, so a
  Qwen2.5-0.5B-shaped model at 8k response tokens is sized on any machine.
- ``throughput``: W1 sampler tokens/s against batch size and response length.

    python tools/bench_scaling.py [--only compile,memory,throughput]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from bench import VOCAB, log, prompts, w1_config  # noqa: E402

from reasoning_rl.algorithms.steps import TrainState, make_grpo_step, make_optimizer  # noqa: E402
from reasoning_rl.config import AlgorithmConfig, OptimizerConfig  # noqa: E402
from reasoning_rl.models import TransformerConfig, create  # noqa: E402
from reasoning_rl.rollout.sampler import SamplingParams, sample, sample_impl  # noqa: E402


def _abstract_step_inputs(mdef, rows: int, prompt: int, new: int):
    ocfg = OptimizerConfig(name="adamw", lr=1e-5, weight_decay=0.0, max_grad_norm=1.0)
    tx = make_optimizer(ocfg, 10)
    params = mdef.abstract_params()
    state = TrainState(params, jax.eval_shape(tx.init, params), jax.ShapeDtypeStruct((), jnp.int32),
                       jax.eval_shape(lambda: jax.random.key(0)), jax.ShapeDtypeStruct((), jnp.int32))
    t = prompt + new
    sd = jax.ShapeDtypeStruct
    batch = {"tokens": sd((rows, t), jnp.int32), "valid": sd((rows, t), bool), "mask": sd((rows, new), bool),
             "old_logp": sd((rows, new), jnp.float32), "sampler_logp": sd((rows, new), jnp.float32),
             "adv": sd((rows,), jnp.float32)}
    return ocfg, tx, state, batch


def compiled_step(mdef, rows: int, prompt: int, new: int, logits_chunk: int):
    ocfg, tx, state, batch = _abstract_step_inputs(mdef, rows, prompt, new)
    step = make_grpo_step(mdef, AlgorithmConfig(beta=0.0), ocfg, tx, 1.0, logits_chunk)
    t0 = time.perf_counter()
    lowered = jax.jit(step, donate_argnums=(0,)).lower(state, batch)
    compiled = lowered.compile()
    return compiled, time.perf_counter() - t0


def bench_compile(depths=(4, 8, 16, 32)) -> dict:
    out = {}
    for n in depths:
        # unroll_max=0: every depth scanned (what makes compile time independent of depth); the default
        # unrolls stacks of <= 4 layers in training, a little more compile for a faster step.
        mdef, _ = create(w1_config(n_layers=n, unroll_max=0), abstract=True)
        _, train_s = compiled_step(mdef, 64, 32, 128, 0)
        sp = SamplingParams(128, 1.0, 0, 1.0, False, (), 0, 8)
        sd = jax.ShapeDtypeStruct
        t0 = time.perf_counter()
        jax.jit(lambda p, a, b, k: sample_impl(mdef, sp, p, a, b, k)).lower(
            mdef.abstract_params(), sd((8, 32), jnp.int32), sd((8, 32), bool),
            jax.eval_shape(lambda: jax.random.key(0))).compile()
        sample_s = time.perf_counter() - t0
        out[str(n)] = {"train_step_compile_s": train_s, "sampler_compile_s": sample_s}
        log(f"[compile] {n} layers: train step {train_s:.2f}s, sampler {sample_s:.2f}s")
    first, last = out[str(depths[0])], out[str(depths[-1])]
    return {"layers": out, "train_ratio_deepest_to_shallowest": last["train_step_compile_s"] / first[
        "train_step_compile_s"], "sampler_ratio_deepest_to_shallowest": last["sampler_compile_s"] / first[
        "sampler_compile_s"]}


def qwen25_05b(**kw) -> TransformerConfig:
    return TransformerConfig(vocab_size=151936, d_model=896, n_layers=24, n_heads=14, n_kv_heads=2, head_dim=64,
                             ffn_dim=4864, rope_theta=1e6, qkv_bias=True, tie_embeddings=True, norm_eps=1e-6,
                             max_seq_len=16384, **kw)


def bench_memory(rows: int = 2, prompt: int = 256, new: int = 8192, chunk: int = 512) -> dict:
    cfg = qwen25_05b(dtype="bfloat16", remat="full")
    mdef, _ = create(cfg, abstract=True)
    res = {"model": "Qwen2.5-0.5B shape (bf16 compute, f32 params, full remat)", "rows": rows,
           "prompt_len": prompt, "response_len": new, "vocab": cfg.vocab_size,
           "materialised_logits_bytes": rows * new * cfg.vocab_size * 4}
    for name, c in (("chunked", chunk), ("whole_logits", 0)):
        compiled, secs = compiled_step(mdef, rows, prompt, new, c)
        ma = compiled.memory_analysis()
        temp = int(getattr(ma, "temp_size_in_bytes", 0))
        args = int(getattr(ma, "argument_size_in_bytes", 0))
        outs = int(getattr(ma, "output_size_in_bytes", 0))
        alias = int(getattr(ma, "alias_size_in_bytes", 0))
        res[name] = {"logits_chunk": c, "temp_bytes": temp, "argument_bytes": args, "output_bytes": outs,
                     "peak_estimate_bytes": temp + args + outs - alias, "compile_s": secs}
        log(f"[memory] {name}: temporaries {temp / 2**30:.2f} GiB, peak ~{(temp + args + outs - alias) / 2**30:.2f} GiB")
    res["chunked_temp_below_materialised_logits"] = res["chunked"]["temp_bytes"] < res["materialised_logits_bytes"]
    return res


def bench_throughput(batches=(16, 64, 128), lengths=(64, 128, 256)) -> dict:
    mdef, params = create(w1_config(), 0)
    grid = []
    for b in batches:
        for n in lengths:
            sp = SamplingParams(n, 1.0, 0, 1.0, False, (), 0, 1)
            pt, pv = prompts(b, 1)
            jax.block_until_ready(sample(mdef, params, pt, pv, jax.random.key(0), sp))  # compile
            t0 = time.perf_counter()
            jax.block_until_ready(sample(mdef, params, pt, pv, jax.random.key(1), sp))
            dt = time.perf_counter() - t0
            grid.append({"batch": b, "new_tokens": n, "s": dt, "tokens_per_s": b * n / dt})
            log(f"[throughput] batch {b}, {n} new: {b * n / dt:.0f} tok/s")
    return {"vocab": VOCAB, "grid": grid}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="compile,memory,throughput")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    result = {"project": "reasoning_rl", "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
              "jax": jax.__version__, "loadavg_start": os.getloadavg()[0]}
    if "compile" in parts:
        result["compile"] = bench_compile()
    if "memory" in parts:
        result["memory"] = bench_memory()
    if "throughput" in parts:
        result["throughput"] = bench_throughput()
    result["loadavg_end"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
