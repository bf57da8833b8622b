"""Each GRPO-family variant against a direct NumPy transcription of its paper formula."""

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
