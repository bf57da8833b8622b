"""Shared layers and the decoder's layer schedules, without any reference implementation.

The key property for RL: the cache-backed path (prefill + one-token decode steps, as the sampler runs it) gives
the same logits as the full-sequence forward the trainer runs, for every attention/MLP variant and schedule.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reasoning_rl.models import KVCache, MLAConfig, MoEConfig, TransformerConfig, create, positions_from_valid
from reasoning_rl.models.layers.moe import (
    balance_loss,
    experts_dense,
    experts_ragged,
    route,
    score_bias_update,
)
from reasoning_rl.models.layers.rope import rope_parameters, rope_table
from reasoning_rl.sharding import DEFAULT_RULES

BASE = {"vocab_size": 96, "d_model": 32, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2, "head_dim": 8, "ffn_dim": 48}
CONFIGS = {
    "plain": TransformerConfig(**BASE),
    "gemma_like": TransformerConfig(**BASE, norm_offset=1.0, embed_scale=True, activation="gelu_tanh",
                                    sandwich_norm=True, qk_norm=True, query_scale=0.3, sliding_window=3,
                                    layer_types=("sliding", "full", "sliding"), rope_local_theta=100.0,
                                    rope_scaling={"rope_type": "linear", "factor": 2.0}, final_softcap=5.0),
    "mixtral_like": TransformerConfig(**BASE, sliding_window=4, tie_embeddings=False,
                                      moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=16, aux_loss_coef=0.01)),
    "deepseek_like": TransformerConfig(
        **{**BASE, "n_kv_heads": 4, "head_dim": 12}, tie_embeddings=False,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8,
                      "mscale": 1.0, "mscale_all_dim": 1.0},
        mla=MLAConfig(q_lora_rank=16, kv_lora_rank=8, qk_nope_dim=8, qk_rope_dim=4, v_dim=6),
        moe=MoEConfig(n_experts=8, top_k=2, ffn_dim=8, n_shared=1, first_dense=1, score="sigmoid", scaling=2.5,
                      n_group=4, topk_group=2, score_bias=True)),
}


def random_params(mdef, seed: int = 0) -> dict:
    """Host-side random params for a ModelDef (no XLA compiles: ``create``'s initialiser compiles every op,
    which dominates these tests' time on a busy CPU)."""
    rng = np.random.RandomState(seed)

    def init(path, leaf):
        name = str(path[-1].key)
        x = rng.normal(size=leaf.shape)
        if name == "scale":  # norms: around their neutral value
            x = x * 0.1 + (0.0 if mdef.cfg.norm_offset else 1.0)
        elif name.endswith("bias"):
            x = x * 0.1
        else:
            x = x * (0.3 if name == "embed" else 0.15)
        return jnp.asarray(x, leaf.dtype)

    return jax.tree_util.tree_map_with_path(init, mdef.abstract_params())


@functools.cache
def _model(name: str):
    """(ModelDef, params) per config, built once per process."""
    mdef, _ = create(CONFIGS[name], abstract=True)
    return mdef, random_params(mdef, 1)


def _batch(b=2, t=10, seed=0):
    rng = np.random.RandomState(seed)
    tokens = jnp.asarray(rng.randint(0, BASE["vocab_size"], (b, t)), jnp.int32)
    valid = jnp.ones((b, t), bool).at[1, :3].set(False)  # left padding
    return tokens, valid


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_decode_matches_full_forward(name):
    cfg = CONFIGS[name]
    mdef, params = _model(name)
    tokens, valid = _batch()
    pos = positions_from_valid(valid)
    prefill = 6

    @jax.jit
    def run(params):
        model = mdef.bind(params)
        full = model(tokens, pos, valid)
        cache = KVCache.empty(cfg, tokens.shape[0], tokens.shape[1])
        h, cache = model.hidden(tokens[:, :prefill], pos[:, :prefill], valid[:, :prefill], cache, 0)

        def step(cache, t):  # one decode step, as the sampler runs it
            sl = lambda a: jax.lax.dynamic_slice_in_dim(a, t, 1, axis=1)
            h, cache = model.hidden(sl(tokens), sl(pos), sl(valid), cache, t)
            return cache, model.logits(h[:, 0])

        _, steps = jax.lax.scan(step, cache, jnp.arange(prefill, tokens.shape[1]))
        return full, jnp.concatenate([model.logits(h), steps.transpose(1, 0, 2)], axis=1)

    full, cached = run(params)
    np.testing.assert_allclose(np.asarray(cached)[np.asarray(valid)], np.asarray(full)[np.asarray(valid)],
                               atol=2e-5, rtol=2e-5)


def test_unrolled_layers_match_scan():
    """Scanned (unroll_max=0), unrolled for a shallow stack (the default) and never scanned
    (scan_layers=False) compute the same hidden states, MoE statistics and gradients."""
    cfg = CONFIGS["deepseek_like"]
    mdef, params = _model("deepseek_like")
    variants = [create(dataclasses.replace(cfg, **kw), abstract=True)[0]
                for kw in ({"unroll_max": 0}, {"unroll_max": cfg.n_layers}, {"scan_layers": False})]
    tokens, valid = _batch()
    pos = positions_from_valid(valid)

    @jax.jit
    def run(p):
        outs = []
        for m in variants:
            h, _, aux = m.bind(p).hidden(tokens, pos, valid, return_aux=True)
            grad = jax.grad(lambda q, m=m: jnp.sum(m.bind(q).hidden(tokens, pos, valid)[0] ** 2))(p)
            outs.append((h, aux, grad))
        return outs

    ref, *others = run(params)
    for out in others:
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5), ref, out)


