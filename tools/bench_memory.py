#!/usr/bin/env python
"""Peak memory of a GRPO step with a real vocabulary: log-probs in chunks chosen by size (the default, with
``model.logits_chunk`` unset) against whole ``[B, T, V]`` logits (``logits_chunk: 0``). JSON on stdout.

Model: SmolLM-135M's shape (Llama family: vocab 49152, hidden 576, 30 layers, 9 heads / 3 KV heads, head
dim 64, MLP 1536, tied embeddings; 134.5M parameters), random weights, float32, for each ``--remat`` (``full``:
layer inputs saved, as ``configs/examples/smollm2-135m_gsm8k_cpu.yaml`` runs it; ``nested``: groups of layers
remat'd whole, fewer inputs saved; without remat the attention and MLP intermediates of 30 layers outweigh even
whole logits). Step: one GRPO update (AdamW) on a micro-batch of ``--rows`` completions (each size in the list
is measured) of ``--new`` tokens after a ``--prompt``-token prompt, in groups of ``--group``.

Peak memory is XLA's own accounting of the compiled step (arguments + outputs + temporaries - donated
buffers): abstract shapes, so nothing is allocated for it and it is the same on a shared machine. ``breakdown``
splits the peak into what is alive at it by construction (parameters, Adam moments, gradients, the batch, the
layer inputs the remat policy keeps) and the rest (one layer's backward working set, a log-prob chunk,
allocator fragmentation). The parameters, moments and gradients (2.0 GiB here) do not depend on the
vocabulary, the logits do: the default's share of the whole-logits peak falls as the micro-batch grows. The
log-probs of the two paths are then compared on real random weights (the first ``--rows`` size; ``--quick``:
2 rows): ``max_abs_diff`` against 1e-6 absolute (0 expected: the softmax sums run in a fixed order).
``--time``: wall seconds of real steps per remat policy at a small shape (the cost of ``nested``'s extra
forward).

    python tools/bench_memory.py [--quick] [--remat full,nested] [--time]
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
from reasoning_rl.models import TransformerConfig, create
from reasoning_rl.models.transformer import nested_group

from reasoning_rl.algorithms.logprobs import LOGITS_BUDGET, auto_chunk, target_logprobs
from reasoning_rl.algorithms.steps import TrainState, make_grpo_step, make_optimizer
from reasoning_rl.config import AlgorithmConfig, OptimizerConfig
from reasoning_rl.stages.common import train_compiler_options


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def smollm_135m(**kw) -> TransformerConfig:
    base = dict(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64, ffn_dim=1536,
                rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=True, max_seq_len=2048, family="llama")
    return TransformerConfig(**{**base, **kw})


def step_memory(mdef, rows: int, prompt: int, new: int, group: int, chunk: int | None) -> dict:
    ocfg = OptimizerConfig(name="adamw", lr=1e-6, max_grad_norm=1.0)
    tx = make_optimizer(ocfg, 10)
    params = mdef.abstract_params()
    sd = jax.ShapeDtypeStruct
    state = TrainState(params, jax.eval_shape(tx.init, params), sd((), jnp.int32),
                       jax.eval_shape(lambda: jax.random.key(0)), sd((), jnp.int32))
    t = prompt + new
    batch = {"tokens": sd((rows, t), jnp.int32), "valid": sd((rows, t), bool), "mask": sd((rows, new), bool),
             "old_logp": sd((rows, new), jnp.float32), "sampler_logp": sd((rows, new), jnp.float32),
             "adv": sd((rows,), jnp.float32)}
    step = make_grpo_step(mdef, AlgorithmConfig(beta=0.0), ocfg, tx, 1.0, chunk, group=group)
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0,), compiler_options=train_compiler_options()).lower(
        state, batch).compile()
    ma = compiled.memory_analysis()
    get = lambda k: int(getattr(ma, k, 0) or 0)
    temp, args, outs, alias = (get("temp_size_in_bytes"), get("argument_size_in_bytes"),
                               get("output_size_in_bytes"), get("alias_size_in_bytes"))
    peak = temp + args + outs - alias
    return {"logits_chunk": "unset (auto)" if chunk is None else chunk,
            "chunk_used": auto_chunk(rows, new, mdef.cfg.vocab_size) if chunk is None else chunk,
            "temp_bytes": temp, "argument_bytes": args, "output_bytes": outs, "alias_bytes": alias,
            "peak_bytes": peak, "breakdown": breakdown(mdef, state, batch, rows, prompt, new, group, peak),
            "compile_s": round(time.perf_counter() - t0, 1)}


def breakdown(mdef, state, batch, rows: int, prompt: int, new: int, group: int, peak: int) -> dict:
    """The step's peak split into what is alive at it by construction and the rest.

    The peak of a remat'd step is in the backward of the layer scan (XLA's buffer assignment: the largest
    offsets of the temporary buffer are that loop's): the parameters, the Adam moments, the whole gradient
    (every layer's gradient buffer is allocated before the loop, the tied embedding's gradient is already
    complete from the head), the layer inputs the remat policy keeps, and the working set of one layer's
    backward (at 16 rows: five [4096, 1536] MLP tensors, the attention's softmax parts, ~0.28 GiB), plus
    what the allocator cannot pack (``other`` holds the last two)."""
    nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
    cfg = mdef.cfg
    params, moments = nbytes(state.params), nbytes(state.opt_state)
    per_layer = (rows * new + rows // group * prompt) * cfg.d_model * 4  # completions + shared prompts
    kept = {"full": cfg.n_layers, "nested": -(-cfg.n_layers // nested_group(cfg.n_layers)) + nested_group(cfg.n_layers)}
    out = {"params_bytes": params, "adam_moments_bytes": moments, "grads_bytes": params, "batch_bytes": nbytes(batch)}
    if cfg.remat in kept:
        out["layer_inputs_kept"] = kept[cfg.remat]
        out["layer_inputs_bytes"] = kept[cfg.remat] * per_layer
    out["other_bytes"] = peak - sum(v for k, v in out.items() if k.endswith("_bytes"))
    return out


def step_time(remat: str, steps: int, rows: int, prompt: int, new: int, group: int, layers: int) -> dict:
    """Wall seconds of ``steps`` real GRPO steps (after one compile + warm-up step) with random weights."""
    cfg = smollm_135m(remat=remat, n_layers=layers)
    mdef, params = create(cfg, 0)
    ocfg = OptimizerConfig(name="adamw", lr=1e-6, max_grad_norm=1.0)
    tx = make_optimizer(ocfg, 10)
    state = TrainState(params, tx.init(params), jnp.zeros((), jnp.int32), jax.random.key(0), jnp.zeros((), jnp.int32))
    rng = np.random.default_rng(0)
    t = prompt + new
    toks = np.concatenate([np.repeat(rng.integers(1, cfg.vocab_size, (rows // group, prompt)), group, axis=0),
                           rng.integers(1, cfg.vocab_size, (rows, new))], axis=1)
    batch = {"tokens": jnp.asarray(toks, jnp.int32), "valid": jnp.ones((rows, t), bool),
             "mask": jnp.ones((rows, new), bool), "old_logp": jnp.full((rows, new), -10.0, jnp.float32),
             "sampler_logp": jnp.full((rows, new), -10.0, jnp.float32),
             "adv": jnp.asarray(rng.normal(size=rows), jnp.float32)}
    step = jax.jit(make_grpo_step(mdef, AlgorithmConfig(beta=0.0), ocfg, tx, 1.0, None, group=group),
                   donate_argnums=(0,), compiler_options=train_compiler_options())
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    log(f"[time] remat {remat}: {np.median(times):.2f}s a step (first, with compile: {first:.1f}s)")
    return {"remat": remat, "step_s": [round(x, 3) for x in times], "median_s": float(np.median(times)),
            "first_step_with_compile_s": round(first, 1), "loss": float(m["loss"])}


def logprob_gap(mdef, rows: int, prompt: int, new: int, group: int) -> dict:
    """Max |log-prob difference| between the default and whole logits, on random weights and tokens."""
    _, params = create(mdef.cfg, 0)
    rng = np.random.default_rng(0)
    v = mdef.cfg.vocab_size
    g = min(group, rows)
    p = np.repeat(rng.integers(1, v, (rows // g, prompt)), g, axis=0)
    toks = jnp.asarray(np.concatenate([p, rng.integers(1, v, (rows, new))], axis=1), jnp.int32)
    valid = jnp.ones(toks.shape, bool)
    out = {}
    for name, chunk in (("default", None), ("whole", 0)):
        f = jax.jit(lambda prm, t, vl, c=chunk: target_logprobs(mdef.bind(prm), t, vl, new, 1.0, c, group=g))
        t0 = time.perf_counter()
        out[name] = np.asarray(f(params, toks, valid))
        log(f"[logprobs] {name}: {time.perf_counter() - t0:.1f}s")
    diff = np.abs(out["default"] - out["whole"])
    # the softmax sums run in a fixed order (models/layers/invariant.py: fixed_order_sum), so chunking changes no
    # number: expected 0, required <= 1e-6 absolute (a float32 ulp at |log p| ~ 11 is 9.5e-7)
    return {"rows": rows, "chunk_used": auto_chunk(rows, new, v), "max_abs_diff": float(diff.max()),
            "identical": bool((diff == 0).all()), "mean_logprob": float(out["whole"].mean()),
            "equal_to_1e-6_absolute": float(diff.max()) <= 1e-6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="16,64", help="micro-batch sizes (completions), comma-separated")
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=192)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--remat", default="full,nested",
                    help="model.remat values, comma-separated (none, full, dots, nested; the example config's: full)")
    ap.add_argument("--time", action="store_true", help="also time real steps per remat policy at a small shape")
    ap.add_argument("--time-steps", type=int, default=3)
    ap.add_argument("--time-rows", type=int, default=8)
    ap.add_argument("--time-layers", type=int, default=30)
    ap.add_argument("--time-new", type=int, default=64)
    ap.add_argument("--time-prompt", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="compare log-probs on 2 rows only")
    ap.add_argument("--skip-logprobs", action="store_true", help="memory only")
    ap.add_argument("--skip-memory", action="store_true", help="log-probs only")
    args = ap.parse_args()
    remats = [x.strip() for x in args.remat.split(",") if x.strip()]
    bad = [r for r in remats if r not in ("none", "full", "dots", "nested")]
    if bad:
        ap.error(f"--remat: unknown {bad}")
    cfg = smollm_135m(remat=remats[0])
    mdef, _ = create(cfg, abstract=True)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(mdef.abstract_params()))
    res = {"project": "reasoning_rl", "bench": "memory", "backend": jax.default_backend(), "jax": jax.__version__,
           "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg()[0],
           "model": "SmolLM-135M shape (llama, vocab 49152, d 576, 30 layers, 9/3 heads, ffn 1536), float32",
           "params": n_params, "group": args.group, "prompt_len": args.prompt, "response_len": args.new,
           "remat": remats, "logits_budget_bytes": LOGITS_BUDGET, "micro_batches": []}
    sizes = [int(x) for x in args.rows.split(",") if x.strip()]
    for remat in [] if args.skip_memory else remats:
        mdef, _ = create(smollm_135m(remat=remat), abstract=True)
        for rows in sizes:
            one = {"remat": remat, "rows": rows, "whole_logits_bytes": rows * args.new * cfg.vocab_size * 4}
            for name, chunk in (("default", None), ("logits_chunk_0", 0)):
                one[name] = step_memory(mdef, rows, args.prompt, args.new, args.group, chunk)
                log(f"[memory] remat {remat}, {rows} rows, {name}: peak {one[name]['peak_bytes'] / 2**30:.2f} GiB "
                    f"(temporaries {one[name]['temp_bytes'] / 2**30:.2f} GiB), compile {one[name]['compile_s']}s")
            one["default_over_whole"] = one["default"]["peak_bytes"] / one["logits_chunk_0"]["peak_bytes"]
            one["default_at_most_half"] = one["default_over_whole"] <= 0.5
            res["micro_batches"].append(one)
    if args.time:
        res["step_time"] = {"rows": args.time_rows, "prompt_len": args.time_prompt, "response_len": args.time_new,
                            "layers": args.time_layers,
                            "runs": [step_time(r, args.time_steps, args.time_rows, args.time_prompt, args.time_new,
                                               args.group, args.time_layers) for r in remats]}
    if not args.skip_logprobs:
        mdef, _ = create(smollm_135m(remat=remats[0]), abstract=True)
        res["logprobs"] = logprob_gap(mdef, 2 if args.quick else sizes[0], args.prompt, args.new, args.group)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
