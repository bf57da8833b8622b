"""Each GRPO-family variant against a direct NumPy transcription of its paper formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reasoning_rl.algorithms import advantages as A
from reasoning_rl.algorithms import losses as L

rng = np.random.default_rng(0)
B, T = 6, 5
LOGP = rng.normal(-1.5, 0.3, (B, T)).astype(np.float32)
OLD = (LOGP + rng.normal(0, 0.4, (B, T))).astype(np.float32)  # big enough for clipping to engage
REF = (LOGP + rng.normal(0, 0.2, (B, T))).astype(np.float32)
ADV = rng.normal(0, 1, B).astype(np.float32)
MASK = np.ones((B, T), bool)
MASK[1, 3:] = False
MASK[4, 1:] = False


def np_token_loss(logp, old, adv, el, eh):
    r = np.exp(logp - old)
    a = adv[:, None]
    return -np.minimum(r * a, np.clip(r, 1 - el, 1 + eh) * a)


def np_kl(logp, ref, kind):
    if kind == "k1":
        return logp - ref
    if kind == "k2":
        return 0.5 * (logp - ref) ** 2
    return np.exp(ref - logp) - (ref - logp) - 1


def np_aggregate(tok, mask, mode):
    m = mask.astype(np.float64)
    if mode == "token-mean":  # DAPO token-level
        return (tok * m).sum() / m.sum()
    if mode == "seq-mean-token-mean":  # GRPO paper: 1/G sum_i 1/|o_i| sum_t
        return np.mean([(tok[i] * m[i]).sum() / m[i].sum() for i in range(len(tok))])
    return np.mean([(tok[i] * m[i]).sum() / tok.shape[1] for i in range(len(tok))])  # Dr.GRPO


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("beta,kind", [(0.0, "k3"), (0.1, "k1"), (0.1, "k2"), (0.05, "k3")])
@pytest.mark.parametrize("el,eh", [(0.2, 0.2), (0.2, 0.28)])
def test_grpo_loss_matches_numpy(mode, beta, kind, el, eh):
    x = L.LossInputs(LOGP, OLD, REF if beta else None, ADV, MASK)
    s, c, m = L.grpo_loss(x, eps_low=el, eps_high=eh, beta=beta, kl_estimator=kind, aggregation=mode)
    tok = np_token_loss(LOGP, OLD, ADV, el, eh)
    if beta:
        tok = tok + beta * np_kl(LOGP, REF, kind)
    np.testing.assert_allclose(float(s) / float(c), np_aggregate(tok, MASK, mode), rtol=1e-5)
    assert 0.0 < float(m["clip_frac"][0]) / float(m["clip_frac"][1]) < 1.0  # clipping engaged on this batch


def test_clip_higher_is_asymmetric():
    # positive advantage, ratio 1.25: clipped at 1.2 with symmetric eps, not clipped with eps_high 0.28
    logp = np.log(np.full((1, 1), 1.25, np.float32))
    x = L.LossInputs(logp, np.zeros((1, 1), np.float32), None, np.ones(1, np.float32), np.ones((1, 1), bool))
    s1, _, _ = L.grpo_loss(x, eps_low=0.2, eps_high=0.2, beta=0, kl_estimator="k3", aggregation="token-mean")
    s2, _, _ = L.grpo_loss(x, eps_low=0.2, eps_high=0.28, beta=0, kl_estimator="k3", aggregation="token-mean")
    assert float(s1) == pytest.approx(-1.2) and float(s2) == pytest.approx(-1.25)


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_gspo_matches_numpy(beta):
    x = L.LossInputs(LOGP, OLD, REF if beta else None, ADV, MASK)
    el, eh = 3e-4, 4e-4
    s, c, _ = L.gspo_loss(x, eps_low=el, eps_high=eh, beta=beta, kl_estimator="k3", aggregation="token-mean")
    m = MASK.astype(np.float64)
    expect = []
    for i in range(B):
        si = np.exp(((LOGP[i] - OLD[i]) * m[i]).sum() / m[i].sum())  # GSPO: (pi/pi_old)^(1/|y|)
        li = -min(si * ADV[i], np.clip(si, 1 - el, 1 + eh) * ADV[i])
        if beta:
            li += beta * (np_kl(LOGP[i], REF[i], "k3") * m[i]).sum() / m[i].sum()
        expect.append(li)
    np.testing.assert_allclose(float(s) / float(c), np.mean(expect), rtol=1e-5)


def test_advantages_match_numpy():
    r = rng.normal(size=24).astype(np.float32)
    g = r.reshape(-1, 8)
    expect = (g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(A.compute_advantages("grpo", r, 8), expect.reshape(-1), rtol=1e-5)
    np.testing.assert_allclose(A.compute_advantages("drgrpo", r, 8), (g - g.mean(1, keepdims=True)).reshape(-1),
                               rtol=1e-5, atol=1e-6)


def test_group_mean_batch_std_advantages():
    """The group's mean as baseline, the batch's reward std (Bessel) as scale; rows without completion tokens
    (dynamic sampling's fill groups) stay out of the std."""
    r = rng.normal(size=24).astype(np.float32)
    g = r.reshape(-1, 8)
    expect = (g - g.mean(1, keepdims=True)).reshape(-1) / (r.std(ddof=1) + 1e-6)
    np.testing.assert_allclose(A.compute_advantages("group-mean-batch-std", r, 8), expect, rtol=1e-5, atol=1e-6)
    mask = np.ones((24, 5), bool)
    mask[16:] = False  # the last group is a fill group
    expect = (g - g.mean(1, keepdims=True)).reshape(-1) / (r[:16].std(ddof=1) + 1e-6)
    np.testing.assert_allclose(A.compute_advantages("group-mean-batch-std", r, 8, mask=mask), expect, rtol=1e-5,
                               atol=1e-6)
    # a near-uniform group keeps its small advantages (grpo scales them up to unit std)
    r = np.array([1.0, 1.0, 1.0, 1.01, 0.0, 1.0, 0.0, 1.0], np.float32)
    assert np.abs(np.asarray(A.compute_advantages("group-mean-batch-std", r, 4))[:4]).max() < 0.02
    assert np.abs(np.asarray(A.compute_advantages("grpo", r, 4))[:4]).max() > 1


def test_equal_rewards_give_zero_advantage_and_are_filtered():
    r = np.array([1, 1, 1, 1, 0, 1, 0, 1], np.float32)
    adv = np.asarray(A.compute_advantages("grpo", r, 4))
    assert np.all(adv[:4] == 0)
    assert list(np.asarray(A.informative_groups(r, 4))) == [False, True]


def test_overlong_penalty_matches_dapo():
    L_max, L_cache = 20, 5
    lens = np.array([10, 15, 16, 18, 20, 21])
    expect = [0 if n <= L_max - L_cache else ((L_max - L_cache) - n) / L_cache if n <= L_max else -1 for n in lens]
    np.testing.assert_allclose(A.overlong_penalty(lens, L_max, L_cache), expect, rtol=1e-6)


def test_loss_sums_add_across_splits():
    """(sum, count) pairs of two halves add up to the whole batch's pair."""
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        whole = L.grpo_loss(L.LossInputs(LOGP, OLD, None, ADV, MASK), eps_low=.2, eps_high=.2, beta=0,
                            kl_estimator="k3", aggregation=mode)
        halves = [L.grpo_loss(L.LossInputs(LOGP[s], OLD[s], None, ADV[s], MASK[s]), eps_low=.2, eps_high=.2, beta=0,
                              kl_estimator="k3", aggregation=mode) for s in (slice(0, 3), slice(3, 6))]
        assert float(whole[0]) == pytest.approx(sum(float(h[0]) for h in halves), rel=1e-5)
        assert float(whole[1]) == pytest.approx(sum(float(h[1]) for h in halves))


def test_rloo_matches_hand_computed_leave_one_out():
    r = np.array([1.0, 0.0, 0.5, 1.1, 0.0, 0.0, 0.0, 0.0], np.float32)
    # row 0: 1 - (0 + 0.5 + 1.1) / 3 = 0.4666..; row 1: 0 - 2.6/3; row 2: 0.5 - 2.1/3; row 3: 1.1 - 1.5/3
    expect = [1 - 1.6 / 3, -2.6 / 3, 0.5 - 2.1 / 3, 1.1 - 1.5 / 3, 0, 0, 0, 0]
    np.testing.assert_allclose(A.compute_advantages("rloo", r, 4), expect, rtol=1e-6, atol=1e-7)
    # RLOO is Dr.GRPO scaled by G / (G - 1)
    np.testing.assert_allclose(A.compute_advantages("rloo", r, 4),
                               np.asarray(A.compute_advantages("drgrpo", r, 4)) * 4 / 3, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="group_size >= 2"):
        A.compute_advantages("rloo", r, 1)


def test_reinforce_pp_matches_hand_computed_returns():
    """Rows of 3, 1 and 2 tokens; the outcome lands on each row's last token, the KL penalty on every token,
    returns are suffix sums, then one mean / std over the 6 valid tokens."""
    rewards = np.array([1.0, 0.0, 0.5], np.float32)
    mask = np.array([[1, 1, 1], [1, 0, 0], [1, 1, 0]], bool)
    pen = np.array([[-0.1, -0.2, -0.3], [-0.4, 9.0, 9.0], [-0.5, -0.6, 9.0]], np.float32)  # 9: masked out
    returns = np.array([[1 - 0.6, 1 - 0.5, 1 - 0.3], [-0.4, 0, 0], [0.5 - 1.1, 0.5 - 0.6, 0]])
    vals = returns[mask]
    expect = np.where(mask, (returns - vals.mean()) / vals.std(), 0.0)
    got = A.compute_advantages("reinforce++", rewards, 1, mask=mask, token_rewards=pen)
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-6)
    # no KL: the batch-normalised outcome, the same on every token of a row (weighted by token counts)
    got0 = np.asarray(A.compute_advantages("reinforce++", rewards, 1, mask=mask))
    tok = np.repeat(rewards, mask.sum(1))
    np.testing.assert_allclose(got0[mask], np.repeat((rewards - tok.mean()) / tok.std(), mask.sum(1)), rtol=1e-5)
    np.testing.assert_allclose(A.compute_advantages("reinforce++", rewards, 1),
                               (rewards - rewards.mean()) / rewards.std(), rtol=1e-5)


