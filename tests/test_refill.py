"""In-flight refill: rows decoded on fewer batch slots, waiting rows taking freed slots inside the jitted
loop, must give exactly the completions of the plain loop (same prompts, same seed), with fewer slot-steps."""

import jax
import numpy as np
import pytest

from helpers import prompts, tiny_model
from reasoning_rl.models import MoEConfig, TransformerConfig, create
from reasoning_rl.rollout import sampler as S


def both(mdef, params, pt, pv, slots, refill_min=0, **kw):
    plain = jax.device_get(S.generate(mdef, params, pt, pv, **kw))
    refill = jax.device_get(S.generate(mdef, params, pt, pv, slots=slots, refill_min=refill_min, **kw))
    return plain, refill


def assert_same(a, b):
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=2e-6)


@pytest.mark.parametrize("slots,refill_min", [(4, 0), (8, 1), (6, 3), (1, 0)])
def test_refill_equals_plain_loop(slots, refill_min):
    mdef, params = tiny_model(seed=4)
    pt, pv = S.left_pad(prompts(6, seed=4), 0)
    plain, refill = both(mdef, params, pt, pv, slots, refill_min, max_new_tokens=20, group_size=3,
                         stop_ids=(4, 7, 9, 11), rng_seed=5, temperature=0.9)
    lens = plain.lengths
    assert lens.min() < 20 and lens.max() == 20  # long-tailed: some stop early, some run to the limit
    assert_same(plain, refill)
    # refill runs fewer slot-steps for the same tokens (plain: every row for as long as the longest)
    assert int(refill.slot_steps) < int(plain.slot_steps)
    assert int(lens.sum()) <= int(refill.slot_steps)
    assert int(refill.slot_steps) % slots == 0


def test_refill_with_top_k_top_p_min_p_and_greedy():
    mdef, params = tiny_model(seed=5)
    pt, pv = S.left_pad(prompts(5, seed=5), 0)
    for kw in ({"top_k": 5, "top_p": 0.8, "min_p": 0.05}, {"greedy": True}):
        plain, refill = both(mdef, params, pt, pv, 4, max_new_tokens=16, group_size=2, stop_ids=(5, 6, 8),
                             rng_seed=1, **kw)
        assert_same(plain, refill)


def test_rows_are_keyed_by_global_index_so_pieces_equal_the_whole():
    """The plain loop over a batch split in two (``row0`` for the second piece) equals the whole batch:
    a row's draw depends on its own key, not on the rows beside it."""
    mdef, params = tiny_model(seed=6)
    pt, pv = S.left_pad(prompts(6, seed=6), 0)
    sp = S.SamplingParams(12, 1.0, 0, 1.0, False, (4, 5), 0, 2)
    whole = jax.device_get(S.sample(mdef, params, pt, pv, jax.random.key(3), sp))
    a = jax.device_get(S.sample(mdef, params, pt[:2], pv[:2], jax.random.key(3), sp))
    b = jax.device_get(S.sample(mdef, params, pt[2:], pv[2:], jax.random.key(3), sp, row0=4))
    np.testing.assert_array_equal(whole.tokens, np.concatenate([a.tokens, b.tokens]))
    np.testing.assert_array_equal(whole.lengths, np.concatenate([a.lengths, b.lengths]))
    # other seeds give other samples
    c = jax.device_get(S.sample(mdef, params, pt, pv, jax.random.key(4), sp))
    assert not np.array_equal(c.tokens, whole.tokens)


def test_refill_with_sliding_window_layers():
    """Per-row query slots must give the same windowed masks as the plain loop's shared slots."""
    mdef, params = tiny_model(seed=7, sliding_window=6, layer_types=("sliding", "full"))
    pt, pv = S.left_pad(prompts(4, seed=7), 0)
    plain, refill = both(mdef, params, pt, pv, 3, max_new_tokens=18, group_size=2, stop_ids=(4, 9, 13),
                         rng_seed=2)
    assert_same(plain, refill)


def test_refill_records_the_same_moe_routes():
    cfg = TransformerConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=64,
                            moe=MoEConfig(n_experts=8, top_k=2, ffn_dim=16))
    mdef, params = create(cfg, 1)
    pt, pv = S.left_pad(prompts(4, seed=8), 0)
    outs = []
    for slots in (0, 3):
        sp = S.SamplingParams(10, 1.0, 0, 1.0, False, (4, 9), 0, 2, True, slots=slots)
        outs.append(jax.device_get(S.sample(mdef, params, pt, pv, jax.random.key(0), sp)))
    assert_same(*outs)
    mask = np.concatenate([pv.repeat(2, 0), outs[0].mask], 1)  # routes of real tokens (pads are unused)
    np.testing.assert_array_equal(outs[0].routes[mask], outs[1].routes[mask])


def test_slot_utilisation_on_a_long_tail():
    """Most rows stop at once, one runs long: the plain loop keeps every row's slot for the long one's
    duration; refill reuses them."""
    mdef, params = tiny_model(seed=9)
    pt, pv = S.left_pad(prompts(8, seed=9), 0)
    stop = tuple(range(4, 36))  # most next tokens stop a row
    plain, refill = both(mdef, params, pt, pv, 4, 1, max_new_tokens=24, group_size=2, stop_ids=stop, rng_seed=0)
    assert_same(plain, refill)
    gen = int(plain.lengths.sum())
    assert gen / int(refill.slot_steps) > 1.5 * gen / int(plain.slot_steps)
