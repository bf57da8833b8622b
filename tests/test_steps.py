import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import prompts, tiny_model
from reasoning_rl.algorithms import logprobs
from reasoning_rl.algorithms.steps import (init_state, make_grpo_grad, make_grpo_step, make_logprob_fn, make_optimizer,
                                           make_sft_step)
from reasoning_rl.config import AlgorithmConfig, OptimizerConfig
from reasoning_rl.models import MLAConfig
from reasoning_rl.models.layers import attention
from reasoning_rl.data.batching import rollout_batch, trim_completions, update_width
from reasoning_rl.rollout import sampler as S

SGD = OptimizerConfig(name="sgd", lr=1.0, max_grad_norm=0.0)


def rollout(mdef, params, n_prompts=4, g=4, seed=0):
    pt, pv = S.left_pad(prompts(n_prompts, seed=seed), 0)
    out = jax.device_get(S.generate(mdef, params, pt, pv, max_new_tokens=10, group_size=g, stop_ids=(3,),
                                    rng_seed=seed))
    adv = np.random.default_rng(seed).normal(size=n_prompts * g).astype(np.float32)
    b = rollout_batch(pt, pv, out.tokens, out.mask, out.logprobs, adv, g)
    # a behaviour policy that differs from the current one, so ratios and clipping are exercised
    b["old_logp"] = b["old_logp"] + np.random.default_rng(1).normal(0, 0.3, b["old_logp"].shape).astype(np.float32)
    b["ref_logp"] = b["sampler_logp"] - 0.1
    return b


def grads_of(step_cfg, batch):
    mdef, params = tiny_model()
    grads, aux = jax.jit(make_grpo_grad(mdef, step_cfg, temperature=1.0))(params, batch)
    m = {k: (v[0] / v[1] if isinstance(v, tuple) else v) for k, v in aux.items()}
    m["loss"] = aux["loss_sum"] / aux["count"]
    return grads, m


@pytest.mark.parametrize("aggregation,loss,extra", [
    *[(agg, "grpo", {}) for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")],
    ("seq-mean-token-mean", "gspo", {}),  # a sequence loss: the aggregation only sums its KL term
    ("token-mean", "grpo", {"dual_clip": 1.2}), ("token-mean", "cispo", {"eps_low": 1.0, "entropy_coef": 0.01}),
    ("seq-mean-token-sum-norm", "sapo", {}), ("token-mean", "gmpo", {"entropy_coef": 0.02})])
def test_gradient_is_micro_batch_invariant(aggregation, loss, extra):
    mdef, params = tiny_model()
    batch = rollout(mdef, params)
    cfg = AlgorithmConfig(loss=loss, aggregation=aggregation, beta=0.05, eps_high=0.28, **extra)
    g1, m1 = grads_of(cfg, batch)
    g4, m4 = grads_of(dataclasses.replace(cfg, micro_batches=4), batch)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):
        scale = np.abs(a).max() + 1e-12
        assert np.abs(a - b).max() / scale < 5e-6  # float32 sums regrouped by micro-batch
    assert float(m1["loss"]) == pytest.approx(float(m4["loss"]), rel=1e-6)
    assert float(m1["clip_frac"]) == pytest.approx(float(m4["clip_frac"]), rel=1e-6)
    if "dual_clip" in extra:
        assert 0 < float(m1["dual_clip_frac"]) == pytest.approx(float(m4["dual_clip_frac"]), rel=1e-6)


