"""Full-attention layers of their own beside sliding ones: MiMo-V2-Flash's (fewer key/value heads, no sinks;
values narrower than keys and scaled) and Gemma 4's (wider heads, values that are the keys' projection, normed
values, proportional rope, stored layer scalars). The full layers stack apart, the cache holds each kind's
keys/values in a buffer of that kind's shape, and every decode path, the trainer's shared prompt pass and LoRA
agree with the model run without a cache."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import assert_sampler_equals_trainer_on_every_decode_path
from reasoning_rl.models import KVCache, create
from reasoning_rl.models.config import LoRAConfig
from test_hf_io import FAMILY_CONFIGS
from test_models_layers import random_params

from reasoning_rl.algorithms.logprobs import target_logprobs
from reasoning_rl.rollout.sampler import generate, left_pad

MOE = FAMILY_CONFIGS["mimo_v2_flash"]
GEMMA4 = FAMILY_CONFIGS["gemma4"]
GEMMA4_MOE = FAMILY_CONFIGS["gemma4_moe"]
# dense: full layers with one key/value head between sliding ones with two and sinks, values 16 wide beside keys 8
DENSE = dataclasses.replace(MOE, moe=None, n_layers=4, n_kv_heads=2, full_kv_heads=1, head_dim=8, v_head_dim=16,
                            rope_dim=0, layer_types=("sliding", "full", "sliding", "full"), value_scale=1.3)


def _model(cfg, seed=5):
    mdef, _ = create(cfg, abstract=True)
    return mdef, random_params(mdef, seed)


@pytest.mark.parametrize("cfg", [MOE, DENSE, GEMMA4, GEMMA4_MOE], ids=["moe", "dense", "gemma4", "gemma4_moe"])
def test_full_layers_stack_apart_and_each_kind_has_a_cache_of_its_shape(cfg):
    mdef, params = _model(cfg)
    full = [i for i, s in enumerate(cfg.sliding_layers) if not s]
    kinds = {"full_layers", "full_dense_layers"} & set(params)
    assert kinds and all(params[k]["attn"]["k"].shape[2] == cfg.full_kv_heads for k in kinds)
    assert all("sinks" not in params[k]["attn"] for k in kinds)
    assert params["layers"]["attn"]["k"].shape[2] == cfg.n_kv_heads
    assert ("sinks" in params["layers"]["attn"]) == cfg.attn_sinks
    assert all(params[k]["attn"]["k"].shape[-1] == (cfg.full_head_dim or cfg.head_dim) for k in kinds)
    assert all(("v" in params[k]["attn"]) != cfg.full_k_eq_v for k in kinds)
    assert params["layers"]["attn"]["v"].shape[-1] == cfg.v_head_dim or cfg.head_dim
    # each kind's keys/values in a buffer of exactly its layers' shape, every entry a layer writes (no padding)
    assert cfg.cache_kinds == ("sliding", "full")
    toks = jnp.asarray(np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 7)), jnp.int32)
    valid = jnp.ones((2, 7), bool)
    cache = KVCache.empty(cfg, 2, 10)
    _, cache = jax.jit(lambda p, c: mdef.bind(p).hidden(toks, jnp.arange(7)[None], valid, c, 0))(params, cache)
    sizes = {"sliding": (cfg.n_kv_heads, cfg.head_dim), "full": (cfg.full_kv_heads, cfg.full_head_dim or cfg.head_dim)}
    for kind, (kh, hd) in sizes.items():
        n = len(full) if kind == "full" else cfg.n_layers - len(full)
        k, v = np.asarray(cache.k[kind]), np.asarray(cache.v[kind])
        assert k.shape == (n, 2, kh, 10, hd) and v.shape == (n, 2, kh, 10, cfg.v_head_dim or hd)
        assert np.abs(k[:, :, :, :7]).min() > 0 and not k[:, :, :, 7:].any()
        assert [cfg.cache_slots[i] for i in range(cfg.n_layers) if (i in full) == (kind == "full")] == list(range(n))
    kk, kd, vk, vd = cfg.kv_shape  # what one buffer as wide as the widest layer would hold
    assert sum(a.size for a in jax.tree.leaves((cache.k, cache.v))) < cfg.n_layers * 2 * 10 * (kk * kd + vk * vd)
    # full layers apart only for their sinks (the same key/value shape): one buffer
    same = dataclasses.replace(DENSE, full_kv_heads=2, v_head_dim=0, full_sinks=False)
    assert same.split_full and same.cache_kinds == () and not isinstance(KVCache.empty(same, 1, 4).k, dict)


@pytest.mark.parametrize("cfg", [DENSE, GEMMA4], ids=["dense", "gemma4"])
def test_sampler_equals_trainer_on_every_decode_path(cfg):
    """(Their MoE variants' decoding: the greedy generations against transformers in ``test_hf_parity``; the
    experts do not touch the cache.)"""
    assert_sampler_equals_trainer_on_every_decode_path(*_model(cfg), tol=_tol(cfg))


def test_unrolled_refill_copies_each_kinds_prompt_cache():
    """In-flight refill over the per-layer buffers of unrolled decode (each copied from its kind's prefill buffer)
    gives the plain loop's tokens and log-probs."""
    mdef, params = _model(DENSE)
    unrolled = create(dataclasses.replace(DENSE, decode_layers="unroll"), abstract=True)[0]
    toks, valid = left_pad([[5, 7, 9, 11, 3], [17, 2, 40, 8, 1, 9, 22, 31, 4, 2, 6], [3]], 0)
    kw = dict(max_new_tokens=10, rng_seed=4, group_size=2, stop_ids=(7, 9, 13))
    base = generate(mdef, params, toks, valid, **kw)
    out = generate(unrolled, params, toks, valid, slots=2, **kw)
    assert np.asarray(base.lengths).min() < 10
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(base.tokens))
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(base.logprobs), atol=1e-5)


