"""Gemma 4 E2B/E4B's layers: per-layer input embeddings gated into every layer, and the last layers attending over
the keys/values of the last earlier layer of their kind (``kv_shared_layers``: no key/value projections of their
own, nothing of theirs in the cache). Every decode path, the in-flight refill, paged and unrolled caches, the
trainer's grouped log-probs, gradients and LoRA agree with the model run without a cache. (Against transformers:
``test_hf_parity``'s gemma4_e2b and gemma4_shared cases.)"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, str(Path(__file__).parent))
from helpers import assert_sampler_equals_trainer_on_every_decode_path
from reasoning_rl.models import KVCache, create
from reasoning_rl.models.config import LoRAConfig
from reasoning_rl.models.transformer import kv_stores, positions_from_valid, prompt_pass, runs
from test_hf_io import FAMILY_CONFIGS
from test_models_layers import random_params

from reasoning_rl.algorithms.logprobs import target_logprobs
from reasoning_rl.rollout.sampler import generate, left_pad

E2B = FAMILY_CONFIGS["gemma4_e2b"]  # sliding, full, then a sliding and a full layer sharing theirs
# full layers shaped as the sliding ones (one stack for both kinds), three sharing layers, no per-layer inputs
MIXED = dataclasses.replace(E2B, n_layers=6, layer_types=("sliding", "full", "sliding", "sliding", "full", "sliding"),
                            full_head_dim=0, full_kv_heads=0, ple_dim=0, kv_shared_layers=3, double_wide_mlp=False)
# (a random Gemma 4 at full-size weights carries float32 noise of ~6e-5 between two orders of summation, queries
# unscaled over normed keys; with its weights halved, ~1e-6)
TOL = 1e-5


def _model(cfg, seed=5):
    mdef, _ = create(cfg, abstract=True)
    return mdef, jax.tree.map(lambda a: a * 0.5, random_params(mdef, seed))


def test_layers_pair_with_the_last_earlier_layer_of_their_kind():
    assert E2B.kv_owners == (0, 1, 0, 1) and kv_stores(E2B) == {0: "sliding", 1: "full"}
    assert MIXED.kv_owners == (0, 1, 2, 2, 1, 2) and MIXED.cached_layers == (0, 1, 2)
    # a run per layer whose keys/values are shared, and the sharing layers run by the layer they read
    assert [(r[0], r[2], r[3]) for r in runs(MIXED)] == [("layers", 0, 1), ("layers", 1, 1), ("layers", 2, 1),
                                                       ("shared_layers", 3, 1), ("shared_layers", 4, 1),
                                                       ("shared_layers", 5, 1)]
    _, params = _model(MIXED)
    assert set(params["shared_layers"]["attn"]) == {"q", "o", "q_norm"}
    assert params["shared_layers"]["mlp"]["up"].shape[-1] == MIXED.ffn_dim  # (not double-wide here)
    cache = KVCache.empty(MIXED, 2, 6)
    assert cache.k.shape[0] == 3  # the three layers computing keys/values only
    with pytest.raises(ValueError, match="kv_shared_layers: 6 must leave"):
        create(dataclasses.replace(MIXED, kv_shared_layers=6), abstract=True)
    with pytest.raises(ValueError, match="layer 2 .full attention. shares keys/values, but no earlier full"):
        create(dataclasses.replace(MIXED, layer_types=("sliding", "sliding", "full") + ("sliding",) * 3,
                                   kv_shared_layers=4), abstract=True)


@pytest.mark.parametrize("cfg", [E2B, MIXED], ids=["e2b", "mixed"])
def test_prefill_and_decode_equal_the_pass_without_a_cache(cfg):
    """The pass without a cache keeps the shared keys/values itself; prefill then token-by-token decode read
    them from the cache the layers computing them wrote."""
    mdef, params = _model(cfg)
    toks = jnp.asarray([[5, 7, 9, 11, 3, 8, 21, 2, 6], [0, 0, 0, 17, 2, 40, 8, 1, 5]])
    valid = toks > 0
    pos = positions_from_valid(valid)
    h, _ = jax.jit(lambda p: mdef.bind(p).hidden(toks, pos, valid))(params)
    run = jax.jit(lambda p, t, q, v, c, i: mdef.bind(p).hidden(t, q, v, c, i))
    hp, cache = run(params, toks[:, :5], pos[:, :5], valid[:, :5], KVCache.empty(cfg, 2, 12), 0)
    hs = [hp]
    for i in range(5, 9):
        hi, cache = run(params, toks[:, i:i + 1], pos[:, i:i + 1], valid[:, i:i + 1], cache, i)
        hs.append(hi)
    v = np.asarray(valid)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(hs, 1))[v], np.asarray(h)[v], atol=TOL)


def test_sampler_equals_trainer_on_every_decode_path():
    """Groups, refilled slots, paged and unrolled caches: the same tokens, and the trainer's log-probs (grouped rows
    through the shared prompt pass) equal the sampler's. (MIXED's layers of both kinds in one stack: the prefill
    and decode test above.)"""
    assert_sampler_equals_trainer_on_every_decode_path(*_model(E2B), tol=TOL)


@pytest.mark.parametrize("cfg", [E2B, MIXED], ids=["e2b", "mixed"])
def test_shared_prompt_pass_equals_whole_rows_and_their_gradients(cfg):
    """The trainer's GRPO groups run each prompt once (its per-layer inputs, the sharing layers reading their
    owner's prompt keys/values) and the completions over it, the sharing layers over their owner's [prompt |
    completion] keys/values: the log-probs of whole rows and their gradients, and the sampler's."""
    mdef, params = _model(cfg)
    assert prompt_pass(cfg)
    toks, valid = left_pad([[5, 7, 9, 11, 3], [17, 2, 40, 8, 1, 9, 22, 31, 4, 2, 6]], 0)
    out = generate(mdef, params, toks, valid, max_new_tokens=10, rng_seed=2, group_size=3, stop_ids=())
    rows = np.repeat(np.arange(2), 3)
    full = jnp.asarray(np.concatenate([np.asarray(toks)[rows], np.asarray(out.tokens)], 1))
    fv = jnp.asarray(np.concatenate([np.asarray(valid)[rows], np.asarray(out.mask)], 1))

    def logprobs(p, group):
        return target_logprobs(mdef.bind(p), full, fv, 10, group=group)

    grouped, whole = (np.asarray(jax.jit(logprobs, static_argnums=1)(params, g)) for g in (3, 1))
    np.testing.assert_allclose(grouped, whole, atol=TOL)
    assert np.abs(grouped - np.asarray(out.logprobs)).max() < TOL
    w = jnp.asarray(np.random.RandomState(0).randn(*grouped.shape), jnp.float32)
    ga, gb = (jax.jit(jax.grad(lambda p, g=g: jnp.sum(logprobs(p, g) * w)))(params) for g in (3, 1))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ga), jax.tree.leaves(gb)):
        scale = max(float(np.abs(np.asarray(b)).max()), 1e-3)
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-4 * scale, jax.tree_util.keystr(path)