def np_gae(r, v, mask, gamma, lam):
    """GAE written out row by row, over each row's own length."""
    adv = np.zeros_like(r, dtype=np.float64)
    for i in range(r.shape[0]):
        n = int(mask[i].sum())
        last = 0.0
        for t in reversed(range(n)):
            v_next = v[i, t + 1] if t + 1 < n else 0.0
            delta = r[i, t] + gamma * v_next - v[i, t]
            last = delta + gamma * lam * last
            adv[i, t] = last
    return adv, np.where(mask, adv + v, 0.0)


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.9, 0.95), (1.0, 0.0), (0.0, 0.5)])
def test_gae_matches_hand_reference_on_ragged_rows(gamma, lam):
    """Rows end at different lengths (a stop token mid-batch, an empty row, a full row); values and rewards
    past a row's end are garbage and must not leak in."""
    rng_ = np.random.default_rng(3)
    lens = [5, 2, 0, 3, 1]
    mask = np.arange(5)[None, :] < np.array(lens)[:, None]
    outcome = rng_.normal(size=5).astype(np.float32)
    pen = rng_.normal(0, 0.1, (5, 5)).astype(np.float32)
    r = np.asarray(A.token_rewards_with_outcome(outcome, mask, pen))
    v = rng_.normal(size=(5, 5)).astype(np.float32)
    v_garbage = np.where(mask, v, 100.0).astype(np.float32)
    adv, ret = A.gae(r, v_garbage, mask, gamma, lam)
    e_adv, e_ret = np_gae(np.where(mask, r, 0.0), np.where(mask, v, 0.0), mask, gamma, lam)
    np.testing.assert_allclose(adv, e_adv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ret, e_ret, rtol=1e-5, atol=1e-6)
    assert r[0, 4] == pytest.approx(outcome[0] + pen[0, 4]) and r[1, 1] == pytest.approx(outcome[1] + pen[1, 1])
    assert np.all(np.asarray(adv)[~mask] == 0)


