"""``model.batch_invariant``: the sampler's log-probs equal the trainer's bit for bit (float32 and bf16, plain,
refill, paged and unrolled decode, shared-prompt groups, every attention/MLP option of the dense families),
the arithmetic it uses is accurate, and a GRPO stage with LoRA reports a zero sampler/trainer gap."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import prompts, run_here, tiny_model
from reasoning_rl.algorithms.logprobs import target_logprobs
from reasoning_rl.models import MoEConfig, create
from reasoning_rl.models.config import LoRAConfig
from reasoning_rl.models.layers import invariant
from reasoning_rl.rollout import sampler as S

TINY = str(Path(__file__).parent / "configs" / "tiny.yaml")


def _model(batch_invariant=True, **kw):
    mdef, params = tiny_model(**kw)
    mdef, _ = create(dataclasses.replace(mdef.cfg, batch_invariant=batch_invariant), abstract=True)
    return mdef, params


def _gap(mdef, params, temperature=0.7, group_size=4, shared_prompt=True, **sample_kw):
    """Max |sampler - trainer| log-prob over the sampled tokens, the trainer jitted as a run jits it."""
    pt, pv = S.left_pad(prompts(5), 0)
    out = jax.device_get(S.generate(mdef, params, pt, pv, max_new_tokens=24, group_size=group_size, stop_ids=(3,),
                                    temperature=temperature, rng_seed=3, **sample_kw))
    toks = np.concatenate([np.repeat(pt, group_size, 0), out.tokens], 1)
    valid = np.concatenate([np.repeat(pv, group_size, 0), out.mask], 1)
    n = out.tokens.shape[1]
    group = group_size if shared_prompt else 1
    fn = jax.jit(lambda p, a, b: target_logprobs(mdef.bind(p), a, b, n, temperature, group=group),
                 compiler_options=invariant.compiler_options(mdef.cfg.batch_invariant))
    lp = np.asarray(fn(params, jnp.asarray(toks), jnp.asarray(valid)))
    assert out.mask.sum() > 50
    return float(np.abs(np.where(out.mask, lp - out.logprobs, 0.0)).max())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sampler_and_trainer_log_probs_are_equal_bit_for_bit(dtype):
    mdef, params = _model(dtype=dtype)
    assert _gap(mdef, params) == 0.0
    assert _gap(mdef, params, temperature=1.0, shared_prompt=False) == 0.0
    # the same model and samples without the mode: the gap this mode removes
    assert _gap(*_model(batch_invariant=False, dtype=dtype)) > 0.0


@pytest.mark.parametrize("form", ["refill", "paged", "unroll"])
def test_every_decode_form_is_exact(form):
    kw = {"refill": {"slots": 6, "refill_min": 1}, "paged": {"page_size": 4}, "unroll": {}}[form]
    model = {"unroll": {"decode_layers": "unroll"}}.get(form, {})
    mdef, params = _model(**model)
    assert _gap(mdef, params, **kw) == 0.0


@pytest.mark.optimized  # bf16 softcaps and GeGLU: bit for bit under the compiler flags runs use
def test_every_dense_family_option_is_exact_and_close_to_the_standard_arithmetic():
    """Gemma/gpt-oss/OLMo-style options: q/k norms, attention and final softcaps, sliding layers, sinks,
    GeGLU, embedding scale, norm offset, biases, per-head and per-dim output gates with a bias (LFM3, Beam),
    depth-scaled residual adds and position-scaled queries of a layer without rotary (Beam); bf16 compute."""
    kw = dict(qk_norm=True, attn_softcap=20.0, final_softcap=15.0, sliding_window=6,
              layer_types=("sliding", "full"), attn_sinks=True, activation="gelu_tanh", embed_scale=True,
              norm_offset=1.0, qkv_bias=True, out_bias=True, tie_embeddings=False, head_gate=True, attn_gate=True,
              gate_bias=True, depth_residual=True, nope_layers=(1,), nope_query_scale=(0.1, 16.0))
    mdef, params = _model(dtype="bfloat16", **kw)
    params = jax.tree.map(lambda a: a + 0.02 * jax.random.normal(jax.random.key(1), a.shape, a.dtype), params)
    assert _gap(mdef, params) == 0.0
    # float32: the mode computes the same function as the standard arithmetic, to rounding
    f32, _ = _model(**kw)
    std, _ = _model(batch_invariant=False, **kw)
    toks = jnp.asarray(np.random.default_rng(0).integers(4, 40, (3, 30)), jnp.int32)
    a, b = (np.asarray(jax.jit(m.bind(params).__call__)(toks)) for m in (f32, std))
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


def test_per_layer_inputs_and_layers_sharing_keys_and_values_are_exact():
    """Gemma 4 E2B's switches: per-layer inputs gated into each layer, and the last two layers attending over the
    keys/values of the earlier sliding and full layers (read from the cache when sampling, kept by the trainer's
    shared-prompt pass). (The paged cache's reads for them: tests/test_shared_kv_layers.py.)"""
    kw = dict(n_layers=4, qk_norm=True, sliding_window=6, layer_types=("sliding", "full", "sliding", "full"),
              activation="gelu_tanh", ple_dim=4, kv_shared_layers=2, double_wide_mlp=True)
    assert _gap(*_model(**kw)) == 0.0


def test_gradients_are_the_standard_arithmetics():
    """Of the log-prob loss (the normaliser's fixed exp and log included) of a LoRA model with sinks and a
    softcap: the mode's gradients are the standard arithmetic's, to rounding."""
    kw = dict(attn_sinks=True, attn_softcap=20.0, lora=LoRAConfig(rank=4, alpha=8, targets=("q", "v", "o", "up")))
    mdef, params = _model(**kw)
    std, _ = _model(batch_invariant=False, **kw)
    params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(1), a.shape, a.dtype), params)
    toks = jnp.asarray(np.random.default_rng(0).integers(4, 40, (4, 20)), jnp.int32)
    valid = jnp.ones((4, 20), bool).at[0, :3].set(False)

    def loss(m, p):
        return -jnp.mean(target_logprobs(m.bind(p), toks, valid, 12, 0.7, group=2))

    ga, gb = (jax.jit(jax.grad(lambda p, m=m: loss(m, p)),
                      compiler_options=invariant.compiler_options(m.cfg.batch_invariant))(params) for m in (mdef, std))
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))


