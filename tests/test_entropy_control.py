"""Clip-Cov and KL-Cov: the covariance selection against its definition, each loss's gradient on the selected
and the other tokens, exactness over micro-batches, and a run that logs the selected share. Adaptive entropy
control: its rule, its per-row coefficient in the step, and runs that keep it across a continued stage."""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run_here, tiny_model
from test_steps import grads_of, rollout

from reasoning_rl import config as C
from reasoning_rl.algorithms import losses as L
from reasoning_rl.algorithms.entropy import select_tokens, token_covariance
from reasoning_rl.config import AlgorithmConfig

rng = np.random.default_rng(0)
B, T = 8, 12
LOGP = rng.normal(-1.5, 0.6, (B, T)).astype(np.float32)
OLD = (LOGP + rng.normal(0, 0.4, (B, T))).astype(np.float32)
ADV = rng.normal(0, 1, B).astype(np.float32)
MASK = np.ones((B, T), bool)
MASK[2, 5:] = False
MASK[6, 2:] = False


def brute_covariance(adv, logp, mask):
    toks = [(i, t) for i in range(B) for t in range(T) if mask[i, t]]
    a_mean = np.mean([adv[i] for i, _ in toks])
    l_mean = np.mean([logp[i, t] for i, t in toks])
    return {(i, t): (adv[i] - a_mean) * (logp[i, t] - l_mean) for i, t in toks}


def test_covariance_and_the_kl_selection_follow_their_definition():
    cov = token_covariance(ADV, OLD, MASK)
    ref = brute_covariance(ADV.astype(np.float64), OLD.astype(np.float64), MASK)
    for (i, t), v in ref.items():
        assert cov[i, t] == pytest.approx(v, rel=1e-9, abs=1e-12)
    assert np.all(np.isneginf(cov[~MASK]))
    n = int(MASK.sum())
    for ratio in (0.01, 0.1, 0.5):
        sel = select_tokens("kl", ADV, OLD, MASK, ratio, 1.0, 5.0, np.random.default_rng(0))
        k = max(1, int(ratio * n))
        top = sorted(ref, key=lambda key: -ref[key])[:k]
        assert sel.sum() == k and all(sel[i, t] == 1 for i, t in top)
        assert not (sel * ~MASK).any()


def test_clip_selection_draws_in_the_band_reproducibly():
    n = int(MASK.sum())
    cov = token_covariance(ADV, OLD, MASK)
    lo, hi = np.quantile(cov[MASK], [0.3, 0.9])
    band = (cov > lo) & (cov < hi)
    a = select_tokens("clip", ADV, OLD, MASK, 0.1, lo, hi, np.random.default_rng(3))
    assert a.sum() == max(1, int(0.1 * n)) and np.all(band[a == 1])
    b = select_tokens("clip", ADV, OLD, MASK, 0.1, lo, hi, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)  # the same draw for the same key: a resumed run selects the same
    draws = {select_tokens("clip", ADV, OLD, MASK, 0.1, lo, hi, np.random.default_rng(s)).tobytes() for s in range(8)}
    assert len(draws) > 1
    whole = select_tokens("clip", ADV, OLD, MASK, 1.0, lo, hi, np.random.default_rng(0))
    np.testing.assert_array_equal(whole == 1, band)  # fewer in the band than asked: all of them
    assert select_tokens("clip", ADV, OLD, MASK, 0.1, 1e9, 2e9, np.random.default_rng(0)).sum() == 0


def logp_grad(loss_fn, x, **kw):
    def f(logp):
        s, c, _ = loss_fn(x._replace(logp=logp), **kw)
        return s / c
    return jax.value_and_grad(f)(jnp.asarray(x.logp))


KW = dict(eps_low=0.2, eps_high=0.2, beta=0.0, kl_estimator="k3", aggregation="token-mean")


def test_clip_cov_takes_the_selected_tokens_out_of_the_gradient():
    sel = select_tokens("kl", ADV, OLD, MASK, 0.2, 1.0, 5.0, np.random.default_rng(0))
    x = L.LossInputs(LOGP, OLD, None, ADV, MASK, selected=jnp.asarray(sel))
    loss, g = logp_grad(L.clip_cov_loss, x, **KW)
    _, g_ppo = logp_grad(L.grpo_loss, x, **KW)
    g, g_ppo = np.asarray(g), np.asarray(g_ppo)
    assert np.all(g[sel == 1] == 0) and np.abs(g_ppo[sel == 1]).sum() > 0
    np.testing.assert_array_equal(g[sel == 0], g_ppo[sel == 0])  # the others: PPO's, same normalisation
    s, c, m = L.clip_cov_loss(x, **KW)
    assert float(c) == MASK.sum() and float(m["cov_frac"][0]) == sel.sum()


