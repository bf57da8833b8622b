"""Paged KV cache: a group's prompt pages are stored once and shared by its G rows; each row gets its own
copy of the page it writes into (copy-on-write at fork). It must sample exactly what the contiguous cache
samples, plain or with in-flight refill, and hold fewer bytes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import prompts, tiny_model
from reasoning_rl.models import MLAConfig, TransformerConfig, create, positions_from_valid
from reasoning_rl.rollout import sampler as S


def assert_same(a, b):
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=2e-6)


@pytest.mark.parametrize("page,slots,windows", [(4, 0, 4), (3, 0, 1), (8, 0, 3), (8, 5, 1), (5, 4, 1), (16, 0, 2)])
def test_paged_equals_contiguous(page, slots, windows):
    """Prompt width 8: pages of 4 and 8 split it exactly (the first own page is all response), 3 and 5 leave a
    partial prompt page to copy, 16 puts the whole prompt in it."""
    mdef, params = tiny_model(seed=12)
    pt, pv = S.left_pad(prompts(5, seed=12), 0)
    kw = dict(max_new_tokens=19, group_size=3, stop_ids=(4, 9, 13), rng_seed=7, temperature=0.8)
    ref = jax.device_get(S.generate(mdef, params, pt, pv, **kw))
    sp = S.SamplingParams(19, 0.8, 0, 1.0, False, (4, 9, 13), 0, 3, slots=slots, refill_min=1, windows=windows,
                          page_size=page)
    out = jax.device_get(S.sample(mdef, params, pt, pv, jax.random.key(7), sp))
    assert_same(ref, out)


def test_paged_mla_and_sliding_window_models():
    mla = TransformerConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=8, ffn_dim=64,
                            mla=MLAConfig(q_lora_rank=0, kv_lora_rank=16, qk_nope_dim=8, qk_rope_dim=4, v_dim=8))
    for mdef, params in (create(mla, 0), tiny_model(seed=13, sliding_window=5, layer_types=("sliding", "full"))):
        pt, pv = S.left_pad(prompts(3, seed=13), 0)
        kw = dict(max_new_tokens=12, group_size=2, stop_ids=(5,), rng_seed=1)
        assert_same(jax.device_get(S.generate(mdef, params, pt, pv, **kw)),
                    jax.device_get(S.generate(mdef, params, pt, pv, page_size=3, **kw)))


def test_prompt_pages_are_shared_and_never_written():
    """Decode through the model on a paged cache: the group's rows point at the same prompt pages, those
    pages still hold exactly the prefill's keys afterwards, and the pool is smaller than the contiguous cache."""
    mdef, params = tiny_model(seed=14)
    model = mdef.bind(params)
    p, g, n, page = 2, 4, 6, 4
    pt, pv = S.left_pad(prompts(p, lo=9, hi=12, seed=14), 0, bucket=4)  # width 12: three full prompt pages
    tp = pt.shape[1]
    lay = S.PageLayout.of(page, p, p * g, tp, n)
    assert (lay.shared, lay.own) == (3, 2)
    prefill = S.KVCache.empty(mdef.cfg, p, lay.prefill_size)
    _, prefill = model.hidden(jnp.asarray(pt), positions_from_valid(jnp.asarray(pv)), jnp.asarray(pv), prefill, 0)
    size = (lay.shared + lay.own) * page
    valid = jnp.pad(jnp.repeat(jnp.asarray(pv), g, 0), ((0, 0), (0, size - tp)))
    cache = S.paged_cache(prefill, lay, jnp.arange(p * g) // g, valid)
    table = np.asarray(cache.table)
    for r in range(p * g):  # rows of one prompt share its prompt pages, and own distinct response pages
        np.testing.assert_array_equal(table[r, :3], table[(r // g) * g, :3])
    assert len(set(table[:, 3:].ravel())) == p * g * lay.own
    pos = jnp.repeat(jnp.sum(jnp.asarray(pv), 1), g)
    for t in range(n):
        tok = jnp.full((p * g, 1), 5 + t, jnp.int32)
        _, cache = model.hidden(tok, pos[:, None] + t, jnp.ones((p * g, 1), bool), cache, tp + t)
    shared = np.asarray(cache.k[:, : p * lay.shared])
    want = np.asarray(S._pages(prefill.k[:, :, :, : lay.shared * page], page))
    np.testing.assert_array_equal(shared, want)
    contiguous = mdef.cfg.n_layers * p * g * (tp + n)
    assert cache.k.shape[1] * page * mdef.cfg.n_layers < contiguous  # slots held: 2*3 + 8*2 pages of 4 < 8*18


@pytest.mark.parametrize("slots", [0, 4])
def test_paged_decode_unrolled_over_hoisted_weights_equals_the_scan(slots):
    """``decode_layers: unroll`` with a paged cache (accelerators' default): the pool stays stacked, the layers
    run unrolled over weights sliced once; the same samples as the layer scan, plain and with refill."""
    import dataclasses

    mdef, params = tiny_model(seed=13, n_layers=3)
    pt, pv = S.left_pad(prompts(5, seed=13), 0)
    sp = S.SamplingParams(14, 0.8, 0, 1.0, False, (4, 9), 0, 3, slots=slots, refill_min=1, page_size=4)
    outs = [jax.device_get(jax.jit(lambda p, m=dataclasses.replace(
        mdef, cfg=dataclasses.replace(mdef.cfg, decode_layers=mode)): S._sample_rows(
            m, sp, p, pt, pv, jax.random.key(2)))(params)) for mode in ("scan", "unroll")]
    assert_same(outs[0], outs[1])