def test_gae_with_gamma_lam_one_and_zero_value_is_reinforce():
    """gamma = lam = 1, V = 0, no KL: every token's advantage is its row's outcome reward (REINFORCE); whitened,
    it is exactly REINFORCE++'s batch-normalised advantage."""
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], bool)
    rewards = np.array([1.0, -0.5, 0.25], np.float32)
    adv, ret = A.gae(A.token_rewards_with_outcome(rewards, mask), np.zeros((3, 4), np.float32), mask, 1.0, 1.0)
    np.testing.assert_array_equal(np.asarray(adv), np.where(mask, rewards[:, None], 0.0))
    np.testing.assert_array_equal(np.asarray(ret), np.asarray(adv))
    np.testing.assert_allclose(A.masked_whiten(adv, mask), A.compute_advantages("reinforce++", rewards, 1, mask=mask),
                               rtol=1e-6)


def test_clipped_value_loss_matches_hand_computation():
    v = np.array([[1.0, 0.0, 2.0]], np.float32)
    old = np.array([[0.5, 0.0, 0.0]], np.float32)
    ret = np.array([[0.0, 1.0, 2.0]], np.float32)
    mask = np.array([[1, 1, 1]], bool)
    # token 0: moved 0.5 > clip 0.2 -> clipped value 0.7, (0.7-0)^2 = 0.49 < (1-0)^2 = 1: unclipped wins (max)
    # token 1: unchanged: 0.5 * 1
    # token 2: moved 2 -> clipped 0.2, (0.2-2)^2 = 3.24 > 0: clipped wins (pessimistic)
    s, c, m = L.value_loss(v, old, ret, mask, vf_clip=0.2)
    assert float(s) == pytest.approx(0.5 * (1.0 + 1.0 + 3.24)) and float(c) == 3
    assert float(m["vf_clip_frac"][0]) == 1.0
    s0, _, m0 = L.value_loss(v, old, ret, mask, vf_clip=0.0)
    assert float(s0) == pytest.approx(0.5 * (1.0 + 1.0 + 0.0)) and float(m0["vf_clip_frac"][0]) == 0.0
    s_m, c_m, _ = L.value_loss(v, old, ret, np.array([[1, 1, 0]], bool), vf_clip=0.2)
    assert float(s_m) == pytest.approx(1.0) and float(c_m) == 2