def test_shallow_stacks_unroll_multi_token_passes_and_scan_decode():
    """With ``unroll_max`` >= depth a training pass has no scan (no stacked residuals) while a one-token
    decode step still scans the layers over the cache."""
    mdef, params = _model("plain")
    deep, _ = create(dataclasses.replace(CONFIGS["plain"], unroll_max=0), abstract=True)
    tokens, valid = _batch()
    pos = positions_from_valid(valid)

    def has_scan(m, cache=None, t=None):
        fn = (lambda p: m.bind(p).hidden(tokens, pos, valid)[0]) if cache is None else (
            lambda p: m.bind(p).hidden(tokens[:, :1], pos[:, :1], valid[:, :1], cache, t)[0])
        return "scan" in str(jax.make_jaxpr(fn)(params))

    assert not has_scan(mdef) and has_scan(deep)
    cache = KVCache.empty(mdef.cfg, tokens.shape[0], 16)
    assert has_scan(mdef, cache, 3)


def test_dense_model_has_no_aux_and_keeps_its_param_tree():
    mdef, params = _model("plain")
    assert set(params) == {"embed", "layers", "final_norm"}
    assert set(params["layers"]) == {"attn_norm", "attn", "mlp_norm", "mlp"}
    tokens, valid = _batch()
    h, cache, aux = jax.jit(lambda p: mdef.bind(p).hidden(tokens, positions_from_valid(valid), valid,
                                                          return_aux=True))(params)
    assert h.shape == (2, 10, 32) and cache is None and aux == {}


def test_moe_aux_outputs_and_segments():
    mdef, params = _model("deepseek_like")
    assert params["dense_layers"]["mlp"]["gate"].shape == (1, 32, 48)
    assert params["layers"]["mlp"]["gate"].shape == (2, 8, 32, 8)
    assert params["layers"]["mlp"]["router"].dtype == jnp.float32
    tokens, valid = _batch()
    aux = jax.jit(lambda p: mdef.bind(p).hidden(tokens, positions_from_valid(valid), valid, return_aux=True)[2])(params)
    assert aux["expert_load"].shape == (2, 8)
    np.testing.assert_allclose(np.asarray(aux["expert_load"]).sum(-1), 2.0, rtol=1e-6)
    assert float(aux["aux_loss"]) == 0.0  # aux-loss-free family


