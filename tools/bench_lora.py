#!/usr/bin/env python
"""LoRA against full fine-tuning (JSON on stdout).

Memory: XLA's compiled memory analysis of one GRPO update (forward, backward, AdamW) at Qwen2.5-0.5B shape
(float32 parameters, ``model.remat: full`` by default; the step is only lowered and compiled, never run), full fine-tuning vs LoRA
rank ``--rank`` on q, k, v, o, gate, up, down. Peak = arguments + outputs - donated aliases + temporaries.
LoRA's frozen base is an argument of the step (never donated, never an output), its gradient and AdamW
moments do not exist.

Sampler: the GRPO rollout of the quickstart-shaped model with the adapters merged once into the weights vs
applied unmerged at every decode step (tokens/s, best of ``--reps``), and the trainer/sampler log-prob gap.

    python tools/bench_lora.py [--rank 16 --rows 16 --prompt 128 --completion 512] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from bench import best_of, log
from reasoning_rl.models import LoRAConfig, TransformerConfig, create, lora

from reasoning_rl.algorithms.steps import TrainState, make_grpo_step, make_logprob_fn, make_optimizer
from reasoning_rl.config import AlgorithmConfig, OptimizerConfig
from reasoning_rl.rollout.sampler import SamplingParams, sample_impl
from reasoning_rl.stages.common import train_compiler_options

ALL = ("q", "k", "v", "o", "gate", "up", "down")


def qwen25_05b(**kw) -> TransformerConfig:
    base = dict(vocab_size=151936, d_model=896, n_layers=24, n_heads=14, n_kv_heads=2, head_dim=64, ffn_dim=4864,
                rope_theta=1e6, qkv_bias=True, tie_embeddings=True, norm_eps=1e-6, max_seq_len=32768,
                family="qwen2")
    base.update(kw)
    return TransformerConfig(**base)


def sds(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype)


def grpo_memory(cfg: TransformerConfig, rows: int, tp: int, t: int, group: int, chunk: int) -> dict:
    """Compiled memory of one GRPO update; nothing allocated."""
    mdef, _ = create(cfg, abstract=True)
    ocfg, acfg = OptimizerConfig(), AlgorithmConfig()
    tx = make_optimizer(ocfg, 100)
    step = make_grpo_step(mdef, acfg, ocfg, tx, 1.0, chunk, group)
    params = mdef.abstract_params()
    base, ad = lora.split(params)
    train = ad if cfg.lora else params
    state = TrainState(train, jax.eval_shape(tx.init, train), sds((), jnp.int32),
                       jax.eval_shape(lambda: jax.random.key(0)), sds((), jnp.int32))
    batch = {"tokens": sds((rows, tp + t), jnp.int32), "valid": sds((rows, tp + t), jnp.bool_),
             "mask": sds((rows, t), jnp.bool_), "old_logp": sds((rows, t), jnp.float32),
             "sampler_logp": sds((rows, t), jnp.float32), "adv": sds((rows,), jnp.float32)}
    opts = train_compiler_options()
    if cfg.lora:  # as jit_train_step runs it: the base a separate, non-donated argument
        def fn(st, b, bt):
            new, m = step(dataclasses.replace(st, params=lora.join(b, st.params)), bt)
            return dataclasses.replace(new, params=lora.split(new.params)[1]), m

        compiled = jax.jit(fn, donate_argnums=(0,), compiler_options=opts).lower(state, base, batch).compile()
    else:
        compiled = jax.jit(step, donate_argnums=(0,), compiler_options=opts).lower(state, batch).compile()
    m = compiled.memory_analysis()
    n = lambda tree: sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
    peak = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    return {"peak_gib": peak / 2**30, "arguments_gib": m.argument_size_in_bytes / 2**30,
            "temporaries_gib": m.temp_size_in_bytes / 2**30, "params_gib": n(params) / 2**30,
            "trainable_params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(train)),
            "optimizer_state_gib": n(state.opt_state) / 2**30}


def sampler_speed(rank: int, prompts: int, group: int, new: int, reps: int) -> dict:
    """Merged-once vs unmerged adapters in the GRPO sampler, quickstart-shaped model (random adapters)."""
    cfg = TransformerConfig(vocab_size=48, d_model=128, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=32,
                            ffn_dim=384, lora=LoRAConfig(rank=rank, alpha=2 * rank, targets=ALL))
    mdef, params = create(cfg, 0)
    base, ad = lora.split(params)
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(ad))))
    params = lora.join(base, jax.tree.map(lambda x: x + 0.02 * jax.random.normal(next(keys), x.shape), ad))
    rng = np.random.default_rng(0)
    pt = rng.integers(3, 48, (prompts, 24)).astype(np.int32)
    pv = np.ones_like(pt, bool)
    sp = SamplingParams(new, 1.0, 0, 1.0, False, (), 0, group)
    bdef = lora.base_mdef(mdef)
    merge = jax.jit(lambda p: lora.merge(mdef, p)[1])
    merged_fn = jax.jit(functools.partial(sample_impl, bdef, sp))
    unmerged_fn = jax.jit(functools.partial(sample_impl, mdef, sp))
    key = jax.random.key(0)

    def merged():
        return jax.block_until_ready(merged_fn(merge(params), pt, pv, key))

    def unmerged():
        return jax.block_until_ready(unmerged_fn(params, pt, pv, key))

    out = {}
    for name, fn in (("merged_once", merged), ("unmerged", unmerged)):
        fn()  # compile
        res, sec = best_of(fn, reps)
        out[name] = {"seconds": sec, "tokens_per_s": prompts * group * new / sec}
        tokens = np.concatenate([np.repeat(pt, group, 0), np.asarray(res.tokens)], 1)
        valid = np.concatenate([np.repeat(pv, group, 0), np.asarray(res.mask)], 1)
        lp = jax.jit(make_logprob_fn(mdef, 1.0, group=group))(params, tokens, valid, np.asarray(res.mask))
        out[name]["max_logprob_gap_vs_trainer"] = float(
            np.max(np.abs(np.asarray(lp) - np.asarray(res.logprobs)) * np.asarray(res.mask)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--completion", type=int, default=512)
    ap.add_argument("--logits-chunk", type=int, default=64)
    ap.add_argument("--remat", default="full", choices=("none", "full", "dots"),
                    help="activation checkpointing of both updates (full: layer inputs only are kept)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="the memory comparison only, on a shorter batch")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.prompt, args.completion = 8, 64, 256
    cfg = qwen25_05b(remat=args.remat)
    lcfg = dataclasses.replace(cfg, lora=LoRAConfig(rank=args.rank, alpha=2 * args.rank, targets=ALL))
    shape = {"remat": args.remat, "rows": args.rows, "prompt": args.prompt, "completion": args.completion, "group": args.group,
             "logits_chunk": args.logits_chunk}
    out: dict = {"model": "Qwen2.5-0.5B shape (float32)", "batch": shape,
                 "machine": {"cpus": os.cpu_count(), "backend": jax.default_backend()}}
    log("compiling the full fine-tuning update ...")
    full = grpo_memory(cfg, args.rows, args.prompt, args.completion, args.group, args.logits_chunk)
    log("compiling the LoRA update ...")
    low = grpo_memory(lcfg, args.rows, args.prompt, args.completion, args.group, args.logits_chunk)
    out["full"], out[f"lora_r{args.rank}"] = full, low
    out["lora_peak_fraction_of_full"] = low["peak_gib"] / full["peak_gib"]
    if not args.quick:
        log("timing the sampler, merged vs unmerged ...")
        out["sampler"] = sampler_speed(args.rank, 16, 8, 64, args.reps)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