def test_token_level_advantages_in_the_clipped_loss():
    """A [B, T] advantage weights each token by its own advantage; a constant row equals the [B] form."""
    x1 = L.LossInputs(LOGP, OLD, None, ADV, MASK)
    x2 = L.LossInputs(LOGP, OLD, None, np.repeat(ADV[:, None], T, 1), MASK)
    kw = dict(eps_low=0.2, eps_high=0.28, beta=0, kl_estimator="k3", aggregation="token-mean")
    assert float(L.grpo_loss(x1, **kw)[0]) == pytest.approx(float(L.grpo_loss(x2, **kw)[0]), rel=1e-6)
    adv_t = rng.normal(size=(B, T)).astype(np.float32)
    s, c, _ = L.grpo_loss(L.LossInputs(LOGP, OLD, None, adv_t, MASK), **kw)
    r = np.exp(LOGP - OLD)
    tok = -np.minimum(r * adv_t, np.clip(r, 0.8, 1.28) * adv_t)
    np.testing.assert_allclose(float(s) / float(c), (tok * MASK).sum() / MASK.sum(), rtol=1e-5)


def logp_grad(loss_fn, x, **kw):
    """The loss (sum / count) and its gradient with respect to the current log-probs."""
    def f(logp):
        s, c, _ = loss_fn(x._replace(logp=logp), **kw)
        return s / c
    return jax.value_and_grad(f)(jnp.asarray(x.logp))


KW = dict(beta=0.0, kl_estimator="k3", aggregation="token-mean")