def test_mla_cache_holds_latents():
    cfg = CONFIGS["deepseek_like"]
    cache = KVCache.empty(cfg, 2, 16)
    assert cache.k.shape == (3, 2, 1, 16, 8) and cache.v.shape == (3, 2, 1, 16, 4)
    cache = KVCache.empty(CONFIGS["plain"], 2, 16)
    assert cache.k.shape == cache.v.shape == (3, 2, 2, 16, 8)


def test_every_param_has_known_logical_axes():
    for cfg in CONFIGS.values():
        mdef, _ = create(cfg, abstract=True)
        shapes = jax.tree.leaves(mdef.abstract_params())
        axes = jax.tree.leaves(mdef.param_axes(), is_leaf=lambda x: isinstance(x, tuple))
        assert len(axes) == len(shapes)
        for ax, s in zip(axes, shapes):
            assert len(ax) == len(s.shape)
            assert all(a is None or a in DEFAULT_RULES for a in ax), ax


def _moe_inputs(mc, n=24, d=16, seed=0, biases=False):
    rng = np.random.RandomState(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    logits = (rng.normal(size=(n, mc.n_experts)) * 2).astype(np.float32)
    shapes = {"gate": (mc.n_experts, d, 8), "up": (mc.n_experts, d, 8), "down": (mc.n_experts, 8, d)}
    if biases:
        shapes.update(gate_b=(mc.n_experts, 8), up_b=(mc.n_experts, 8), down_b=(mc.n_experts, d))
    w = {k: (rng.normal(size=s) * 0.2).astype(np.float32) for k, s in shapes.items()}
    return x, logits, w


@pytest.mark.parametrize("score, glu", [("softmax", "silu"), ("sigmoid", "silu"), ("softmax", "clamped_swiglu"),
                                        ("sigmoid", "relu2")])
def test_ragged_experts_equal_dense_reference_with_grads(score, glu):
    """The grouped-matmul experts equal every-expert-on-every-token, values and gradients; with gpt-oss's
    expert biases and clamped SwiGLU (limit low enough that the clamps bind) too, and Nemotron-H's ungated
    squared-ReLU experts (no gate weights: ``relu(x up)^2 down``, checked against that formula)."""
    from reasoning_rl.models.layers.mlp import glu_fn

    mc = MoEConfig(n_experts=8, top_k=3, ffn_dim=8, score=score, n_group=2 if score == "sigmoid" else 1,
                   topk_group=1, scaling=2.0 if score == "sigmoid" else 1.0)
    x, logits, w = _moe_inputs(mc, biases=glu == "clamped_swiglu")
    if glu == "relu2":
        del w["gate"]
    act = glu_fn(glu, 1.702, 0.5)

    @jax.jit
    def both(x, w):
        out = {}
        for name, fn in (("ragged", experts_ragged), ("dense", experts_dense)):
            def loss(x, w, fn=fn):
                y = fn(x, route(logits, mc), w, act)
                return jnp.sum(y**2), y

            (_, y), g = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x, w)
            out[name] = (y, g)
        return out

    out = both(x, w)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4), out["ragged"], out["dense"])
    if glu == "relu2":
        r = route(logits, mc)
        h = np.maximum(np.einsum("nd,nkdf->nkf", x, w["up"][np.asarray(r.experts)]), 0) ** 2
        y = np.einsum("nkf,nkfd,nk->nd", h, w["down"][np.asarray(r.experts)], np.asarray(r.weights))
        np.testing.assert_allclose(out["ragged"][0], y, atol=1e-4, rtol=1e-4)