@pytest.mark.parametrize("loss", ["grpo", "gspo", "cispo", "sapo", "gmpo"])
def test_each_loss_moves_the_policy_toward_the_better_samples(loss):
    """One small SGD step on a rollout batch raises the advantage-weighted log-likelihood of its completions,
    sum_i A_i log pi(o_i), for every loss: each is a policy-gradient step, whatever its clip or gate."""
    mdef, params = tiny_model()
    batch = rollout(mdef, params)
    batch["old_logp"] = batch["sampler_logp"]  # on policy: the first update of a rollout batch
    opt = OptimizerConfig(name="sgd", lr=0.05, max_grad_norm=0.0)
    tx = make_optimizer(opt, 1)
    step = jax.jit(make_grpo_step(mdef, AlgorithmConfig(loss=loss), opt, tx, 1.0))
    fn = jax.jit(make_logprob_fn(mdef, 1.0))

    def objective(p):
        lp = np.asarray(fn(p, batch["tokens"], batch["valid"], batch["mask"]))
        return float(np.sum(batch["adv"] * np.where(batch["mask"], lp, 0.0).sum(1)))

    new, m = step(init_state(params, tx, 0), batch)
    assert int(m["skipped"]) == 0
    assert objective(new.params) > objective(params) + 1e-3


@pytest.mark.parametrize("loss,aggregation", [("grpo", "token-mean"), ("gspo", "seq-mean-token-mean")])
def test_entropy_bonus_raises_the_policys_entropy(loss, aggregation):
    """With every advantage 0 the policy loss has no gradient: a step with ``entropy_coef`` > 0 then moves the
    policy only by the bonus, and the batch's entropy rises; without it the parameters do not move at all."""
    mdef, params = tiny_model()
    batch = rollout(mdef, params)
    batch["adv"] = np.zeros_like(batch["adv"])
    opt = OptimizerConfig(name="sgd", lr=0.5, max_grad_norm=0.0)
    tx = make_optimizer(opt, 1)
    ent_of = jax.jit(lambda p: make_grpo_grad(mdef, AlgorithmConfig(loss=loss), 1.0)(p, batch)[1]["entropy"])

    def entropy(p):
        s, n = ent_of(p)
        return float(s) / float(n)

    for coef in (0.0, 0.1):
        cfg = AlgorithmConfig(loss=loss, aggregation=aggregation, entropy_coef=coef)
        new, m = jax.jit(make_grpo_step(mdef, cfg, opt, tx, 1.0))(init_state(params, tx, 0), batch)
        moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(new.params)))
        if coef:
            assert entropy(new.params) > entropy(params) + 1e-4 and float(m["loss"]) < 0
        else:
            assert moved == 0.0


def padded(batch: dict, extra: int) -> dict:
    """``batch`` as a longer generation budget lays it out: ``extra`` more completion columns past every row's
    end (pad tokens, masked out)."""
    n = batch["mask"].shape[1]
    out = dict(batch)
    for k, v in batch.items():
        if v.ndim == 2 and k in ("tokens", "valid") or v.ndim == 2 and v.shape[1] == n:
            out[k] = np.pad(v, ((0, 0), (0, extra)))
    return out


def test_update_width_rounds_up_to_a_bucket_of_the_budget():
    assert [update_width(n, 64, 4) for n in (0, 1, 16, 17, 40, 64)] == [16, 16, 16, 32, 48, 64]
    assert update_width(5, 100, 8) == 16 and update_width(99, 100, 8) == 100  # steps of 16, capped at the budget
    assert update_width(3, 64, 0) == 64
    assert update_width(700, 8192, 8) == 1024


@pytest.mark.parametrize("loss,aggregation", [("grpo", "token-mean"), ("grpo", "seq-mean-token-sum-norm"),
                                              ("gspo", "seq-mean-token-mean")])