@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_cispo_matches_numpy_and_keeps_every_tokens_gradient(beta):
    """CISPO: -sg(clip(r, 1 - el, 1 + eh)) A log pi. Its value here is -w A (same gradient as the log pi form),
    and every token has gradient -w A / n, the clipped ones included, where GRPO's clip zeroes them."""
    el, eh = 0.2, 0.28
    x = L.LossInputs(LOGP, OLD, REF if beta else None, ADV, MASK)
    kw = dict(KW, beta=beta)
    loss, g = logp_grad(L.cispo_loss, x, eps_low=el, eps_high=eh, **kw)
    r = np.exp(LOGP - OLD)
    w = np.clip(r, 1 - el, 1 + eh)
    tok = -w * ADV[:, None]
    if beta:
        tok = tok + beta * np_kl(LOGP, REF, "k3")
    np.testing.assert_allclose(float(loss), np_aggregate(tok, MASK, "token-mean"), rtol=1e-5)
    n = MASK.sum()
    expect = np.where(MASK, -w * ADV[:, None] / n, 0.0)
    if beta:  # d k3 / d logp = 1 - exp(ref - logp)
        expect = expect + np.where(MASK, beta * (1 - np.exp(REF - LOGP)) / n, 0.0)
    np.testing.assert_allclose(np.asarray(g), expect, rtol=1e-5, atol=1e-8)
    out = MASK & ((r > 1 + eh) | (r < 1 - el))
    # GRPO's clip silences the tokens past the range on the advantage's side; CISPO keeps them all
    zero = out & ((ADV[:, None] > 0) & (r > 1 + eh) | (ADV[:, None] < 0) & (r < 1 - el))
    assert zero.sum() >= 3 and np.all(np.abs(np.asarray(g))[out] > 0)
    if not beta:
        _, g_grpo = logp_grad(L.grpo_loss, x, eps_low=el, eps_high=eh, **kw)
        np.testing.assert_array_equal(np.asarray(g_grpo)[zero], 0.0)
        pg = np.where(MASK, -ADV[:, None] * r / n, 0.0)  # r A / n where the clip is not active
        np.testing.assert_allclose(np.asarray(g_grpo)[MASK & ~zero], pg[MASK & ~zero], rtol=1e-5)
    s, c, m = L.cispo_loss(x, eps_low=el, eps_high=eh, **kw)
    assert float(m["clip_frac"][0]) == out.sum()


