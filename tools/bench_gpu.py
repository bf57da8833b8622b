#!/usr/bin/env python
"""GPU check: decode throughput against the HBM roofline, and train-step MFU, for a Qwen2.5-1.5B-shaped
model with random weights (bf16 compute). Prints one JSON line.

Decode: per-step time is taken from two budgets, (t(N2) - t(N1)) / (N2 - N1), so prefill and launch costs
cancel. The roofline of one decode step is (bytes of parameters + bytes of KV cache read) / HBM bandwidth,
with the bandwidth measured in the same run by a device-to-device copy.
Train: one SFT step (fp32 master weights, bf16 compute, chunked log-probs) on B x T tokens;
MFU = model FLOPs (6 per parameter per token + causal attention) / time / peak bf16 FLOP/s.
Log-prob gap: the sampler's recorded log-probs of its own tokens against the trainer's forward on the same
rows (bf16 compute), max / median over completion tokens (the issue's bound: 1e-3).
``--gap-only``: the gap, the same with ``model.batch_invariant`` (``logprob_gap_bf16_batch_invariant``, with
the sampling call's time in each arithmetic), and how often the device's GEMMs give a row another result when
it is computed with fewer rows (``gemm_invariance``: the cause the standard gap comes down to).
Profile (``--profile``): one decode call and one train step under ``jax.profiler``; the device's kernels are
summed by name and by kind (matmul, attention, copy / cache update, sort / top-k, reduction, other fusion),
with the device's busy time against the wall time (the gaps are launch, host and loop-condition overhead),
so the JSON itself accounts for where a step's time goes.
``--shape gemma4-e2b``: the same at Gemma 4 E2B's shape (configs/arch/gemma-4-e2b: per-layer inputs, 12 sliding
and 3 full layers holding the cache that 20 more layers read, 512-wide full heads); the roofline then counts what
a step must read: each cached layer's keys/values (a sliding layer's last ``sliding_window`` slots only) and the
weights but the per-layer table, of which a step reads one row per token (``kv_bytes_all_slots``: every slot, as
the sampler reads them today).
Usage: python tools/bench_gpu.py [--tiny] [--profile] [--shape qwen2.5-1.5b|gemma4-e2b] (``--tiny`` runs a toy
shape on any backend, as a smoke test).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from reasoning_rl.models import TransformerConfig, config_from_hf, create
from reasoning_rl.models.layers import invariant, kernels

from reasoning_rl.algorithms.logprobs import target_logprobs
from reasoning_rl.algorithms.steps import init_state, make_optimizer, make_sft_step
from reasoning_rl.config import OptimizerConfig
from reasoning_rl.rollout.sampler import SamplingParams, sample, split_decode

PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 datasheet figures


def qwen25_15b(tiny: bool, dtype: str, param_dtype: str, attention_impl: str = "auto",
               decode_layers: str = "auto") -> TransformerConfig:
    if tiny:
        return TransformerConfig(vocab_size=512, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32,
                                 ffn_dim=256, qkv_bias=True, tie_embeddings=True, dtype=dtype,
                                 param_dtype=param_dtype, rope_theta=1e6, attention_impl=attention_impl,
                                 decode_layers=decode_layers)
    return TransformerConfig(vocab_size=151936, d_model=1536, n_layers=28, n_heads=12, n_kv_heads=2, head_dim=128,
                             ffn_dim=8960, qkv_bias=True, tie_embeddings=True, dtype=dtype,
                             param_dtype=param_dtype, rope_theta=1e6, max_seq_len=32768,
                             attention_impl=attention_impl, decode_layers=decode_layers)


def timed(fn, *a, reps: int = 3) -> float:
    return kernels.median_seconds(fn, *a, reps=reps)


KINDS = (  # kernel name patterns -> kind, first match wins (XLA:GPU, cuBLAS/cuDNN/CUTLASS, Pallas/Triton names)
    ("attention", r"flash|fmha|attention|attn|cudnn.*sdpa|mha|decode_attn|paged"),
    ("matmul", r"gemm|matmul|cublas|cutlass|xmma|nvjet|dot|sm\d+_.*(hmma|wgmma)|triton_.*dot"),
    ("sort/top-k", r"sort|topk|top_k|radix|cub::"),
    ("copy/update", r"memcpy|memset|copy|dynamic[-_]update[-_]slice|dynamic[-_]slice|scatter|gather|transpose"),
    ("reduction", r"reduce|reduction|softmax"),
    ("fusion", r"fusion|loop_|input_|triton"),
)


def kernel_kind(name: str) -> str:
    low = name.lower()
    return next((kind for kind, pat in KINDS if re.search(pat, low)), "other")


def _device_events(trace: dict) -> list[dict]:
    """Complete ('X') events of the trace's device processes ('/device:GPU:0', TPU); on CPU (smoke test) the
    XLA executor threads' op events instead."""
    ev = trace["traceEvents"] if isinstance(trace, dict) else trace
    procs = {e["pid"]: e.get("args", {}).get("name", "") for e in ev
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e["pid"], e["tid"]): e.get("args", {}).get("name", "") for e in ev
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    dev = {pid for pid, name in procs.items() if name.startswith("/device:")}
    if dev:  # kernels run on "Stream #n" lines; "XLA Modules" / "XLA Ops" lines repeat them as spans
        streams = {k for k, name in threads.items() if k[0] in dev and name.startswith("Stream")}
        return [e for e in ev if e.get("ph") == "X" and e["pid"] in dev
                and (not streams or (e["pid"], e["tid"]) in streams)]
    xla = {k for k, name in threads.items() if "XLA" in name}
    nested = re.compile(r"^(\$|end: |ThunkExecutor|while|conditional|call|CommonPjRt|Execute|Handle |Wait )")
    return [e for e in ev if e.get("ph") == "X" and (e["pid"], e["tid"]) in xla and not nested.match(e["name"])]