def test_update_on_the_trimmed_batch_equals_the_whole_budget(loss, aggregation):
    """The columns past the longest completion change nothing: gradient and metrics of a batch laid out for a
    budget of 48 equal those of the same batch cut to its update width (Dr.GRPO still divides by the budget)."""
    mdef, params = tiny_model()
    whole = padded(rollout(mdef, params), 38)  # completions of at most 10 tokens in a budget of 48
    width = update_width(int(whole["mask"].sum(axis=1).max()), 48, 3)
    trimmed = trim_completions(whole, width)
    assert width == 16 and trimmed["tokens"].shape[1] == whole["tokens"].shape[1] - 32
    assert all(trimmed[k].shape[1] == 16 for k in ("mask", "old_logp", "sampler_logp"))
    cfg = AlgorithmConfig(loss=loss, aggregation=aggregation, beta=0.05, eps_high=0.28)
    grad = jax.jit(make_grpo_grad(mdef, cfg, temperature=1.0, budget=48))
    out = [grad(params, dict(b, ref_logp=b["ref_logp"][:, :n])) for b, n in ((whole, 48), (trimmed, 16))]
    (g1, a1), (g2, a2) = out
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        assert np.abs(x - y).max() <= 1e-6 * (np.abs(x).max() + 1e-12)
    for k in ("loss_sum", "count", "clip_frac", "kl", "entropy"):
        np.testing.assert_allclose(np.asarray(a2[k]), np.asarray(a1[k]), rtol=1e-6, err_msg=k)
    with pytest.raises(ValueError, match="longer than the update width"):
        trim_completions(whole, 8)


