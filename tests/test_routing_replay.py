"""MoE routing replay: the sampler records the experts every token was computed with, the trainer can
compute the same tokens with those experts, and the step reports how often its own routing differs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from reasoning_rl.algorithms.steps import init_state, make_grpo_step, make_sft_step
from reasoning_rl.config import AlgorithmConfig, OptimizerConfig
from reasoning_rl.data.batching import rollout_batch
from reasoning_rl.models import MoEConfig, TransformerConfig, create, positions_from_valid
from reasoning_rl.rollout.sampler import SamplingParams, left_pad, sample


def moe_model(seed=0):
    cfg = TransformerConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=64,
                            moe=MoEConfig(n_experts=8, top_k=2, ffn_dim=16, first_dense=1, aux_loss_coef=0.01))
    return create(cfg, seed)


def rollout(mdef, params, record=True, g=3, n=10):
    prompts = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]
    pt, pv = left_pad(prompts, 0)
    sp = SamplingParams(n, 1.0, 0, 1.0, False, (), 0, g, record)
    return pt, pv, jax.device_get(sample(mdef, params, pt, pv, jax.random.key(1), sp))


def test_sampler_records_the_routes_a_full_forward_takes():
    mdef, params = moe_model()
    pt, pv, out = rollout(mdef, params)
    tp = pt.shape[1]
    assert out.routes.shape == (9, tp + 10, 1, 2)  # rows, Tp + N, MoE layers (the first is dense), top-k
    batch = rollout_batch(pt, pv, out.tokens, out.mask, out.logprobs, np.zeros(9), 3, out.routes)
    valid = batch["valid"]
    _, _, aux = mdef.bind(params).hidden(jnp.asarray(batch["tokens"]), positions_from_valid(jnp.asarray(valid)),
                                         jnp.asarray(valid), return_aux=True)
    full = np.sort(np.asarray(aux["routes"]), axis=-1)
    rec = np.sort(out.routes, axis=-1)
    assert (full[valid] == rec[valid]).all()
    assert len(np.unique(rec[valid][..., 0])) > 2  # real routing, not one expert
    assert rollout(mdef, params, record=False)[2].routes is None


def grpo(mdef, params, batch, replay_routes, mini_batches=1):
    acfg = AlgorithmConfig()
    tx = optax.sgd(0.5)
    step = jax.jit(make_grpo_step(mdef, acfg, OptimizerConfig(max_grad_norm=0.0), tx, 1.0))
    b = dict(batch) if replay_routes else {k: v for k, v in batch.items() if k != "routes"}
    state = init_state(params, tx, 0)
    ms = []
    for _ in range(2):
        state, m = step(state, {k: jnp.asarray(v) for k, v in b.items()})
        ms.append(jax.device_get(m))
    return state, ms


def test_trainer_replays_the_sampler_routes_and_reports_mismatch():
    mdef, params = moe_model()
    pt, pv, out = rollout(mdef, params)
    adv = np.tile([1.0, -1.0, 0.5], 3)
    batch = rollout_batch(pt, pv, out.tokens, out.mask, out.logprobs, adv, 3, out.routes)
    state, ms = grpo(mdef, params, batch, True)
    # first update: the params that sampled; their routes are the sampler's
    assert ms[0]["route_mismatch"] == 0.0
    assert ms[0]["logprob_gap"] < 1e-4
    # after a large update the policy's own routing has moved: the replayed routes now differ for some tokens
    assert ms[1]["route_mismatch"] > 0.0
    _, plain = grpo(mdef, params, batch, False)
    assert "route_mismatch" not in plain[0]
    assert plain[0]["loss"] == np.float32(ms[0]["loss"])  # same routes at the first update: same loss
    assert plain[1]["loss"] != ms[1]["loss"]  # replayed vs own routes after the update
    # routes that are not the sampler's change the computation (the trainer really uses them)
    bad = dict(batch, routes=(batch["routes"] + 1) % 8)
    _, wrong = grpo(mdef, params, bad, True)
    assert wrong[0]["route_mismatch"] > 0.9 and wrong[0]["logprob_gap"] > 1e-3


def test_moe_balance_loss_enters_the_sft_gradient():
    mdef, params = moe_model()
    tokens = np.asarray(np.random.default_rng(0).integers(1, 40, (4, 12)), np.int32)
    batch = {"tokens": tokens, "valid": np.ones_like(tokens, bool), "loss_mask": np.ones_like(tokens, bool)}
    tx = optax.sgd(0.1)

    def sft(coef):
        cfg = dataclasses.replace(mdef.cfg, moe=dataclasses.replace(mdef.cfg.moe, aux_loss_coef=coef))
        step = jax.jit(make_sft_step(create(cfg, abstract=True)[0], OptimizerConfig(max_grad_norm=0.0), tx))
        return step(init_state(params, tx, 0), batch)

    (s0, m0), (s1, m1) = sft(0.0), sft(1.0)
    assert m1["moe_balance_loss"] >= 1.0 - 1e-5  # Switch loss: 1 at perfect balance, larger otherwise
    assert m0["loss"] == m1["loss"]  # the reported loss is the task loss alone
    # the balancing term moves the router (and only through the routing weights)
    r0, r1 = (np.asarray(s.params["layers"]["mlp"]["router"]) for s in (s0, s1))
    assert np.abs(r0 - r1).max() > 1e-4
    d0, d1 = (np.asarray(s.params["dense_layers"]["mlp"]["up"]) for s in (s0, s1))
    assert not np.array_equal(d0, d1)  # the router's input comes from the layers below