@pytest.mark.parametrize("tau_pos,tau_neg", [(1.0, 1.05), (0.5, 2.0)])
def test_sapo_matches_numpy_and_its_gate_is_one_on_policy(tau_pos, tau_neg):
    """SAPO: -(4 / tau) sigmoid(tau (r - 1)) A with tau by the advantage's sign; gradient 4 s (1 - s) r times
    the plain policy gradient -A / n, which it equals on policy (r = 1)."""
    x = L.LossInputs(LOGP, OLD, None, ADV, MASK)
    kw = dict(KW, sapo_tau_pos=tau_pos, sapo_tau_neg=tau_neg)
    loss, g = logp_grad(L.sapo_loss, x, **kw)
    r = np.exp(LOGP - OLD).astype(np.float64)
    tau = np.where(ADV[:, None] > 0, tau_pos, tau_neg)
    s = 1 / (1 + np.exp(-tau * (r - 1)))
    np.testing.assert_allclose(float(loss), np_aggregate(-(4 / tau) * s * ADV[:, None], MASK, "token-mean"),
                               rtol=1e-5)
    n = MASK.sum()
    weight = 4 * s * (1 - s) * r
    np.testing.assert_allclose(np.asarray(g), np.where(MASK, -weight * ADV[:, None] / n, 0.0), rtol=1e-4,
                               atol=1e-8)
    _, _, m = L.sapo_loss(x, **kw)
    np.testing.assert_allclose(float(m["gate"][0]) / float(m["gate"][1]), weight[MASK].mean(), rtol=1e-5)
    on = x._replace(old_logp=LOGP)  # on policy: the gate's weight is exactly 1
    _, g_on = logp_grad(L.sapo_loss, on, **kw)
    np.testing.assert_allclose(np.asarray(g_on), np.where(MASK, -ADV[:, None] / n, 0.0), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("el,eh", [(0.2, 0.28), (1 - np.exp(-0.4), np.exp(0.4) - 1)])
def test_gmpo_matches_numpy(el, eh):
    """GMPO: per sequence -A exp(mean_t of the pessimistically clipped log-ratios), mean over sequences."""
    x = L.LossInputs(LOGP, OLD, None, ADV, MASK)
    s, c, m = L.gmpo_loss(x, eps_low=el, eps_high=eh, **KW)
    lo, hi = np.log(1 - el), np.log(1 + eh)
    expect, n_clipped = [], 0
    for i in range(B):
        lr = (LOGP[i] - OLD[i])[MASK[i]].astype(np.float64)
        if ADV[i] > 0:
            kept = np.minimum(lr, np.clip(lr, lo, hi))  # a high ratio is cut, a low one kept
            n_clipped += (lr > hi).sum()
        else:
            kept = np.maximum(lr, np.clip(lr, lo, hi))
            n_clipped += (lr < lo).sum()
        expect.append(-ADV[i] * np.exp(kept.mean()))
    assert float(c) == B
    np.testing.assert_allclose(float(s) / float(c), np.mean(expect), rtol=1e-5)
    assert float(m["clip_frac"][0]) == n_clipped and n_clipped > 0


def test_gmpo_sequence_of_clipped_tokens_has_no_gradient():
    """A positive-advantage sequence whose every token ratio is above the range contributes no gradient."""
    logp = np.log(np.full((1, 4), 1.5, np.float32))
    x = L.LossInputs(logp, np.zeros((1, 4), np.float32), None, np.ones(1, np.float32), np.ones((1, 4), bool))
    _, g = logp_grad(L.gmpo_loss, x, eps_low=0.2, eps_high=0.2, **KW)
    np.testing.assert_array_equal(np.asarray(g), 0.0)
    _, g = logp_grad(L.gmpo_loss, x._replace(adv=-np.ones(1, np.float32)), eps_low=0.2, eps_high=0.2, **KW)
    np.testing.assert_allclose(np.asarray(g), 1.5 / 4, rtol=1e-6)  # a bad sample's high ratios: pushed down


def test_dual_clip_caps_negative_advantage_tokens():
    """Dual-clip PPO: for A < 0 the token loss is min(max(-r A, -clip(r) A), -c A); A > 0 is unchanged."""
    el, eh, c = 0.2, 0.2, 1.5
    logp = np.log(np.array([[0.5, 1.0, 1.4, 2.0, 3.0]] * 2, np.float32))
    adv = np.array([-1.0, 2.0], np.float32)
    x = L.LossInputs(logp, np.zeros_like(logp), None, adv, np.ones_like(logp, bool))
    loss, g = logp_grad(L.grpo_loss, x, eps_low=el, eps_high=eh, dual_clip=c, **KW)
    r = np.exp(logp.astype(np.float64))
    a = adv[:, None]
    tok = np.maximum(-r * a, -np.clip(r, 1 - el, 1 + eh) * a)
    tok = np.where(a < 0, np.minimum(tok, -c * a), tok)
    np.testing.assert_allclose(float(loss), tok.mean(), rtol=1e-6)
    # r = 0.5: below the clip range (the usual clip); r = 2, 3 > c: capped; in between the ratio's gradient
    assert np.all(np.asarray(g)[0, [0, 3, 4]] == 0) and np.all(np.asarray(g)[0, 1:3] != 0)
    _, g0 = logp_grad(L.grpo_loss, x, eps_low=el, eps_high=eh, dual_clip=0.0, **KW)
    np.testing.assert_array_equal(np.asarray(g)[1], np.asarray(g0)[1])
    assert np.all(np.asarray(g0)[0, 3:] != 0)
    _, _, m = L.grpo_loss(x, eps_low=el, eps_high=eh, dual_clip=c, **KW)
    assert float(m["dual_clip_frac"][0]) == 2
