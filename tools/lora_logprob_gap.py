"""Where the sampler/trainer log-prob gap of a LoRA run comes from (JSON).

Loads a finished LoRA stage of a run (``--run-dir``, ``--stage``), samples one rollout batch of the run's
GRPO stage settings, and compares the behaviour log-probs of the sampler (adapters merged once, and
unmerged) with the trainer's recompute, and with the same weights merged and run as a plain model (the full
fine-tuning code: no adapter anywhere). ``--float64`` adds a float64 forward of the same model as the exact
reference (the model's explicit float32 steps - norms, rope angles, attention scores, logits - are run in
float64 for it), and the shift of rounding only the merged weights to float32.

    python tools/lora_logprob_gap.py --run-dir runs/quickstart_lora --stage sft --float64
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np
from reasoning_rl.models import config as model_config
from reasoning_rl.models import create, lora

from reasoning_rl import config as C
from reasoning_rl import pipeline
from reasoning_rl.algorithms.steps import make_logprob_fn
from reasoning_rl.data.batching import prompt_batch, rollout_batch
from reasoning_rl.rollout.sampler import SamplingParams, sample_impl
from reasoning_rl.stages.common import Runtime
from reasoning_rl.stages.grpo import prompt_len

FLOAT32_STEPS = ("reasoning_rl.models.layers.attention", "reasoning_rl.models.layers.rope",
                 "reasoning_rl.models.layers.norm", "reasoning_rl.models.transformer", "reasoning_rl.models.layers.mlp",
                 "reasoning_rl.models.lora", "reasoning_rl.rollout.sampling", "reasoning_rl.algorithms.logprobs")


class _Float64Numpy:
    """``jax.numpy`` whose ``float32`` is float64: the model's explicit float32 steps run in float64."""

    float32 = jnp.float64

    def __getattr__(self, name):
        return getattr(jnp, name)


@contextlib.contextmanager
def float64_model():
    """x64 on, the model's float32 steps in float64, a "float64" model dtype (measurement only)."""
    mods = [importlib.import_module(m) for m in FLOAT32_STEPS]
    saved = [m.jnp for m in mods]
    model_config.DTYPES["float64"] = jnp.float64
    with jax.enable_x64(True):
        for m in mods:
            m.jnp = _Float64Numpy()
        try:
            yield
        finally:
            for m, j in zip(mods, saved):
                m.jnp = j
            model_config.DTYPES.pop("float64")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--stage", default="sft", help="the finished LoRA stage whose adapters to measure")
    ap.add_argument("--grpo-stage", default=None, help="rollout settings from this stage (default: the first grpo)")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--float64", action="store_true", help="also compare with a float64 forward")
    args = ap.parse_args()
    cfg = C.from_dict(C.load_raw(f"{args.run_dir}/config.yaml"))
    rt = Runtime(cfg, args.run_dir)
    if not rt.lora:
        raise SystemExit(f"{args.run_dir}: not a LoRA run (no model.lora)")
    params = pipeline.load_stage_params(rt, C.stage(cfg, args.stage))
    g = C.stage(cfg, args.grpo_stage) if args.grpo_stage else next(s for s in cfg.stages if s.kind == "grpo")
    r = g.rollout
    sp = SamplingParams(r.max_new_tokens, r.temperature, r.top_k, r.top_p, False, rt.stop_ids(r),
                        rt.tok.pad_id, r.group_size, False, stop_table=rt.stop_table(r), min_p=r.min_p)
    pt, pv = prompt_batch(rt.tok, [rt.task.example("train", i).as_dict() for i in range(r.prompts_per_step)])
    pad = max(prompt_len(rt) - pt.shape[1], 0)
    pt = np.pad(pt, ((0, 0), (pad, 0)), constant_values=rt.tok.pad_id)
    pv = np.pad(pv, ((0, 0), (pad, 0)))
    key = jax.random.key(args.seed)
    merged = jax.jit(lambda p: lora.merge(rt.mdef, p)[1])(params)
    sample = lambda mdef, p: jax.device_get(jax.jit(lambda q, a, b, k: sample_impl(mdef, sp, q, a, b, k))(p, pt, pv, key))
    s_merged, s_unmerged = sample(rt.base_mdef, merged), sample(rt.mdef, params)
    b = rollout_batch(pt, pv, s_merged.tokens, s_merged.mask, s_merged.logprobs,
                      np.zeros(s_merged.tokens.shape[0], np.float32), r.group_size)
    mask = b["mask"].astype(bool)

    def trainer(mdef, p, group=r.group_size):
        fn = jax.jit(make_logprob_fn(mdef, r.temperature, 0, group))
        return np.asarray(fn(p, b["tokens"], b["valid"], b["mask"]), np.float64)

    gap = lambda x, y: float(np.abs(np.asarray(x, np.float64) - y)[mask].max())
    lp = trainer(rt.mdef, params)
    per_token = np.abs(lp - s_merged.logprobs)[mask]
    ref = lp[mask]
    out = {
        "tokens": int(mask.sum()), "temperature": r.temperature,
        "gap_sampler_merged_vs_trainer": gap(s_merged.logprobs, lp),
        "gap_same_weights_as_plain_model": gap(s_merged.logprobs, trainer(rt.base_mdef, merged)),
        "per_token_gap_quantiles_50_90_99": [float(q) for q in np.quantile(per_token, [0.5, 0.9, 0.99])],
        "max_gap_by_logp": {f"logp>{lo}" if hi is None else f"{lo}<logp<={hi}":
                            float(per_token[(ref > lo) & (True if hi is None else ref <= hi)].max(initial=0.0))
                            for lo, hi in ((-0.1, None), (-1.0, -0.1), (-100.0, -1.0))},
    }
    if np.array_equal(s_merged.tokens, s_unmerged.tokens):
        out["gap_sampler_unmerged_vs_trainer"] = gap(s_unmerged.logprobs, lp)
    if args.float64:
        f64 = lambda mdef: create(dataclasses.replace(mdef.cfg, dtype="float64", param_dtype="float64"),
                                  abstract=True)[0]
        to64 = lambda t: jax.tree.map(lambda x: jnp.asarray(np.asarray(x, np.float64)), t)
        with float64_model():
            exact = trainer(f64(rt.mdef), to64(params), 1)
            merged_rounded = trainer(f64(rt.base_mdef), to64(merged), 1)
        out["float64"] = {"sampler_merged": gap(s_merged.logprobs, exact), "trainer": gap(lp, exact),
                          "trainer_whole_rows": gap(trainer(rt.mdef, params, 1), exact),
                          "merged_weights_rounded_to_float32": gap(merged_rounded, exact)}
        if "gap_sampler_unmerged_vs_trainer" in out:
            out["float64"]["sampler_unmerged"] = gap(s_unmerged.logprobs, exact)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