def _busy(events: list[dict]) -> float:
    """Microseconds in which at least one kernel ran (the union of the events' intervals)."""
    spans = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in events)
    total, end = 0.0, -1.0
    for a, b in spans:
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def profile(fn, *args, reps: int = 2, top: int = 12) -> dict:
    """Run ``fn(*args)`` ``reps`` times under the profiler (after one warm call) and sum the device's kernels:
    per call, the wall time, the device's busy time and share, time by kind, and the ``top`` kernels."""
    jax.block_until_ready(fn(*args))
    d = tempfile.mkdtemp(prefix="bench_gpu_trace_")
    t0 = time.perf_counter()
    with jax.profiler.trace(d, create_perfetto_trace=True):
        for _ in range(reps):
            jax.block_until_ready(fn(*args))
    wall = (time.perf_counter() - t0) / reps
    paths = glob.glob(f"{d}/**/perfetto_trace.json.gz", recursive=True)
    if not paths:
        return {"error": f"no perfetto trace under {d}"}
    with gzip.open(paths[0]) as f:
        events = _device_events(json.load(f))
    by_name: dict[str, float] = {}
    count: dict[str, int] = {}
    for e in events:
        by_name[e["name"]] = by_name.get(e["name"], 0.0) + float(e.get("dur", 0))
        count[e["name"]] = count.get(e["name"], 0) + 1
    kernel_us = sum(by_name.values())
    kinds: dict[str, float] = {}
    for name, us in by_name.items():
        kinds[kernel_kind(name)] = kinds.get(kernel_kind(name), 0.0) + us
    busy = _busy(events) / 1e6 / reps
    return {"wall_s": wall, "device_busy_s": busy, "device_busy_frac": busy / wall if wall else None,
            "kernels": len(events) // max(reps, 1),
            "by_kind_frac": {k: round(v / kernel_us, 4) for k, v in sorted(kinds.items(), key=lambda x: -x[1])}
            if kernel_us else {},
            "top": [{"name": n[:120], "kind": kernel_kind(n), "s_per_call": us / 1e6 / reps,
                     "launches_per_call": count[n] / reps, "frac": round(us / kernel_us, 4)}
                    for n, us in sorted(by_name.items(), key=lambda x: -x[1])[:top]],
            "trace_dir": d}


GAP_SHAPE = {False: (64, 128, 128), True: (8, 128, 16)}  # rows, prompt, new tokens (by --tiny)