def test_routing_rules():
    mc = MoEConfig(n_experts=8, top_k=2, ffn_dim=4, score="sigmoid", n_group=4, topk_group=1, norm_topk=True,
                   scaling=2.5, score_bias=True)
    logits = np.random.RandomState(0).normal(size=(32, 8)).astype(np.float32)
    bias = np.zeros(8, np.float32)
    bias[5] = 10.0  # selection-only bias: expert 5 always chosen, weight unaffected
    r = jax.jit(route, static_argnums=1)(logits, mc, bias)
    experts = np.asarray(r.experts)
    assert (experts == 5).any(axis=1).all()
    assert (experts // 2 == 2).all()  # both picks inside expert 5's group (topk_group=1)
    np.testing.assert_allclose(np.asarray(r.weights).sum(-1), 2.5, rtol=1e-5)
    scores = 1 / (1 + np.exp(-logits))
    picked = np.take_along_axis(scores, experts, axis=1)
    np.testing.assert_allclose(np.asarray(r.weights), 2.5 * picked / picked.sum(-1, keepdims=True), rtol=1e-5)

    soft = MoEConfig(n_experts=8, top_k=2, ffn_dim=4, norm_topk=False)
    valid = np.arange(32) < 20
    r = jax.jit(route, static_argnums=1)(logits, soft, None, valid)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(r.weights), np.sort(probs, -1)[:, ::-1][:, :2], rtol=1e-6)
    counts = np.zeros(8)
    np.add.at(counts, np.asarray(r.experts)[:20].reshape(-1), 1)
    np.testing.assert_allclose(np.asarray(r.load), counts / 20, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(r.prob), probs[:20].mean(0), rtol=1e-5)
    lb = jax.jit(balance_loss)(r.load[None], r.prob[None])
    np.testing.assert_allclose(float(lb), 8 * np.sum(counts / 20 * probs[:20].mean(0)), rtol=1e-5)


def test_score_bias_update_moves_toward_balance():
    load = np.array([[0.5, 0.25, 0.25, 1.0]], np.float32)  # mean 0.5
    out = np.asarray(score_bias_update(np.zeros((1, 4), np.float32), load, 0.1))
    np.testing.assert_allclose(out, [[0.0, 0.1, 0.1, -0.1]])


