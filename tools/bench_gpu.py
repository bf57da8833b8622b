#!/usr/bin/env python
"""GPU check: decode throughput against the HBM roofline, and train-step MFU, for a Qwen2.5-1.5B-shaped
model with random weights (bf16 compute). Prints one JSON line.

Decode: per-step time is taken from two budgets, (t(N2) - t(N1)) / (N2 - N1), so prefill and launch costs
cancel. The roofline of one decode step is (bytes of parameters + bytes of KV cache read) / HBM bandwidth,
with the bandwidth measured in the same run by a device-to-device copy.
Train: one SFT step (fp32 master weights, bf16 compute, chunked log-probs) on B x T tokens;
MFU = model FLOPs (6 per parameter per token + causal attention) / time / peak bf16 FLOP/s.
Usage: python tools/bench_gpu.py [--tiny] (``--tiny`` runs a toy shape on any backend, as a smoke test).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from reasoning_rl.algorithms.steps import init_state, make_optimizer, make_sft_step
from reasoning_rl.config import OptimizerConfig
from reasoning_rl.models import TransformerConfig, create
from reasoning_rl.rollout.sampler import SamplingParams, sample

PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 datasheet figures


def qwen25_15b(tiny: bool, dtype: str, param_dtype: str) -> TransformerConfig:
    if tiny:
        return TransformerConfig(vocab_size=512, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32,
                                 ffn_dim=256, qkv_bias=True, tie_embeddings=True, dtype=dtype,
                                 param_dtype=param_dtype, rope_theta=1e6)
    return TransformerConfig(vocab_size=151936, d_model=1536, n_layers=28, n_heads=12, n_kv_heads=2, head_dim=128,
                             ffn_dim=8960, qkv_bias=True, tie_embeddings=True, dtype=dtype,
                             param_dtype=param_dtype, rope_theta=1e6, max_seq_len=32768)


def timed(fn, *a, reps: int = 3) -> float:
    jax.block_until_ready(fn(*a))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*a))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def hbm_bandwidth(tiny: bool) -> float:
    n = (1 << 20) if tiny else (1 << 30)  # 4 GiB of float32
    x = jnp.ones((n,), jnp.float32)
    f = jax.jit(lambda a: a * 1.0001)
    return 2 * x.nbytes / timed(f, x, reps=5)


def bench_decode(mdef, params, batch: int, prompt: int, n1: int, n2: int, bw: float) -> dict:
    cfg = mdef.cfg
    rng = np.random.default_rng(0)
    pt = rng.integers(3, cfg.vocab_size, (batch, prompt)).astype(np.int32)
    pv = np.ones_like(pt, bool)
    t = {}
    for n in (n1, n2):
        sp = SamplingParams(n, 1.0, 0, 1.0, False, (), 0, 1)
        t[n] = timed(lambda p, a, b: sample(mdef, p, a, b, jax.random.key(0), sp), params, pt, pv, reps=2)
    step = (t[n2] - t[n1]) / (n2 - n1)
    p_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    s_avg = prompt + (n1 + n2) / 2
    kv_bytes = 2 * cfg.n_layers * batch * s_avg * cfg.n_kv_heads * cfg.head_dim * jnp.dtype(cfg.jnp_dtype).itemsize
    roof = (p_bytes + kv_bytes) / bw
    return {"batch": batch, "prompt": prompt, "decode_step_s": step, "tokens_per_s": batch / step,
            "roofline_step_s": roof, "fraction_of_roofline": roof / step, "param_bytes": p_bytes,
            "kv_bytes_per_step": kv_bytes, "t_n1_s": t[n1], "t_n2_s": t[n2]}


def train_flops(cfg: TransformerConfig, b: int, t: int) -> float:
    d, L = cfg.d_model, cfg.n_layers
    per_layer = d * cfg.head_dim * (cfg.n_heads * 2 + cfg.n_kv_heads * 2) + 3 * d * cfg.ffn_dim
    matmul = L * per_layer + d * cfg.vocab_size  # the lm head (tied) is a matmul too
    attn = L * 2 * 2 * cfg.n_heads * cfg.head_dim * t / 2  # QK^T and PV, causal half, per token
    return 3 * b * t * (2 * matmul + attn)


def bench_train(mdef, params, b: int, t: int, chunk: int) -> dict:
    ocfg = OptimizerConfig(name="adamw", lr=1e-5, max_grad_norm=1.0)
    tx = make_optimizer(ocfg, 10)
    step = jax.jit(make_sft_step(mdef, ocfg, tx, 1, chunk), donate_argnums=(0,))
    rng = np.random.default_rng(0)
    batch = {"tokens": jnp.asarray(rng.integers(3, mdef.cfg.vocab_size, (b, t)), jnp.int32),
             "valid": jnp.ones((b, t), bool), "loss_mask": jnp.ones((b, t), bool)}
    state = init_state(params, tx, 0)
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        ts.append(time.perf_counter() - t0)
    s = float(np.median(ts))
    fl = train_flops(mdef.cfg, b, t)
    kind = jax.devices()[0].device_kind
    peak = next((v for k, v in PEAK_BF16.items() if k in kind), None)
    return {"batch": b, "seq": t, "step_s": s, "first_step_s": compile_s, "tokens_per_s": b * t / s,
            "model_tflops_per_s": fl / s / 1e12, "mfu": (fl / s / peak) if peak else None,
            "loss": float(m["loss"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--train-seq", type=int, default=2048)
    ap.add_argument("--remat", default="full", choices=["none", "dots", "full"])
    args = ap.parse_args()
    out = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(), "jax": jax.__version__}
    bw = hbm_bandwidth(args.tiny)
    out["hbm_bytes_per_s_measured"] = bw
    if not args.skip_decode:
        cfg = qwen25_15b(args.tiny, "bfloat16", "bfloat16")
        mdef, params = create(cfg, 0)
        out["n_params"] = int(sum(x.size for x in jax.tree.leaves(params)))
        out["decode"] = [bench_decode(mdef, params, b, 128, 32, 160, bw) for b in (64, 256)]
        print(json.dumps(out), flush=True)
        del params
    if not args.skip_train:
        cfg = dataclasses.replace(qwen25_15b(args.tiny, "bfloat16", "float32"), remat=args.remat)
        mdef, params = create(cfg, 0)
        b, t = (2, 64) if args.tiny else (args.train_batch, args.train_seq)
        out["train"] = bench_train(mdef, params, b, t, 0 if args.tiny else 512)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