def test_kl_cov_penalises_the_selected_tokens_and_clips_none():
    sel = select_tokens("kl", ADV, OLD, MASK, 0.2, 1.0, 5.0, np.random.default_rng(0))
    x = L.LossInputs(LOGP, OLD, None, ADV, MASK, selected=jnp.asarray(sel))
    loss, g = logp_grad(L.kl_cov_loss, x, cov_kl_coef=0.5, **KW)
    r = np.exp(LOGP - OLD).astype(np.float64)
    n = MASK.sum()
    tok = -r * ADV[:, None] + 0.5 * np.abs(LOGP - OLD) * sel
    assert float(loss) == pytest.approx((tok * MASK).sum() / n, rel=1e-5)
    want = np.where(MASK, (-r * ADV[:, None] + 0.5 * np.sign(LOGP - OLD) * sel) / n, 0.0)
    np.testing.assert_allclose(np.asarray(g), want, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="no covariance selection"):
        L.kl_cov_loss(x._replace(selected=None), **KW)


@pytest.mark.parametrize("loss", ["clip_cov", "kl_cov"])
def test_cov_losses_are_micro_batch_invariant(loss):
    mdef, params = tiny_model()
    batch = rollout(mdef, params)
    batch["cov_select"] = select_tokens(loss.removesuffix("_cov"), batch["adv"], batch["old_logp"], batch["mask"],
                                        0.1, -1e9, 1e9, np.random.default_rng(0))
    assert batch["cov_select"].sum() > 1
    cfg = AlgorithmConfig(loss=loss, beta=0.05)
    g1, m1 = grads_of(cfg, batch)
    g4, m4 = grads_of(dataclasses.replace(cfg, micro_batches=4), batch)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):
        assert np.abs(a - b).max() / (np.abs(a).max() + 1e-12) < 5e-6
    assert float(m1["cov_frac"]) == pytest.approx(float(m4["cov_frac"]), rel=1e-6) and float(m1["cov_frac"]) > 0


@pytest.mark.parametrize("override,needle", [
    (["algorithm.loss=kl_cov", "algorithm.cov.ratio=0"], "stages[1].algorithm.cov.ratio: must be in (0, 1]"),
    (["algorithm.loss=clip_cov", "algorithm.cov.low=5"], "stages[1].algorithm.cov.low: must be below"),
    (["algorithm.cov.kl_coef=-1"], "stages[1].algorithm.cov.kl_coef: must be >= 0"),
    (["algorithm.entropy_target=-0.1"], "stages[1].algorithm.entropy_target: must be >= 0"),
    (["algorithm.entropy_target=0.3", "algorithm.entropy_coef_step=0"],
     "stages[1].algorithm.entropy_coef_step: must be > 0 with an entropy_target"),
])
def test_bad_entropy_control_settings_name_the_key(override, needle):
    with pytest.raises(C.ConfigError) as e:
        C.load("configs/quickstart.yaml", override)
    assert needle in str(e.value)
    with pytest.raises(C.ConfigError, match="stages\\[1\\].algorithm.loss: ppo"):
        C.load("configs/quickstart_ppo.yaml", ["algorithm.loss=clip_cov"])


@pytest.mark.slow
def test_a_kl_cov_run_logs_the_selected_share(tmp_path):
    tiny = str(Path(__file__).parent / "configs" / "tiny.yaml")
    p = run_here("run", tiny, "--run-dir", str(tmp_path / "run"), "--no-progress", "--no-plots", "--set",
                 "algorithm.loss=kl_cov", "--set", "algorithm.cov.ratio=0.05", "--set", "stages.grpo.steps=2",
                 "--set", "eval.num_problems=4")
    assert p.returncode == 0, p.stderr[-3000:]
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    grpo = [r for r in recs if r.get("stage") == "grpo" and "cov_frac" in r]
    assert len(grpo) == 2 and all(0.03 < r["cov_frac"] <= 0.06 for r in grpo)