def test_non_finite_step_is_not_applied():
    mdef, params = tiny_model()
    batch = rollout(mdef, params)
    batch["adv"][0] = np.nan
    tx = make_optimizer(OptimizerConfig(lr=1e-3), 1)
    step = jax.jit(make_grpo_step(mdef, AlgorithmConfig(), OptimizerConfig(), tx, 1.0))
    state = init_state(params, tx, 0)
    new, m = step(state, batch)
    assert int(m["skipped"]) == 1 and int(new.skipped) == 1 and int(new.step) == 1
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(new.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(new.opt_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    batch["adv"][0] = 0.5
    new2, m2 = step(new, batch)
    assert int(m2["skipped"]) == 0 and int(new2.skipped) == 0


def test_injected_nan_update_is_skipped_on_device():
    mdef, params = tiny_model()
    batch = rollout(mdef, params)
    ocfg = OptimizerConfig(lr=1e-3, inject_nan_steps=(2,))
    tx = make_optimizer(ocfg, 3)
    step = jax.jit(make_grpo_step(mdef, AlgorithmConfig(), ocfg, tx, 1.0))
    s1, m1 = step(init_state(params, tx, 0), batch)
    s2, m2 = step(s1, batch)
    s3, m3 = step(s2, batch)
    assert [int(m["skipped"]) for m in (m1, m2, m3)] == [0, 1, 0]
    assert [int(s.skipped) for s in (s1, s2, s3)] == [0, 1, 0]
    assert not np.isfinite(float(m2["grad_norm"])) and np.isfinite(float(m3["grad_norm"]))
    for a, b, c in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params), jax.tree.leaves(s3.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(not np.array_equal(np.asarray(b), np.asarray(c))
               for b, c in zip(jax.tree.leaves(s2.params), jax.tree.leaves(s3.params)))
    assert step._cache_size() == 1


def test_first_update_logprob_gap_is_tiny():
    mdef, params = tiny_model()
    batch = rollout(mdef, params)
    tx = make_optimizer(SGD, 1)
    _, m = jax.jit(make_grpo_step(mdef, AlgorithmConfig(), SGD, tx, 1.0))(init_state(params, tx, 0), batch)
    assert float(m["logprob_gap"]) < 1e-5


def test_sft_step_reduces_loss_and_grad_clipping_reports_pre_clip_norm():
    mdef, params = tiny_model()
    rng = np.random.default_rng(0)
    toks = rng.integers(4, 40, (8, 12)).astype(np.int32)
    toks[:, 1::2] = toks[:, ::2]  # learnable: every odd token repeats the previous one
    batch = {"tokens": toks, "valid": np.ones_like(toks, bool), "loss_mask": np.ones_like(toks, bool)}
    ocfg = OptimizerConfig(lr=3e-3, max_grad_norm=0.5)
    tx = make_optimizer(ocfg, 50)
    step = jax.jit(make_sft_step(mdef, ocfg, tx))
    state = init_state(params, tx, 0)
    losses = []
    for _ in range(40):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0] * 0.75
    assert float(m["grad_norm"]) > 0


@pytest.mark.parametrize("micro,shares", [(1, True), (3, True), (4, False)])
def test_shared_prompt_pass_gives_the_same_gradient(micro, shares, monkeypatch):
    """group=G runs each prompt once and fans its keys/values out to the group: same loss and gradient as
    running every row whole (micro-batches of whole groups share; a split that cuts groups falls back)."""
    mdef, params = tiny_model()
    batch = rollout(mdef, params, n_prompts=6, g=4)
    cfg = AlgorithmConfig(beta=0.05, eps_high=0.28, micro_batches=micro)
    whole = jax.jit(make_grpo_grad(mdef, cfg, 1.0))(params, batch)
    calls = []
    real = logprobs._shared_prompt_hidden
    monkeypatch.setattr(logprobs, "_shared_prompt_hidden", lambda *a: calls.append(1) or real(*a))
    shared = jax.jit(make_grpo_grad(mdef, cfg, 1.0, group=4))(params, batch)
    assert bool(calls) == shares  # 24 rows in micro-batches of 24, 8 (whole groups) or 6 (cut groups)
    for a, b in zip(jax.tree.leaves(whole[0]), jax.tree.leaves(shared[0])):
        assert np.abs(a - b).max() / (np.abs(a).max() + 1e-12) < 5e-6
    assert float(whole[1]["loss_sum"]) == pytest.approx(float(shared[1]["loss_sum"]), rel=1e-5, abs=1e-7)
    assert float(shared[1]["logprob_gap"]) < 1e-4


SHARED_PROMPT_MODELS = {
    # sliding and global layers with their own ropes, q/k norms, soft-capped scores
    "gemma_like": {"sliding_window": 3, "layer_types": ("sliding", "full"), "rope_local_theta": 100.0,
                   "qk_norm": True, "rope_scaling": {"rope_type": "linear", "factor": 2.0}, "attn_softcap": 3.0,
                   "query_scale": 0.3},
    # multi-head latent attention: the prefix holds latents and rotary keys
    "mla": {"n_kv_heads": 4, "mla": MLAConfig(q_lora_rank=0, kv_lora_rank=8, qk_nope_dim=8, qk_rope_dim=4, v_dim=6),
            "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8}},
    # the shared-prefix side only, against unblocked whole rows: 10 completion tokens in causal blocks of
    # 3, 3, 3, 1 ("causal"), or as a long sequence in checkpointed query blocks of 4 ("blocked")
    "causal": {},
    "blocked": {},
    # gpt-oss attention (per-head sinks, biases, alternating windows) with Phi-style partial long-rope whose
    # long factors start inside the rows (position 8); and the sinks in checkpointed query blocks
    "sinks": {"attn_sinks": True, "out_bias": True, "qkv_bias": True, "sliding_window": 3,
              "layer_types": ("sliding", "full"), "rope_dim": 4,
              "rope_scaling": {"rope_type": "longrope", "short_factor": [1.0, 1.5], "long_factor": [2.0, 5.0],
                               "original_max_position_embeddings": 8, "factor": 4.0}},
    "sinks_blocked": {"attn_sinks": True},
}


@pytest.mark.parametrize("kind", sorted(SHARED_PROMPT_MODELS))
def test_shared_prompt_attention_matches_whole_rows_across_attention_kinds(kind, monkeypatch):
    """The prompt as a shared prefix (``prefix_attention``) is the same function as whole rows for every
    attention the models have: windows and per-layer-type rope, MLA latents, query blocks."""
    mdef, params = tiny_model(seed=5, **SHARED_PROMPT_MODELS[kind])
    batch = rollout(mdef, params, n_prompts=3, g=4, seed=2)
    cfg = AlgorithmConfig(beta=0.05)
    whole = jax.jit(make_grpo_grad(mdef, cfg, 1.0))(params, batch)
    if kind == "causal":
        monkeypatch.setattr(attention, "CAUSAL_BLOCK", 3)
    if kind in ("blocked", "sinks_blocked"):
        monkeypatch.setattr(attention, "Q_CHUNK", 4)
    shared = jax.jit(make_grpo_grad(mdef, cfg, 1.0, group=4))(params, batch)
    for a, b in zip(jax.tree.leaves(whole[0]), jax.tree.leaves(shared[0])):
        assert np.abs(a - b).max() / (np.abs(a).max() + 1e-12) < 5e-6
    assert float(whole[1]["loss_sum"]) == pytest.approx(float(shared[1]["loss_sum"]), rel=1e-5, abs=1e-7)
    assert float(shared[1]["logprob_gap"]) < 1e-4  # and both agree with the sampler


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
@pytest.mark.parametrize("schedule", ["constant", "cosine", "warmup"])
def test_parameter_update_equals_optax_bit_for_bit(name, schedule):
    """The step writes Adam's parameters from the already-updated moments (a memory saving, ``_updated``): the
    same numbers as optax's own chain, for every optimizer and schedule, over several steps, and a skipped
    (non-finite) update changes nothing. Values no gradient reaches (Gemma 4's layer scalars, DeepSeek's selection
    biases, xIELU's fixed scalars) are not decayed."""
    from reasoning_rl.algorithms.steps import _updated, make_optimizer
    from reasoning_rl.config import OptimizerConfig

    kw = {"constant": {}, "cosine": {"schedule": "cosine", "warmup_steps": 2}, "warmup": {"warmup_steps": 3}}[schedule]
    tx = make_optimizer(OptimizerConfig(name=name, lr=3e-3, weight_decay=0.1, **kw), 10)
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32), "b": jnp.asarray(rng.normal(size=5), jnp.float32),
              "layers": {"layer_scalar": jnp.full((3, 1), 0.7, jnp.float32),
                         "mlp": {n: jnp.full((3, 1), 0.7, jnp.float32) for n in ("act_beta", "act_eps")}}}
    held = (("layer_scalar",), ("mlp", "act_beta"), ("mlp", "act_eps"))
    ref_p, ref_o = params, tx.init(params)
    ours_p, ours_o = params, tx.init(params)
    upd = jax.jit(lambda g, o, p, ok: _updated(tx, g, o, p, ok))

    @jax.jit
    def ref(g, o, p):
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o
    for i in range(5):
        grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
        for path in held:  # (held: a stop-gradient)
            at = grads["layers"]
            for k in path[:-1]:
                at = at[k]
            at[path[-1]] = jnp.zeros((3, 1), jnp.float32)
        ok = i != 2  # the third update is skipped
        if ok:
            ref_p, ref_o = ref(grads, ref_o, ref_p)
        ours_p, ours_o = upd(grads, ours_o, ours_p, jnp.asarray(ok))
        for a, b in zip(jax.tree.leaves((ref_p, ref_o)), jax.tree.leaves((ours_p, ours_o))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(ours_p["layers"]["layer_scalar"]), np.float32(0.7))
        for n in ("act_beta", "act_eps"):
            np.testing.assert_array_equal(np.asarray(ours_p["layers"]["mlp"][n]), np.float32(0.7))