def test_long_sequences_attend_in_query_blocks_with_the_same_results(monkeypatch):
    """Blocked attention (long sequences) gives the unblocked logits and gradients; padding and a ragged
    last block included."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from helpers import tiny_model
    from reasoning_rl.models import positions_from_valid
    from reasoning_rl.models.layers import attention

    mdef, params = tiny_model()
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(1, 40, (2, 37)), jnp.int32)
    valid = jnp.asarray(np.arange(37)[None, :] >= np.array([[0], [5]]))  # row 2 left-padded

    def loss(p):
        m = mdef.bind(p)
        h, _ = m.hidden(tokens, positions_from_valid(valid), valid)
        return jnp.sum(jnp.where(valid[..., None], m.logits(h), 0.0) ** 2), m.logits(h)

    (l0, out0), g0 = jax.value_and_grad(loss, has_aux=True)(params)
    monkeypatch.setattr(attention, "Q_CHUNK", 8)  # 37 tokens: 5 blocks, the last one padded
    hlo = jax.jit(lambda p: loss(p)[0]).lower(params).as_text()
    (l1, out1), g1 = jax.value_and_grad(loss, has_aux=True)(params)
    assert "while" in hlo  # the blocked path really ran
    np.testing.assert_allclose(np.asarray(out1), np.asarray(out0), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        a, b = np.asarray(a), np.asarray(b)  # the blocks' k/v gradients add up in another order
        assert np.abs(a - b).max() <= 1e-5 * max(np.abs(a).max(), 1e-6)


@pytest.mark.parametrize("kind", ["gqa_windows", "mla"])
def test_causal_blocks_match_unblocked_attention(kind, monkeypatch):
    """Attention within a sequence run in causal blocks (each block of queries over the keys up to its last
    query) gives the unblocked logits and gradients: sliding windows with soft-capped scores, and MLA;
    left padding and a ragged last block included."""
    from helpers import tiny_model
    from reasoning_rl.models.layers import attention

    kw = {"gqa_windows": {"sliding_window": 5, "layer_types": ("sliding", "full"), "attn_softcap": 3.0},
          "mla": {"n_kv_heads": 4, "mla": MLAConfig(q_lora_rank=0, kv_lora_rank=8, qk_nope_dim=8, qk_rope_dim=4,
                                                     v_dim=6)}}[kind]
    mdef, params = tiny_model(seed=3, **kw)
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(1, 40, (2, 37)), jnp.int32)
    valid = jnp.asarray(np.arange(37)[None, :] >= np.array([[0], [5]]))

    def loss(p):
        m = mdef.bind(p)
        h, _ = m.hidden(tokens, positions_from_valid(valid), valid)
        return jnp.sum(jnp.where(valid[..., None], m.logits(h), 0.0) ** 2), m.logits(h)

    # (jitted: each call traces anew, so the patched block size below reaches the second)
    (_, out0), g0 = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)  # 37 tokens < 2 blocks: unblocked
    calls = []
    blocks = attention.causal_blocks
    monkeypatch.setattr(attention, "causal_blocks", lambda *a, **k: calls.append(1) or blocks(*a, **k))
    monkeypatch.setattr(attention, "CAUSAL_BLOCK", 8)  # 37 tokens: 5 blocks, the last one of 5
    (_, out1), g1 = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert calls  # the blocked path really ran
    keep = np.asarray(valid)  # a pad query attends to nothing: its (unused) output is arbitrary either way
    np.testing.assert_allclose(np.asarray(out1)[keep], np.asarray(out0)[keep], rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= 1e-5 * max(np.abs(a).max(), 1e-6)


def test_rope_table_gathered_over_slots_equals_per_position():
    """A forward's rope table gathered from the slots' cos/sin (many positions, few slots) is the per-position
    table; with more slots than positions (a decode step) the positions are computed directly."""
    inv, factor = rope_parameters(16, 10000.0, {"rope_type": "yarn", "factor": 4.0,
                                                "original_max_position_embeddings": 8})
    pos = jnp.asarray(np.random.default_rng(0).integers(0, 40, (6, 20)), jnp.int32)
    want = rope_table(pos, inv, factor)
    for size in (40, 64, 500):  # 500 > 120 positions: the direct path
        got = jax.jit(lambda p, size=size: rope_table(p, inv, factor, size))(pos)
        for a, b in zip(want, got):
            assert a.shape == b.shape == (6, 20, 1, 8)
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


def test_lm_head_gradient_runs_in_the_compute_dtype():
    """The head's backward takes the float32 logits' cotangent in the compute dtype (bf16 products, not
    float32 ones); a float32 model's gradient is the plain einsum's, bit for bit."""
    from reasoning_rl.models.transformer import head_matmul

    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.standard_normal((3, 5, 16)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((40, 16)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((3, 5, 40)), jnp.float32)
    spec = "...d,vd->...v"
    plain = lambda a, b: jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)  # noqa: E731
    out, vjp = jax.vjp(lambda a, b: head_matmul(a, b, spec), h, w)
    ref_out, ref_vjp = jax.vjp(plain, h, w)
    np.testing.assert_array_equal(out, ref_out)
    for a, b in zip(vjp(g), ref_vjp(g)):
        np.testing.assert_array_equal(a, b)
    hb, wb = h.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    out, vjp = jax.vjp(lambda a, b: head_matmul(a, b, spec), hb, wb)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, plain(hb, wb))
    dh, dw = vjp(g)
    assert dh.dtype == dw.dtype == jnp.bfloat16
    low = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), hb, wb)[1](g.astype(jnp.bfloat16))
    np.testing.assert_array_equal(dh, low[0])
    np.testing.assert_array_equal(dw, low[1])
    exact = ref_vjp(g)
    for a, b in zip((dh, dw), exact):
        assert float(jnp.max(jnp.abs(a.astype(jnp.float32) - b))) <= 0.02 * float(jnp.max(jnp.abs(b)))