def test_adaptive_control_moves_the_coefficient_towards_the_target_entropy():
    """Skywork-OR1's rule: up by the step while the entropy is below the target, down (not below 0) at or above
    it; the bonus applies only while below, decided by the step before; the state survives a round trip."""
    from reasoning_rl.algorithms.entropy import EntropyControl

    a = AlgorithmConfig(entropy_coef=0.01, entropy_target=0.5, entropy_coef_step=0.004)
    c = EntropyControl(a)
    used, coefs = [], []
    for e in (0.3, 0.4, 0.6, 0.7, 0.8, 0.9, 0.2):
        assert c.inputs(3)["entropy_coef"].tolist() == [np.float32(c.applied)] * 3
        used.append(c.after(e)["entropy_coef"])
        coefs.append(c.coef)
    assert used == pytest.approx([0.01, 0.014, 0.018, 0.0, 0.0, 0.0, 0.0])
    assert coefs == pytest.approx([0.014, 0.018, 0.014, 0.010, 0.006, 0.002, 0.006])
    assert c.below and c.applied == pytest.approx(0.006)
    for e in (0.9, 0.9, 0.9):
        c.after(e)
    assert c.coef == 0.0 and c.applied == 0.0  # never below 0
    again = EntropyControl(a, {"entropy_control": EntropyControl(a, {"entropy_control": {"coef": 0.02,
                                                                                          "below": False}})
                               .host_state()["entropy_control"]})
    assert (again.coef, again.below, again.applied) == (0.02, False, 0.0)
    off = EntropyControl(AlgorithmConfig(entropy_coef=0.01))
    assert off.inputs(3) == {} and off.after(0.1) == {} and off.host_state() == {}


def test_a_per_row_coefficient_is_the_fixed_bonus_and_micro_batch_invariant():
    """The step's ``entropy_coef`` input gives the gradient of the same fixed ``entropy_coef``; zeros give no
    bonus; split over micro-batches it is the same update."""
    from test_steps import grads_of

    mdef, params = tiny_model()
    batch = rollout(mdef, params)
    n = len(batch["adv"])
    cfg = AlgorithmConfig(eps_high=0.28, entropy_target=0.5)
    fixed, _ = grads_of(AlgorithmConfig(eps_high=0.28, entropy_coef=0.05), batch)
    none, _ = grads_of(AlgorithmConfig(eps_high=0.28), batch)
    per_row, _ = grads_of(cfg, {**batch, "entropy_coef": np.full(n, 0.05, np.float32)})
    split, _ = grads_of(dataclasses.replace(cfg, micro_batches=4), {**batch, "entropy_coef": np.full(n, 0.05,
                                                                                                      np.float32)})
    zero, _ = grads_of(cfg, {**batch, "entropy_coef": np.zeros(n, np.float32)})
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(fixed))
    diff = lambda g, h: max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(g), jax.tree.leaves(h)))
    assert diff(per_row, fixed) <= 1e-6 * scale and diff(split, fixed) <= 5e-6 * scale
    assert diff(zero, none) <= 1e-6 * scale
    assert diff(fixed, none) > 1e-3 * scale  # the bonus moves the gradient


def _entropy_run(d: Path, config: str, *sets: str) -> list[dict]:
    p = run_here("run", config, "--run-dir", str(d), "--no-progress", "--no-plots", "--set", "stages.sft.steps=1",
                 "--set", "eval.num_problems=2", "--set", "algorithm.entropy_target=10.0",
                 "--set", "algorithm.entropy_coef=0.01", "--set", "algorithm.entropy_coef_step=0.02",
                 *(x for s in sets for x in ("--set", s)))
    assert p.returncode == 0, p.stderr[-3000:]
    recs = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r.get("stage") in ("grpo", "ppo") and "entropy_coef" in r]


@pytest.mark.slow
def test_adaptive_entropy_control_runs_and_a_continued_stage_keeps_its_coefficient(tmp_path):
    """A GRPO stage under the control (a target above any entropy here: the coefficient rises by its step after
    every step) logs the coefficient each step used; trained on from its end (2 steps, then 4) it goes on with
    the coefficient, and the numbers, of the straight 4-step run. (PPO stages: tests/configs/tiny_ppo.yaml runs
    under the control, and test_ppo.py kills and resumes it; asynchronous ones: test_async_rollout.py.)"""
    tiny = str(Path(__file__).parent / "configs" / "tiny.yaml")
    straight = _entropy_run(tmp_path / "a", tiny, "stages.grpo.steps=4")
    assert [r["entropy_coef"] for r in straight] == pytest.approx([0.01, 0.03, 0.05, 0.07])
    _entropy_run(tmp_path / "b", tiny, "stages.grpo.steps=2")
    continued = _entropy_run(tmp_path / "b", tiny, "stages.grpo.steps=4")
    assert [r["step"] for r in continued] == [1, 2, 3, 4]
    for ra, rb in zip(straight, continued):
        for k in ("entropy_coef", "loss", "entropy", "grad_norm", "reward_mean"):
            assert rb[k] == ra[k], (ra["step"], k)