def logprob_gap(mdef, params, batch: int, prompt: int, new: int) -> dict:
    """The sampler's log-probs of its own tokens against the trainer's forward of the same rows."""
    cfg = mdef.cfg
    rng = np.random.default_rng(1)
    pt = rng.integers(3, cfg.vocab_size, (batch, prompt)).astype(np.int32)
    pv = np.ones_like(pt, bool)
    sp = SamplingParams(new, 1.0, 0, 1.0, False, (), 0, 1)
    out = jax.device_get(sample(mdef, params, pt, pv, jax.random.key(1), sp))
    t0 = time.perf_counter()  # a second, compiled call: what the sampler costs in this arithmetic
    jax.block_until_ready(sample(mdef, params, pt, pv, jax.random.key(1), sp))
    sample_s = time.perf_counter() - t0
    tokens = jnp.asarray(np.concatenate([pt, out.tokens], axis=1), jnp.int32)
    valid = jnp.asarray(np.concatenate([pv, out.mask], axis=1))
    lp = jax.jit(lambda p, t, v: target_logprobs(mdef.bind(p), t, v, new, 1.0, None),
                 compiler_options=invariant.compiler_options(cfg.batch_invariant))(params, tokens, valid)
    gap = np.abs(np.asarray(lp, np.float32) - out.logprobs)[out.mask]
    return {"rows": batch, "new_tokens": new, "tokens": int(gap.size), "max": float(gap.max()),
            "median": float(np.median(gap)), "p99": float(np.quantile(gap, 0.99)),
            "within_1e-3": bool(gap.max() <= 1e-3), "sample_s": round(sample_s, 4)}


def gemm_invariance(cfg: TransformerConfig, rows: int, batches: list[int]) -> list[dict]:
    """Whether the device's matrix products give a row the same result whatever the number of rows: each of
    the model's projection shapes as a bf16 GEMM over ``rows`` rows (a training forward) against the first
    ``m`` rows alone (a decode step at batch ``m``). A row whose result differs in one bf16 ulp makes the
    sampler's and the trainer's forwards of that token differ there, and the difference spreads through
    every later bf16 rounding: the log-prob gap in bf16 is bounded by how often this happens, not by the
    products' precision (both accumulate in float32)."""
    d, hd = cfg.d_model, cfg.head_dim
    shapes = {"q": (d, cfg.n_heads * hd), "kv": (d, cfg.n_kv_heads * hd), "o": (cfg.n_heads * hd, d),
              "gate_up": (d, cfg.ffn_dim), "down": (cfg.ffn_dim, d), "head": (d, cfg.vocab_size)}
    rng = np.random.default_rng(2)
    mm = jax.jit(lambda a, w: a @ w)
    out = []
    for name, (k, n) in shapes.items():
        w = jnp.asarray(rng.normal(size=(k, n)) / np.sqrt(k), jnp.bfloat16)
        x = jnp.asarray(rng.normal(size=(rows, k)), jnp.bfloat16)
        full = np.asarray(mm(x, w), np.float32)
        for m in batches:
            part = np.asarray(mm(x[:m], w), np.float32)
            diff = part != full[:m]
            rel = np.abs(part - full[:m]) / np.maximum(np.abs(full[:m]), 1e-30)
            out.append({"proj": name, "k": k, "n": n, "rows": rows, "m": m,
                        "differing_frac": float(diff.mean()), "rows_differing_frac": float(diff.any(1).mean()),
                        "max_rel": float(rel.max())})
    return out