def test_matmul_rows_do_not_depend_on_the_call():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.standard_normal((128, 384)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((200, 128)), jnp.float32)
    whole = np.asarray(jax.jit(invariant.matmul)(x, w))
    plain = np.asarray(jax.jit(jnp.matmul)(x, w))
    differs = False
    for m in (1, 2, 7, 64, 65, 130):
        np.testing.assert_array_equal(np.asarray(jax.jit(invariant.matmul)(x[:m], w)), whole[:m])
        differs |= bool((np.asarray(jax.jit(jnp.matmul)(x[:m], w)) != plain[:m]).any())
    assert differs  # XLA:CPU's own product of a few rows differs from the same rows in a larger one


def test_elementary_functions_are_accurate():
    x = np.random.default_rng(0).uniform(-86, 88, 200_000).astype(np.float32)
    ref = np.exp(x.astype(np.float64))
    assert np.max(np.abs(np.asarray(invariant.exp(x)) - ref) / ref) < 2 * 2.0**-24
    assert float(invariant.exp(jnp.float32(-1e30))) == 0.0 and float(invariant.exp(jnp.float32(0))) == 1.0
    y = np.exp(np.random.default_rng(1).uniform(-80, 80, 200_000)).astype(np.float32)
    ref = np.log(y.astype(np.float64))
    tol = 2 * np.maximum(np.spacing(np.abs(ref).astype(np.float32)), np.spacing(np.float32(1e-7)))
    assert np.all(np.abs(np.asarray(invariant.log(y)) - ref) <= tol)
    assert float(invariant.log(jnp.float32(0))) == -np.inf and float(invariant.log(jnp.float32(1))) == 0.0
    z = np.random.default_rng(2).uniform(-12, 12, 100_000).astype(np.float32)
    np.testing.assert_allclose(np.asarray(invariant.tanh(z)), np.tanh(z.astype(np.float64)), rtol=0, atol=2e-7)
    np.testing.assert_allclose(np.asarray(invariant.sigmoid(z)), 1 / (1 + np.exp(-z.astype(np.float64))),
                               rtol=4e-7, atol=0)


def test_a_mixture_of_experts_model_is_refused():
    with pytest.raises(ValueError, match="batch_invariant"):
        create(dataclasses.replace(tiny_model()[0].cfg, batch_invariant=True,
                                   moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=32)), abstract=True)
    p = run_here("plan", TINY, "--set", "model.batch_invariant=true", "--set",
                 "model.moe={n_experts: 4, top_k: 2, ffn_dim: 32}")
    assert p.returncode == 2 and "model.batch_invariant" in p.stderr, p.stderr[-2000:]
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_lora_grpo_stage_has_no_sampler_trainer_gap(tmp_path):
    """A GRPO stage of the tiny config with LoRA (adapters unmerged in the sampler: merged weights are other
    roundings), bf16 compute at T=0.7, on a data x tensor mesh of 4 CPU devices: every step's
    ``logprob_gap`` is exactly zero. (From random weights, without the cold start: the claim is about the
    arithmetic, whatever the weights.)"""
    from reasoning_rl.metrics import read_metrics

    d = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "reasoning_rl", "run", TINY, "--no-progress", "--run-dir", str(d),
                        "--set", "model.batch_invariant=true", "--set", "model.dtype=bfloat16",
                        "--set", "rollout.temperature=0.7", "--set", "eval.greedy=false",
                        "--set", "stages=[{name: grpo, kind: grpo, steps: 3, allow_random_init: true}]",
                        "--set", "mesh.cpu_devices=4", "--set", "mesh.data=2", "--set", "mesh.tensor=2",
                        "--set", "model.lora={rank: 4, alpha: 8, targets: [q, k, v, o, gate, up, down]}"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    grpo = [r for r in read_metrics(d) if r["stage"] == "grpo"]
    assert len(grpo) == 3 and all(r["logprob_gap"] == 0.0 for r in grpo), [r["logprob_gap"] for r in grpo]
