"""DeepSeek Sparse Attention (DeepSeek-V3.2): the indexer's selection against its definition, the blocked form of
long sequences equal to the whole, and a sparse model's sampler log-probs equal to the trainer's on every decode
path (the indexer keys ride in the cache: plain, refilled slots, a paged cache, unrolled decode layers), pads
and packed rows changing nothing. Logits, generation and the save round trip against transformers are in
``test_hf_parity`` (``deepseek_v32``)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import (
    assert_packed_rows_equal_alone,
    assert_padding_changes_nothing,
    assert_sampler_equals_trainer_on_every_decode_path,
)
from reasoning_rl.models import create
from reasoning_rl.models.layers import dsa
from test_hf_io import FAMILY_CONFIGS
from test_models_layers import random_params


def _formula(q, k, w, mask, topk):
    """Each query's ``topk`` best keys by sum_h w_h relu(q_h . k / sqrt(D)), among those ``mask`` allows (all of
    them while there are fewer), one query at a time in float64."""
    q, k, w = (np.asarray(a, np.float64) for a in (q, k, w))
    out = np.zeros(mask.shape, bool)
    for b in range(q.shape[0]):
        for t in range(q.shape[1]):
            allowed = np.flatnonzero(mask[b, t])
            s = np.maximum(np.einsum("hd,sd->hs", q[b, t], k[b, allowed]) / np.sqrt(q.shape[-1]), 0)
            score = w[b, t] @ s
            out[b, t, allowed[np.argsort(-score, kind="stable")[:topk]]] = True
    return out


@pytest.mark.parametrize("t,working", [(12, None), (300, None), (300, 32 * 300 * 20)])
def test_selection_is_each_querys_best_keys(t, working, monkeypatch):
    """One block; 300 queries in blocks of 128, the last one partial; in blocks of 20 (the working set caps a
    block at 20 queries of 32 heads x 300 keys)."""
    if working:
        monkeypatch.setattr(dsa, "WORKING", working)
    rng = np.random.default_rng(0)
    b, h, d, topk = 2, 32, 16, 5  # (32 heads: no key's every head below zero, so no tie at a zero score)
    q, k, w = rng.normal(size=(b, t, h, d)), rng.normal(size=(b, t, d)), rng.normal(size=(b, t, h))
    mask = np.tril(np.ones((t, t), bool))[None].repeat(b, 0)
    mask[1, :, :3] = False  # a left-padded row
    got = np.asarray(dsa.select(*(jnp.asarray(a, jnp.float32) for a in (q, k, w)), jnp.asarray(mask), topk))
    np.testing.assert_array_equal(got, _formula(q, k, w, mask, topk))
    assert (got.sum(-1) == np.minimum(mask.sum(-1), topk)).all()


def test_a_key_tied_with_the_last_kept_score_is_kept():
    """A threshold on the k-th score: tied keys are all kept, the same set whatever order the scores came in."""
    q = jnp.ones((1, 1, 1, 4))
    k = jnp.asarray([[[1.0, 0, 0, 0], [1, 0, 0, 0], [2, 0, 0, 0], [0.5, 0, 0, 0]]])
    got = np.asarray(dsa.select(q, k, jnp.ones((1, 1, 1)), jnp.ones((1, 1, 4), bool), 2))
    np.testing.assert_array_equal(got[0, 0], [True, True, True, False])


@pytest.fixture(scope="module")
def sparse():
    mdef, _ = create(FAMILY_CONFIGS["deepseek_v32"], abstract=True)
    params = random_params(mdef, 4)
    return mdef, params


def test_sparse_attention_changes_the_model(sparse):
    """The selection matters at these lengths (3 keys of up to 20): the same weights with dense attention
    compute other logits."""
    mdef, params = sparse
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 64, (2, 20)), jnp.int32)
    dense = create(dataclasses.replace(mdef.cfg, mla=dataclasses.replace(mdef.cfg.mla, index_topk=0)),
                   abstract=True)[0]
    sub = jax.tree.map(lambda x: x, params)
    for seg in ("dense_layers", "layers"):  # the dense model has no indexer parameters
        for n in ("idx_q", "idx_k", "idx_k_norm", "idx_k_bias", "idx_w"):
            sub[seg]["attn"].pop(n)
    a, b = np.asarray(mdef.bind(params)(ids)), np.asarray(dense.bind(sub)(ids))
    np.testing.assert_allclose(a[:, :3], b[:, :3], atol=1e-5)  # up to 3 keys: every key is kept
    assert np.abs(a - b).max() > 1e-2


def test_sampler_logprobs_equal_trainer_on_every_decode_path(sparse):
    """Groups fanned out from one prefill, rows stopping at different steps, slots refilled with new rows, a
    paged cache, unrolled decode layers: the same tokens on every path, and the trainer's log-probs of them
    equal the sampler's (the indexer scores the cached keys as the trainer scores the sequence's)."""
    assert_sampler_equals_trainer_on_every_decode_path(*sparse)


def test_padding_and_packing_change_nothing(sparse):
    """Pads before, between and after a row's tokens, and packed sequences, leave every query's selection and
    logits as they are alone."""
    mdef, params = sparse
    assert_padding_changes_nothing(mdef.bind(params), 64)
    assert_packed_rows_equal_alone(mdef.bind(params), 64)
