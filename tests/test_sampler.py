import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import prompts, tiny_model
from reasoning_rl.algorithms.logprobs import target_logprobs
from reasoning_rl.rollout import sampler as S
from reasoning_rl.rollout.sampling import filter_logits, inverse_cdf, row_keys, select


def trainer_logprobs(mdef, params, pt, pv, out, g, temperature):
    toks = np.concatenate([np.repeat(pt, g, 0), np.asarray(out.tokens)], 1)
    valid = np.concatenate([np.repeat(pv, g, 0), np.asarray(out.mask)], 1)
    n = out.tokens.shape[1]
    return np.asarray(target_logprobs(mdef.bind(params), jnp.asarray(toks), jnp.asarray(valid), n, temperature))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_equal_trainer_recompute(temperature):
    mdef, params = tiny_model()
    pt, pv = S.left_pad(prompts(5), 0)
    out = jax.device_get(S.generate(mdef, params, pt, pv, max_new_tokens=16, group_size=4, stop_ids=(3,),
                                    temperature=temperature, rng_seed=3))
    lp = trainer_logprobs(mdef, params, pt, pv, out, 4, temperature)
    assert out.mask.any(axis=1).all()
    gap = np.abs(np.where(out.mask, lp - out.logprobs, 0.0)).max()
    assert gap < 1e-5, gap


def test_stop_tokens_mask_and_padding():
    mdef, params = tiny_model(seed=1)
    pt, pv = S.left_pad(prompts(4, seed=1), 0)
    out = jax.device_get(S.generate(mdef, params, pt, pv, max_new_tokens=24, group_size=3, stop_ids=(5, 6),
                                    rng_seed=0, pad_id=0))
    for r in range(out.tokens.shape[0]):
        n = int(out.lengths[r])
        row = out.tokens[r]
        assert out.mask[r, :n].all() and not out.mask[r, n:].any()
        stops = [i for i in range(n) if row[i] in (5, 6)]
        assert stops in ([], [n - 1])  # a stop token, if any, is the last generated token
        assert (row[n:] == 0).all() and (out.logprobs[r, n:] == 0).all()
        if not stops:
            assert n == 24


def test_group_fan_out_greedy_rows_agree_and_match_single():
    mdef, params = tiny_model(seed=2)
    pt, pv = S.left_pad(prompts(3, seed=2), 0)
    g4 = jax.device_get(S.generate(mdef, params, pt, pv, max_new_tokens=12, group_size=4, greedy=True))
    g1 = jax.device_get(S.generate(mdef, params, pt, pv, max_new_tokens=12, group_size=1, greedy=True))
    for p in range(3):
        for j in range(4):
            np.testing.assert_array_equal(g4.tokens[p * 4 + j], g1.tokens[p])


def test_padding_does_not_change_samples():
    """The same prompt, padded to different lengths, yields the same greedy continuation."""
    mdef, params = tiny_model(seed=3)
    p = prompts(1, seed=3)
    a = S.left_pad(p, 0, bucket=8)
    b = S.left_pad(p, 0, bucket=32)
    ga = jax.device_get(S.generate(mdef, params, *a, max_new_tokens=10, greedy=True))
    gb = jax.device_get(S.generate(mdef, params, *b, max_new_tokens=10, greedy=True))
    np.testing.assert_array_equal(ga.tokens, gb.tokens)
    np.testing.assert_allclose(ga.logprobs, gb.logprobs, atol=1e-5)


def test_top_k_one_is_greedy_and_loop_exits_when_all_stopped():
    mdef, params = tiny_model(seed=4)
    pt, pv = S.left_pad(prompts(3, seed=4), 0)
    greedy = jax.device_get(S.generate(mdef, params, pt, pv, max_new_tokens=8, greedy=True))
    topk = jax.device_get(S.generate(mdef, params, pt, pv, max_new_tokens=8, top_k=1, rng_seed=9))
    np.testing.assert_array_equal(greedy.tokens, topk.tokens)
    first = tuple(int(t) for t in greedy.tokens[:, 0])
    stopped = jax.device_get(S.generate(mdef, params, pt, pv, max_new_tokens=8, greedy=True, stop_ids=first))
    assert (stopped.lengths == 1).all()