def _old_logits(self, h):
    """``Transformer.logits`` before it contracted the tied embedding in place: the transposed [D, V] weight."""
    w = self.embed[...].T if self.lm_head is None else self.lm_head[...]
    return jnp.einsum("...d,dv->...v", h, w.astype(h.dtype), preferred_element_type=jnp.float32)


@pytest.mark.optimized  # the same bits as compiled for runs (LLVM's passes off, the two formulations differ)
@pytest.mark.parametrize("chunk", [8])  # in chunks: the loop that carried the transposed head (whole logits
# run the same ``Transformer.logits``; tests/test_logits_chunk.py checks whole = chunked bit for bit)
def test_memory_savings_keep_the_grpo_step_bit_for_bit(chunk, monkeypatch):
    """The step's memory savings change no number: the tied head contracted without a transposed copy of the
    embedding, the gradient norm summed leaf after leaf (``global_norm``) and ``remat: nested`` give the same
    parameters, Adam moments and metrics, bit for bit, as the old formulation (transposed head, optax's
    norm, ``remat: full``), with shared prompts and log-probs whole or in chunks."""
    from reasoning_rl.algorithms import steps
    from reasoning_rl.models import Transformer

    from reasoning_rl.models.transformer import nested_group

    # 5 layers scanned: nested groups of 2, 2 and a remainder group of 1 (30 layers: 6 groups of 5)
    assert nested_group(5) == 2 and nested_group(30) == 5
    kw = dict(n_layers=5, unroll_max=0, tie_embeddings=True)
    mdef_full, params = tiny_model(remat="full", **kw)
    mdef_nested, _ = tiny_model(remat="nested", **kw)
    batch = rollout(mdef_full, params, n_prompts=2, g=4)
    ocfg = OptimizerConfig(name="adamw", lr=1e-2, max_grad_norm=0.5)  # the clip is active
    tx = make_optimizer(ocfg, 10)

    def run(mdef):
        step = jax.jit(make_grpo_step(mdef, AlgorithmConfig(beta=0.05), ocfg, tx, 1.0, chunk, group=4))
        state = init_state(params, tx, 0)
        out = []
        for _ in range(2):
            state, m = step(state, batch)
            out.append(m)
        return jax.device_get((state.params, state.opt_state, out))

    new_full, new_nested = run(mdef_full), run(mdef_nested)
    monkeypatch.setattr(Transformer, "logits", _old_logits)
    monkeypatch.setattr(steps, "global_norm", optax.global_norm)
    old = run(mdef_full)
    assert float(old[2][0]["grad_norm"]) > 0.5
    for new in (new_full, new_nested):
        for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("schedule", [{"warmup_steps": 4}, {"schedule": "cosine", "warmup_steps": 2}, {}])