def test_a_sharing_layers_queries_are_projected_as_any_layers():
    """A layer reading another's keys/values computes its queries as one with keys of its own: the same weights
    give the same queries, the position scale of layers without rotary (a third entry of the rope table) and the
    q norm included."""
    from reasoning_rl.models.layers.attention import Attention, rope_for
    from reasoning_rl.models.layers.rope import rope_table

    x = jnp.asarray(np.random.RandomState(0).randn(2, 5, 16), jnp.float32)
    pos = jnp.tile(jnp.arange(5), (2, 1))
    cos, sin = rope_table(pos, *rope_for(8, 1e4, ()))
    table = (cos, sin, 1.0 + 0.1 * pos.astype(jnp.float32))
    own, shared = (Attention(16, 4, 2, 8, rngs=nnx.Rngs(3), qk_norm=True, kv_reuse=r) for r in (False, True))
    shared.q = own.q
    q_own, q_shared = own.project_qkv(x, pos, table)[0], shared.project_qkv(x, pos, table)[0]
    np.testing.assert_array_equal(np.asarray(q_shared), np.asarray(q_own))
    assert not np.allclose(np.asarray(q_own), np.asarray(own.project_qkv(x, pos, (cos, sin))[0]))


def test_gradients_reach_the_shared_keys_and_the_per_layer_inputs():
    """A loss read at the last (sharing) layer only moves the layers whose keys/values it reads through them, and
    the per-layer table's rows of the tokens seen."""
    mdef, params = _model(E2B)
    toks = jnp.asarray([[3, 9, 4, 7, 1]])
    valid = jnp.ones_like(toks, bool)

    def loss(p):
        return jnp.sum(mdef.bind(p)(toks, valid=valid)[:, -1] ** 2)

    g = jax.jit(jax.grad(loss))(params)
    assert np.abs(np.asarray(g["full_layers"]["attn"]["k"])).max() > 0  # the full layer 1's keys, read by layer 3
    rows = np.abs(np.asarray(g["ple_embed"])).sum(-1)
    assert (rows[[3, 9, 4, 7, 1]] > 0).all() and not rows[[0, 2, 5, 6, 8]].any()
    assert np.abs(np.asarray(g["shared_layers"]["ple_gate"])).max() > 0


def test_lora_adapts_what_the_sharing_layers_have():
    """Adapters on q, k, v, o and the MLP: the sharing layers take q, o and the MLP's (no k or v of their own);
    moved adapters change the logits and the sampler still equals the trainer."""
    cfg = dataclasses.replace(E2B, lora=LoRAConfig(rank=2, targets=("q", "k", "v", "o", "gate", "up", "down")))
    mdef, params = _model(cfg)
    shared = params["shared_layers"]["attn"]
    assert {"q_lora_a", "o_lora_a"} <= set(shared) and not {k for k in shared if k.startswith(("k_", "v_"))}
    assert "k_lora_a" in params["layers"]["attn"]
    moved = jax.tree_util.tree_map_with_path(lambda p, a: a + 0.05 if "lora_b" in str(p[-1]) else a, params)
    ids = jnp.asarray(np.random.RandomState(1).randint(0, cfg.vocab_size, (2, 9)), jnp.int32)
    fwd = jax.jit(lambda p: mdef.bind(p)(ids))
    assert np.abs(np.asarray(fwd(moved)) - np.asarray(fwd(params))).max() > 1e-3
    toks, valid = left_pad([[5, 7, 9, 11, 3], [17, 2, 40, 8, 1, 9, 22, 31, 4, 2, 6]], 0)
    out = generate(mdef, moved, toks, valid, max_new_tokens=8, rng_seed=2, group_size=2, stop_ids=())
    rows = np.repeat(np.arange(2), 2)
    full = jnp.asarray(np.concatenate([np.asarray(toks)[rows], np.asarray(out.tokens)], 1))
    fv = jnp.asarray(np.concatenate([np.asarray(valid)[rows], np.asarray(out.mask)], 1))
    lp = np.asarray(jax.jit(lambda p: target_logprobs(mdef.bind(p), full, fv, 8, group=2))(moved))
    assert np.abs(lp - np.asarray(out.logprobs)).max() < TOL