def gemma4_e2b(tiny: bool, dtype: str, param_dtype: str, attention_impl: str = "auto",
               decode_layers: str = "auto") -> TransformerConfig:
    """Gemma 4 E2B's shape (configs/arch/gemma-4-e2b), or a toy with its kinds of layer (``tiny``)."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    cfg = config_from_hf(os.path.join(root, "configs", "arch", "gemma-4-e2b"))
    if tiny:
        cfg = dataclasses.replace(cfg, vocab_size=512, ple_vocab=0, d_model=64, n_layers=5, n_heads=4, head_dim=16,
                                  full_head_dim=32, ffn_dim=128, ple_dim=8, kv_shared_layers=2, sliding_window=8,
                                  layer_types=("sliding", "sliding", "full", "sliding", "full"))
    return dataclasses.replace(cfg, dtype=dtype, param_dtype=param_dtype, attention_impl=attention_impl,
                               decode_layers=decode_layers, max_seq_len=32768)


SHAPES = {"qwen2.5-1.5b": qwen25_15b, "gemma4-e2b": gemma4_e2b}


def kv_bytes_per_step(cfg: TransformerConfig, batch: int, slots: float, windowed: bool = True) -> float:
    """Keys/values a decode step reads: each cached layer's (``cfg.cached_layers``: a layer sharing another's reads
    that one's, already counted), at its kind's shape, over ``slots`` slots (a sliding layer's last
    ``sliding_window`` only, with ``windowed``)."""
    total = 0.0
    for i in cfg.cached_layers:
        kk, kd, vk, vd = cfg.kv_shape_of(cfg.cache_kind(i))
        s = min(slots, cfg.sliding_window) if windowed and cfg.sliding_layers[i] and cfg.sliding_window else slots
        total += batch * s * (kk * kd + vk * vd)
    return total * jnp.dtype(cfg.jnp_dtype).itemsize


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
        t[n] = timed(lambda p, a, b, sp=sp: sample(mdef, p, a, b, jax.random.key(0), sp), params, pt, pv, reps=2)
    step = (t[n2] - t[n1]) / (n2 - n1)
    # the weights a step must read: in the compute dtype (float32 master weights are cast once per call); of the
    # per-layer input table (Gemma 4 E2B) only a row per token
    p_bytes = sum(x.size * min(x.dtype.itemsize, jnp.dtype(cfg.jnp_dtype).itemsize)
                  for k, x in jax.tree_util.tree_flatten_with_path(params)[0] if "ple_embed" not in str(k[0]))
    s_avg = prompt + (n1 + n2) / 2
    kv_bytes = kv_bytes_per_step(cfg, batch, s_avg)
    roof = (p_bytes + kv_bytes) / bw
    return {"batch": batch, "prompt": prompt, "decode_step_s": step, "tokens_per_s": batch / step,
            "roofline_step_s": roof, "fraction_of_roofline": roof / step, "param_bytes": p_bytes,
            "kv_bytes_per_step": kv_bytes, "kv_bytes_all_slots": kv_bytes_per_step(cfg, batch, s_avg, False),
            "t_n1_s": t[n1], "t_n2_s": t[n2]}


def train_flops(cfg: TransformerConfig, b: int, t: int, params=None) -> float:
    """Model FLOPs of a training step: 6 per matmul weight per token (the layers' projection matrices, counted from
    ``params`` when given: per-layer shapes, shared layers without keys/values, per-layer inputs; and the tied lm
    head) plus the attention's QK^T and PV (causal half of the keys; a sliding layer's window at most)."""
    d, L = cfg.d_model, cfg.n_layers
    if params is None:
        per_layer = d * cfg.head_dim * (cfg.n_heads * 2 + cfg.n_kv_heads * 2) + 3 * d * cfg.ffn_dim
        matmul = L * per_layer
    else:  # matrices only: not norms, biases, scalars or the embedding tables (looked up, not multiplied)
        skip = ("norm", "bias", "layer_scalar", "sinks", "embed")
        matmul = sum(x.size for k, x in jax.tree_util.tree_flatten_with_path(params)[0]
                     if not any(s in "/".join(str(p) for p in k) for s in skip) and x.ndim >= 2)
    if params is None or cfg.tie_embeddings:  # the lm head (tied) is a matmul too (untied: among the params)
        matmul += d * cfg.vocab_size
    attn = 0.0
    for i in range(L):  # QK^T and PV per token over the keys a query sees
        hd = cfg.full_head_dim if not cfg.sliding_layers[i] and cfg.full_head_dim else cfg.head_dim
        keys = min(t / 2, cfg.sliding_window) if cfg.sliding_layers[i] and cfg.sliding_window else t / 2
        attn += 2 * 2 * cfg.n_heads * hd * keys
    return 3 * b * t * (2 * matmul + attn)


def bench_train(mdef, params, b: int, t: int, chunk: int, with_profile: bool = False) -> dict:
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
    fl = train_flops(mdef.cfg, b, t, params)
    kind = jax.devices()[0].device_kind
    peak = next((v for k, v in PEAK_BF16.items() if k in kind), None)
    res = {"batch": b, "seq": t, "step_s": s, "first_step_s": compile_s, "tokens_per_s": b * t / s,
           "model_tflops_per_s": fl / s / 1e12, "mfu": (fl / s / peak) if peak else None,
           "loss": float(m["loss"])}
    if with_profile:
        held = [state]

        def one_step():  # the state is donated: each call continues from the last one's
            held[0], metrics = step(held[0], batch)
            return metrics

        res["profile"] = profile(one_step)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--shape", default="qwen2.5-1.5b", choices=list(SHAPES))
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--train-seq", type=int, default=2048)
    ap.add_argument("--remat", default="full", choices=["none", "dots", "full"])
    ap.add_argument("--attention-impl", default="auto", help="model.attention_impl: auto | xla | cudnn | pallas")
    ap.add_argument("--decode-layers", default="auto", choices=["auto", "scan", "unroll"],
                    help="model.decode_layers: the stacked cache scanned, or a buffer per layer unrolled")
    ap.add_argument("--decode-param-dtype", default="bfloat16", choices=["bfloat16", "float32"],
                    help="the sampler's parameters: bf16, or float32 master weights as a GRPO run holds them")
    ap.add_argument("--batches", default="64,256", help="decode batch sizes, comma-separated")
    ap.add_argument("--no-gap", action="store_true", help="skip the sampler/trainer log-prob gap")
    ap.add_argument("--gap-only", action="store_true", help="only the bf16 log-prob gap and the GEMMs' batch "
                    "invariance (``gemm_invariance``); with XLA_FLAGS set per run, what XLA's flags change")
    ap.add_argument("--profile", action="store_true", help="kernel time by kind for one decode call and one "
                    "train step (jax.profiler)")
    args = ap.parse_args()
    out = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(), "jax": jax.__version__,
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "attention_impl": args.attention_impl, "shape": args.shape}
    model = SHAPES[args.shape]
    if args.gap_only:
        cfg = model(args.tiny, "bfloat16", "bfloat16", args.attention_impl, args.decode_layers)
        mdef, params = create(cfg, 0)
        out["logprob_gap_bf16"] = logprob_gap(mdef, params, *GAP_SHAPE[args.tiny])
        print(json.dumps(out), flush=True)
        # the same weights in batch-invariant arithmetic (model.batch_invariant): the gap it removes, its cost
        imdef, _ = create(dataclasses.replace(cfg, batch_invariant=True), abstract=True)
        try:  # first run on a device: a failure is recorded, and the GEMM part below still runs
            out["logprob_gap_bf16_batch_invariant"] = logprob_gap(imdef, params, *GAP_SHAPE[args.tiny])
        except Exception as e:  # noqa: BLE001
            out["logprob_gap_bf16_batch_invariant"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
        print(json.dumps(out), flush=True)
        out["gemm_invariance"] = gemm_invariance(cfg, 256 if args.tiny else 4096, [1, 8] if args.tiny else [1, 64, 256])
        print(json.dumps(out), flush=True)
        return
    bw = hbm_bandwidth(args.tiny)
    out["hbm_bytes_per_s_measured"] = bw
    if not args.skip_decode:
        cfg = model(args.tiny, "bfloat16", args.decode_param_dtype, args.attention_impl, args.decode_layers)
        out["decode_param_dtype"] = args.decode_param_dtype
        out["decode_layers"] = "unroll" if split_decode(cfg) else "scan"
        out["attention_paths"] = {k: v["path"] + (f" ({v['reason']})" if v["reason"] else "")
                                  for k, v in kernels.plan(cfg).items()}
        mdef, params = create(cfg, 0)
        out["n_params"] = int(sum(x.size for x in jax.tree.leaves(params)))
        batches = [int(x) for x in args.batches.split(",") if x.strip()]
        out["decode"] = [bench_decode(mdef, params, b, 128, 32, 160, bw) for b in batches]
        print(json.dumps(out), flush=True)
        if not args.no_gap:
            out["logprob_gap_bf16"] = logprob_gap(mdef, params, *GAP_SHAPE[args.tiny])
        if args.profile:
            b = 8 if args.tiny else max(batches)
            pt = np.random.default_rng(0).integers(3, mdef.cfg.vocab_size, (b, 128)).astype(np.int32)
            sp = SamplingParams(160, 1.0, 0, 1.0, False, (), 0, 1)
            out["profile_decode"] = {"batch": b, "new_tokens": 160, **profile(
                lambda p, a, v: sample(mdef, p, a, v, jax.random.key(0), sp), params, pt, np.ones_like(pt, bool))}
        print(json.dumps(out), flush=True)
        del params
    if not args.skip_train:
        cfg = dataclasses.replace(model(args.tiny, "bfloat16", "float32", args.attention_impl), remat=args.remat)
        mdef, params = create(cfg, 0)
        b, t = (2, 64) if args.tiny else (args.train_batch, args.train_seq)
        out["train"] = bench_train(mdef, params, b, t, 0 if args.tiny else 512, args.profile)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