def _tol(cfg) -> float:
    """Gemma 4's random tiny model (queries unscaled over normed keys, embeddings times sqrt(d), log-probs near 7)
    carries float32 noise of ~2e-5 between two orders of summation (with its weights halved, 2e-6)."""
    return 5e-5 if cfg.family == "gemma4" else 1e-5


def _assert_grouped_equals_whole_rows(mdef, params):
    toks, valid = left_pad([[5, 7, 9, 11, 3], [17, 2, 40, 8, 1, 9, 22, 31, 4, 2, 6]], 0)
    out = generate(mdef, params, toks, valid, max_new_tokens=10, rng_seed=2, group_size=3, stop_ids=())
    rows = np.repeat(np.arange(2), 3)
    full = jnp.asarray(np.concatenate([np.asarray(toks)[rows], np.asarray(out.tokens)], 1))
    fv = jnp.asarray(np.concatenate([np.asarray(valid)[rows], np.asarray(out.mask)], 1))
    grouped = np.asarray(target_logprobs(mdef.bind(params), full, fv, 10, group=3))
    whole = np.asarray(target_logprobs(mdef.bind(params), full, fv, 10))
    np.testing.assert_allclose(grouped, whole, atol=_tol(mdef.cfg))
    assert np.abs(grouped - np.asarray(out.logprobs)).max() < _tol(mdef.cfg)


@pytest.mark.parametrize("cfg", [DENSE, GEMMA4], ids=["dense", "gemma4"])
def test_shared_prompt_pass_equals_whole_rows(cfg):
    """The trainer's GRPO groups run each prompt once and the completions over its keys/values (each layer its own
    heads of them): the same log-probs as whole rows, and as the sampler's."""
    _assert_grouped_equals_whole_rows(*_model(cfg))


@pytest.mark.parametrize("base", [DENSE, GEMMA4_MOE], ids=["dense", "gemma4_moe"])
def test_lora_adapts_both_kinds_of_layer(base):
    """Adapters on q, k, v and o of both stacks (each its own shapes: the full layers' k/v fewer heads, v and o
    the value width; Gemma 4's full layers have no v, their values the adapted keys) and, in Gemma 4's MoE
    layers, on the dense MLP beside the experts; trained adapters change the logits, and the sampler equals the
    trainer."""
    mlp = ("gate", "up", "down") if base.moe is not None else ()
    cfg = dataclasses.replace(base, lora=LoRAConfig(rank=2, targets=("q", "k", "v", "o", *mlp)))
    mdef, params = _model(cfg)
    if mlp:
        assert all("gate_lora_a" in params[s]["dense_mlp"] for s in ("layers", "full_layers"))
    for stack in ("layers", "full_layers"):
        attn = params[stack]["attn"]
        assert attn["k_lora_b"].shape[-2:] == attn["k"].shape[-2:]
        assert ("v_lora_b" in attn) == ("v" in attn)
        assert "v" not in attn or attn["v_lora_b"].shape[-1] == attn["v"].shape[-1]
    ids = jnp.asarray(np.random.RandomState(1).randint(0, cfg.vocab_size, (2, 9)), jnp.int32)
    base = np.asarray(mdef.bind(params)(ids))
    moved = jax.tree_util.tree_map_with_path(
        lambda p, a: a + 0.05 if "lora_b" in str(p[-1]) else a, params)
    assert np.abs(np.asarray(mdef.bind(moved)(ids)) - base).max() > 1e-3
    _assert_grouped_equals_whole_rows(mdef, moved)


def test_refusals_name_the_field():
    with pytest.raises(ValueError, match="full_kv_heads: 3 does not divide the full layers' 4 attention heads"):
        create(dataclasses.replace(DENSE, full_kv_heads=3), abstract=True)
    with pytest.raises(ValueError, match="full_heads: 3 is not a multiple of the full layers' key/value heads"):
        create(dataclasses.replace(DENSE, full_kv_heads=0, full_heads=3), abstract=True)
    with pytest.raises(ValueError, match="nope_query_scale: scales the queries of layers without rotary"):
        create(dataclasses.replace(DENSE, nope_query_scale=(0.1, 2048.0)), abstract=True)
    with pytest.raises(ValueError, match="gate_act: 'relu' is not one of sigmoid, softplus"):
        create(dataclasses.replace(DENSE, attn_gate=True, gate_act="relu"), abstract=True)
    with pytest.raises(ValueError, match="gate_bias: a bias of the attention output gate"):
        create(dataclasses.replace(DENSE, gate_bias=True), abstract=True)
    with pytest.raises(ValueError, match="batch_invariant"):
        create(dataclasses.replace(DENSE, batch_invariant=True), abstract=True)