def test_restart_moments_starts_adam_over_and_keeps_the_schedule(schedule):
    """ProRL's optimizer reset: after the reset the next update is the one a fresh Adam would make at this
    point of the learning-rate schedule (moments and bias-correction count start over; the schedule's
    count goes on); the state keeps its shardings."""
    from reasoning_rl.algorithms.steps import restart_moments

    tx = make_optimizer(OptimizerConfig(lr=1e-2, **schedule), 20)
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    grads = [jax.tree.map(lambda p, k=k: jnp.sin(p + k), params) for k in range(4)]
    state = tx.init(params)
    for g in grads[:3]:
        _, state = tx.update(g, state, params)
    before = jax.tree.map(lambda a: a.sharding, state)
    restarted = restart_moments(jax.tree.map(jnp.copy, state))
    assert jax.tree.map(lambda a: a.sharding, restarted) == before
    fresh = tx.init(params)
    counts = {type(x).__name__: x.count for x in jax.tree.leaves(
        restarted, is_leaf=lambda x: isinstance(x, (optax.ScaleByAdamState, optax.ScaleByScheduleState)))
              if hasattr(x, "count")}
    assert int(counts["ScaleByAdamState"]) == 0
    if schedule:
        assert int(counts["ScaleByScheduleState"]) == 3  # the schedule goes on
        fresh = jax.tree.map(lambda f, r: r if isinstance(f, optax.ScaleByScheduleState) else f, fresh, restarted,
                             is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
    got, _ = tx.update(grads[3], restarted, params)
    want, _ = tx.update(grads[3], fresh, params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, want)
    moved, _ = tx.update(grads[3], state, params)  # without the reset the update differs
    assert not np.allclose(np.asarray(moved["w"]), np.asarray(got["w"]))


def test_pack_places_every_sequence_once_within_the_row_length():
    from reasoning_rl.data.batching import pack

    lengths = [30, 5, 17, 64, 80, 12, 33, 1, 48, 16]
    rows = pack(lengths, 64)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(min(lengths[i], 64) for i in r) <= 64 for r in rows)
    assert [4] in rows  # longer than a row: one of its own (cut)
    assert len(rows) == 5 and rows == pack(lengths, 64)  # first-fit decreasing: 306 tokens in 5 rows of 64
    assert all(r == sorted(r) for r in rows)