def test_top_p_filter_keeps_the_nucleus():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = np.asarray(filter_logits(logits, top_p=0.75)) > -1e29
    assert kept.tolist() == [[True, True, False, False]]
    kept = np.asarray(filter_logits(logits, top_p=0.85)) > -1e29
    assert kept.tolist() == [[True, True, True, False]]
    kept = np.asarray(filter_logits(logits, top_k=3)) > -1e29
    assert kept.tolist() == [[True, True, True, False]]


@pytest.mark.parametrize("vocab,top_k,top_p", [(37, 0, 1.0), (300, 0, 1.0), (300, 5, 1.0), (300, 0, 0.6)])
def test_token_draw_follows_the_filtered_softmax(vocab, top_k, top_p):
    """The inverse-CDF draw samples softmax(filtered logits): empirical frequencies over 40k draws match, and
    tokens outside top-k / top-p are never drawn; the log-prob is the unfiltered one (what the trainer uses)."""
    rng = np.random.default_rng(vocab + top_k)
    logits = jnp.asarray(rng.standard_normal((1, vocab)) * 2.0, jnp.float32)
    n = 40_000
    keys = row_keys(jax.random.key(7), jnp.zeros((n,), jnp.int32), jnp.arange(n))
    tok, lp = jax.jit(lambda k, l: select(k, l, temperature=0.8, top_k=top_k, top_p=top_p, greedy=False))(
        keys, jnp.repeat(logits, n, 0))
    want = np.asarray(jax.nn.softmax(filter_logits(logits / 0.8, top_k, top_p)))[0]
    got = np.bincount(np.asarray(tok), minlength=vocab) / n
    assert got[want == 0].sum() == 0
    assert np.abs(got - want).max() < 5 * np.sqrt(want.max() / n), np.abs(got - want).max()
    full = np.asarray(jax.nn.log_softmax(logits / 0.8))[0]
    np.testing.assert_allclose(np.asarray(lp), full[np.asarray(tok)], atol=1e-6)


def test_inverse_cdf_edges():
    """u -> 0 gives the first positive-weight token, u -> 1 the last; zero weights are skipped."""
    w = jnp.asarray([[0.0, 0.0, 1.0, 0.0, 2.0, 0.0, 0.0] + [0.0] * 20], jnp.float32)
    toks = inverse_cdf(jnp.asarray([0.0, 0.33, 0.34, 1.0 - 2**-24]), jnp.repeat(w, 4, 0))
    assert np.asarray(toks).tolist() == [2, 2, 4, 4]


def test_no_recompile_for_same_shapes():
    mdef, params = tiny_model(seed=5)
    sp = S.SamplingParams(6, 1.0, 0, 1.0, False, (3,), 0, 2)
    for seed in range(3):
        pt, pv = S.left_pad(prompts(4, seed=seed), 0, bucket=16)
        S.sample(mdef, params, pt, pv, jax.random.key(seed), sp)
    assert S._compiled(mdef, sp)._cache_size() == 1


def test_growing_attention_windows_change_nothing_but_the_work():
    """The plain loop attends over growing prefixes of the cache (static window sizes); every window count
    gives the same samples as attending the whole cache from the first step."""
    mdef, params = tiny_model(seed=11)
    pt, pv = S.left_pad(prompts(4, seed=11), 0)
    outs = [jax.device_get(S.sample(mdef, params, pt, pv, jax.random.key(2),
                                    S.SamplingParams(21, 1.0, 0, 1.0, False, (5,), 0, 2, windows=w)))
            for w in (1, 3, 21)]
    for o in outs[1:]:
        np.testing.assert_array_equal(o.tokens, outs[0].tokens)
        np.testing.assert_allclose(o.logprobs, outs[0].logprobs, atol=2e-6)
    assert S.window_ends(8, 21, 3) == [16, 24, 29] and S.window_ends(8, 21, 1) == [29]
