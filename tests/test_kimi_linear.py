"""Kimi Linear: Kimi Delta Attention (the gated delta rule with a decay per key dimension) among latent-attention
layers without rotary, DeepSeek-V3's experts; read, run and written as transformers does."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import delta_rule_inputs
from reasoning_rl.models.layers.gated_deltanet import chunked_delta_rule, recurrent_delta_rule

_inputs = functools.partial(delta_rule_inputs, per_dim=True)  # a decay per key dimension


def test_one_decay_for_every_dimension_is_the_per_head_rule():
    """(The per-dimension rule against the NumPy recurrence: ``tests/test_qwen3_5.py``, ``per_dim``.)"""
    q, k, v, g, beta, s0 = _inputs(37)
    g1 = g[..., 0]
    for rule in (recurrent_delta_rule, functools.partial(chunked_delta_rule, chunk=8)):
        np.testing.assert_allclose(np.asarray(rule(q, k, v, jnp.repeat(g1[..., None], 8, -1), beta, s0)[0]),
                                   np.asarray(rule(q, k, v, g1, beta, s0)[0]), atol=1e-6)


def _model(**over):
    import dataclasses
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from reasoning_rl.models import create
    from test_hf_io import FAMILY_CONFIGS
    from test_models_layers import random_params

    cfg = FAMILY_CONFIGS["kimi_linear"]
    mdef, _ = create(dataclasses.replace(cfg, **over), abstract=True)
    return mdef, random_params(mdef, 2)


def test_padding_and_packing_change_nothing():
    """Kimi Delta Attention reads a row's valid tokens only (pads before, between and after them change no
    logit), and packed sequences restart its convolution and state as they restart attention."""
    from helpers import assert_packed_rows_equal_alone, assert_padding_changes_nothing

    mdef, params = _model()
    net = mdef.bind(params)
    assert_padding_changes_nothing(net, mdef.cfg.vocab_size)
    assert_packed_rows_equal_alone(net, mdef.cfg.vocab_size)


def test_kda_layers_keep_their_gates_and_decays():
    """The layer's parameters: low-rank decay (f_a, f_b) and output-gate (g_a, g_b) projections, a decay bias per
    key dimension, one rate per head; no per-head decay projection or SiLU gate of Gated DeltaNet."""
    mdef, params = _model()
    shapes = {k: tuple(v.shape[1:]) for k, v in params["linear_layers"]["attn"].items()}  # (after the stack dim)
    assert shapes["f_a"] == (32, 8) and shapes["f_b"] == (8, 2, 8) and shapes["g_b"] == (8, 2, 8)
    assert shapes["dt_bias"] == (2, 8) and shapes["A_log"] == (2,) and "a" not in shapes and "z" not in shapes


@pytest.mark.parametrize("lin,match", [
    (dict(kind="kda", k_heads=2, v_heads=4), "Kimi Delta Attention has one head count"),
    (dict(kind="rwkv7"), "linear.kind: 'rwkv7' is not a recurrent layer kind")])
def test_bad_linear_layers_are_refused(lin, match):
    import dataclasses

    from reasoning_rl.models.config import LinearAttnConfig

    base = LinearAttnConfig(layers=(0, 2, 3), k_heads=2, v_heads=2, k_dim=8, v_dim=8, conv=4, kind="kda")
    with pytest.raises(ValueError, match=match):
        _model(linear=dataclasses.replace(base, **lin))


def test_lora_adapts_delta_and_latent_attention():
    """LoRA targets q, k, v, o adapt the delta-attention layers' projections (and kv_a, kv_b the latent
    attention's): one SFT step moves every adapter and leaves the base weights bit for bit."""
    import dataclasses

    import optax
    from reasoning_rl.models import LoRAConfig, create, lora

    from reasoning_rl.algorithms.steps import init_state, make_sft_step
    from reasoning_rl.config import OptimizerConfig

    mdef, params = _model()
    cfg = dataclasses.replace(mdef.cfg, lora=LoRAConfig(rank=2, alpha=4, targets=("q", "k", "v", "o", "kv_a", "kv_b")))
    mdef, params = create(cfg, 0)
    tx = optax.adam(1e-2)
    step = jax.jit(make_sft_step(mdef, OptimizerConfig(lr=1e-2), tx))
    rng = np.random.RandomState(0)
    batch = {"tokens": jnp.asarray(rng.randint(0, cfg.vocab_size, (2, 12)), jnp.int32),
             "valid": jnp.ones((2, 12), bool), "loss_mask": jnp.ones((2, 12), bool)}
    state, _ = step(init_state(params, tx, 0), batch)
    base_before, base_after = lora.split(params)[0], lora.split(state.params)[0]
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), base_before, base_after)
    new = lora.hf_save_flat(lora.split(state.params)[1])
    want = {p for p in new if p[-1].endswith("_lora_b")}
    moved = {p for p in want if np.abs(np.asarray(new[p])).max() > 0}
    assert moved == want, sorted(want - moved)
    assert {("linear_layers", "attn", f"{n}_lora_b") for n in "qkvo"} <= want
    assert ("layers", "attn", "kv_b_lora_b") in want


def test_plan_counts_the_chunked_forms_pairwise_decays():
    """``reasoning-rl plan``'s activation estimate for Kimi Delta Attention layers includes their chunks'
    per-dimension pairwise decays (at 512 tokens, 4 heads of 128: more than the 512 x 512 attention scores)."""
    import dataclasses

    from reasoning_rl.models.config import LinearAttnConfig
    from reasoning_rl.sharding.mesh import context

    from reasoning_rl.plan import _activations

    mdef, _ = _model()
    big = dataclasses.replace(mdef.cfg, linear=LinearAttnConfig(layers=(0, 2, 3), k_heads=4, v_heads=4, k_dim=128,
                                                                v_dim=128, conv=4, kind="kda"))
    gdn = dataclasses.replace(big, linear=dataclasses.replace(big.linear, kind="gated_deltanet"))
    ctx = context(jax.make_mesh((1, 1, 1, 1), ("data", "fsdp", "expert", "tensor")))
    saved_kda, _, _ = _activations(big, ctx, 2, 512, 256, 0)
    saved_gdn, _, _ = _activations(gdn, ctx, 2, 512, 256, 0)
    extra = 2 * 2 * 4 * 512 * 16 * 128 * 4 - 2 * 4 * 512 * 512 * 4  # (over the attention scores it replaces)
    assert saved_kda - saved_gdn == extra * (big.n_layers if big.remat == "none" else 1)