@pytest.mark.parametrize("kw", [{}, {"sliding_window": 6, "qk_norm": True},
                                {"n_layers": 3, "layer_types": ("sliding", "full", "sliding"), "sliding_window": 4,
                                 "nope_layers": (1,)}])
def test_packed_sft_step_equals_the_padded_one(kw):
    """SFT on packed rows (several sequences a row, each attending within itself, positions restarting) takes
    the same loss and the same gradient as on one padded row per sequence: an SGD step from the same state
    lands on the same parameters. Without the segment mask the packed loss differs."""
    from reasoning_rl.data.batching import pack, packed_sft_batch, sft_batch, sft_sequences

    class Tok:
        eos_id, pad_id = 1, 0

        def encode(self, text):
            return [int(x) for x in text.split()]

    rng = np.random.default_rng(0)
    examples = [{"prompt": " ".join(str(x) for x in rng.integers(2, 40, int(n))),
                 "solution": " ".join(str(x) for x in rng.integers(2, 40, int(m)))}
                for n, m in zip(rng.integers(2, 9, 8), rng.integers(1, 14, 8))]
    tok = Tok()
    seqs = sft_sequences(tok, examples)
    seq_len = 32
    layout = pack([len(s) for s, _ in seqs], seq_len)
    assert len(layout) <= 4 < len(examples)
    packed = packed_sft_batch(seqs, layout, seq_len, 4, tok.pad_id)
    padded = sft_batch(tok, examples, seq_len)
    assert int(packed["loss_mask"].sum()) == int(padded["loss_mask"].sum())
    mdef, params = tiny_model(**kw)
    ocfg = OptimizerConfig(name="sgd", lr=0.5, max_grad_norm=0.0)
    tx = make_optimizer(ocfg, 1)
    step = jax.jit(make_sft_step(mdef, ocfg, tx))
    results = {}
    for name, b in (("padded", padded), ("packed", packed),
                    ("unmasked", {k: v for k, v in packed.items() if k != "segments"})):
        state, m = step(init_state(params, tx, 0), jax.tree.map(jnp.asarray, b))
        results[name] = (float(m["loss"]), state.params)
    assert results["packed"][0] == pytest.approx(results["padded"][0], abs=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6),
                 results["packed"][1], results["padded"][1])
    assert abs(results["unmasked"][0] - results["padded"][0]) > 1e-4
    if kw:
        return
    # logit distillation over the same rows: the teacher's log-probs of the packed rows, then the KL step
    from reasoning_rl.stages.distill import make_logit_distill_step, teacher_logp_fn

    tdef, tparams = tiny_model(seed=1)
    teacher = jax.jit(teacher_logp_fn(tdef))
    dstep = jax.jit(make_logit_distill_step(mdef, ocfg, tx))
    got = {}
    for name, b in (("padded", padded), ("packed", packed)):
        b = jax.tree.map(jnp.asarray, b)
        b["teacher_logp"] = teacher(tparams, b["tokens"], b["valid"], b.get("positions"), b.get("segments"))
        state, m = dstep(init_state(params, tx, 0), b)
        got[name] = (float(m["loss"]), state.params)
    assert got["packed"][0] == pytest.approx(got["padded"][0], abs=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6),
                 got["packed"][1], got["padded"][1])
