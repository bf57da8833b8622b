"""Mamba-2 layers (Granite 4.0-H) and gated short convolutions (LFM2): the chunked state-space form equals the
token-by-token recurrence (and the recurrence the formula), the sampler's log-probs equal the trainer's on every
decode path (plain, refill, paged, unrolled), a row's numbers do not depend on its padding and packed rows equal
their sequences alone (both kinds), and LoRA adapters on the Mamba-2 hybrid round-trip through peft
(transformers' model with them gives our logits). Logits, generation and the save round trip against
transformers are in ``test_hf_parity`` (``granite4_h*``, ``lfm2*``), a GRPO run in ``test_hf_families_run``."""

from __future__ import annotations

import dataclasses
import json
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
from reasoning_rl.models import LoRAConfig, create, lora
from reasoning_rl.models.layers.gated_deltanet import chunked_delta_rule, recurrent_delta_rule
from test_hf_io import FAMILY_CONFIGS
from test_models_layers import random_params


def _formula(q, k, v, g, s0):
    """S <- exp(g) S + k v^T; o = S^T q, one row at a time in float64."""
    q, k, v, g, s = (np.asarray(a, np.float64) for a in (q, k, v, g, s0))
    out = np.zeros(v.shape)
    for t in range(q.shape[1]):
        s = s * np.exp(g[:, t])[..., None, None] + k[:, t, :, :, None] * v[:, t, :, None, :]
        out[:, t] = np.einsum("bhkv,bhk->bhv", s, q[:, t])
    return out, s


def test_chunked_state_space_form_equals_the_recurrence_and_the_formula():
    b, t, h, n, p = 2, 37, 3, 5, 4
    ks = jax.random.split(jax.random.key(0), 6)
    q, k = (jax.random.normal(x, (b, t, h, n)) for x in ks[:2])
    v = jax.random.normal(ks[2], (b, t, h, p))
    g = -jax.nn.softplus(jax.random.normal(ks[3], (b, t, h)))
    s0 = jax.random.normal(ks[4], (b, h, n, p))
    ones = jnp.ones((b, t, h))
    want_o, want_s = _formula(q, k, v, g, s0)
    rec_o, rec_s = recurrent_delta_rule(q, k, v, g, ones, s0, delta=False)
    np.testing.assert_allclose(rec_o, want_o, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rec_s, want_s, rtol=1e-4, atol=1e-4)
    for chunk in (8, 16, 64):  # several chunks with a ragged last one, and one chunk
        o, s = chunked_delta_rule(q, k, v, g, ones, s0, chunk=chunk, delta=False)
        np.testing.assert_allclose(o, rec_o, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(s, rec_s, rtol=1e-4, atol=1e-4)
    # packed rows: a new segment starts from a zero state in both forms
    seg = jnp.asarray(np.repeat([[0, 1, 2]], b, axis=0).repeat([10, 15, 12], axis=1))
    o1, s1 = recurrent_delta_rule(q, k, v, g, ones, s0, seg=seg, delta=False)
    o2, s2 = chunked_delta_rule(q, k, v, g, ones, s0, chunk=8, seg=seg, delta=False)
    np.testing.assert_allclose(o2, o1, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(s2, s1, rtol=1e-4, atol=1e-4)
    third, _ = _formula(q[:, 25:], k[:, 25:], v[:, 25:], g[:, 25:], np.zeros_like(s0))
    np.testing.assert_allclose(o1[:, 25:], third, rtol=1e-4, atol=1e-4)


def _model(name: str):
    cfg = FAMILY_CONFIGS[name]
    mdef, _ = create(cfg, abstract=True)
    params = random_params(mdef, 4)
    # a conv bias and gated norm off their initial values, so ignoring either shows
    for att in (params[s][m] for s in ("linear_layers", "linear_mixer_layers") if s in params
                for m in ("attn", "mamba") if m in params[s]):
        for k in ("conv_x_bias", "conv_B_bias", "norm", "D", "dt_bias"):
            if k in att:
                att[k] = att[k] + 0.3 * jax.random.normal(jax.random.key(len(k)), att[k].shape)
    return mdef, params


@pytest.fixture(scope="module", params=["granite4_h", "falcon_h1", "olmo_hybrid"])
def hybrid(request):
    """Granite 4.0-H (Mamba-2 layers beside attention ones), Falcon-H1 (both in every layer: each layer's KV cache
    and state at the same slot) and OLMo Hybrid (Gated DeltaNet layers with their own pre-norms beside post-normed
    attention)."""
    return _model(request.param)


@pytest.fixture(scope="module", params=["granite4_h", "lfm2", "nemotron_h", "falcon_h1", "olmo_hybrid"])
def recurrent(request):
    """Granite 4.0-H (Mamba-2), LFM2 (gated short convolutions), Nemotron-H (Mamba-2 and attention layers,
    some without an MLP) and Falcon-H1 (attention and Mamba-2 side by side in every layer)."""
    return _model(request.param)


def test_sampler_logprobs_equal_trainer_on_every_decode_path(hybrid):
    """Groups fanned out from one prefill, rows stopping at different steps (their convolution inputs and states
    then frozen), slots refilled with new rows, a paged cache, unrolled decode layers: the same tokens on every
    path, and the trainer's log-probs of them (whole rows, its own padding) equal the sampler's."""
    assert_sampler_equals_trainer_on_every_decode_path(*hybrid)


def test_padding_does_not_change_a_rows_numbers(recurrent):
    mdef, params = recurrent
    assert_padding_changes_nothing(mdef.bind(params), 64)


def test_packed_rows_equal_their_sequences_alone(recurrent):
    mdef, params = recurrent
    assert_packed_rows_equal_alone(mdef.bind(params), 64)


@pytest.mark.parity
@pytest.mark.parametrize("name", ["granite4_h", "nemotron_h", "falcon_h1"])
def test_lora_on_the_hybrid_round_trips_through_peft(tmp_path, name):
    """Adapters on the attention layer's q/k/v/o and the Mamba-2 layers' output projection (o: out_proj) written
    for peft: transformers' Granite 4.0-H with them gives our logits, and the file loads back to the same model.
    Nemotron-H's also on its MLP layers' up/down (a model layer's adapters go to the checkpoint layers it was made
    of, under the names transformers gives them); Falcon-H1's on every projection of attention and the MLP (o:
    attention's alone, not the Mamba-2 mixer's out_proj beside it, which peft refuses), through every muP
    multiplier."""
    peft = pytest.importorskip("peft")
    torch = pytest.importorskip("torch")
    import test_hf_parity as P
    from reasoning_rl.models import load_pretrained, save_lora

    path = tmp_path / "base"
    P.build_reference(name).save_pretrained(path)
    base = load_pretrained(path)
    # (peft refuses adapters on a Nemotron-H Mamba-2 layer's out_proj, which our o target adapts: refused below)
    targets = {"granite4_h": ("q", "k", "v", "o"), "nemotron_h": ("q", "k", "v", "up", "down"),
               "falcon_h1": ("q", "k", "v", "o", "gate", "up", "down")}[name]

    def adapted(targets):
        mdef = lora.with_lora(base.mdef, LoRAConfig(rank=3, alpha=5.0, targets=targets))
        ad = lora.init_adapters(mdef, 0)
        keys = iter(jax.random.split(jax.random.key(2), len(jax.tree.leaves(ad))))
        ad = jax.tree.map(lambda x: 0.2 * jax.random.normal(next(keys), x.shape), ad)
        return type(base)(mdef, lora.join(base.params, ad)), ad

    model, ad = adapted(targets)
    if name == "granite4_h":
        assert "o_lora_a" in ad["linear_layers"]["attn"]  # the Mamba-2 layers' out_proj is adapted
    elif name == "falcon_h1":  # o: attention's o_proj only
        assert {"o_lora_a", "q_lora_a"} <= set(ad["linear_layers"]["attn"]) and "mamba" not in ad["linear_layers"]
    else:
        assert "up_lora_a" in ad["linear_layers"]["mlp"] and set(ad["mixer_layers"]) == {"attn"}  # (no MLP there)
        with pytest.raises(lora.LoRAError, match=r"out_proj\): peft refuses adapters on out_proj of a nemotron_h"):
            save_lora(adapted(("q", "o"))[0], tmp_path / "refused")
        assert not (tmp_path / "refused").exists()
    ids, mask = P.IDS, P.MASK
    ours = np.asarray(model(ids, mask))
    assert np.abs(ours - np.asarray(base(ids, mask)))[mask].max() > 1e-3  # the adapters matter
    save_lora(model, tmp_path / "adapter")
    conf = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert conf["target_modules"] == {
        "granite4_h": ["k_proj", "o_proj", "out_proj", "q_proj", "v_proj"],
        "nemotron_h": ["down_proj", "k_proj", "q_proj", "up_proj", "v_proj"],
        "falcon_h1": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]}[name]
    import transformers

    ref = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(path).eval(),
                                         tmp_path / "adapter").eval()
    with torch.no_grad():
        assert np.abs(P.reference_logits(ref) - ours)[mask].max() < 1e-5
    back = load_pretrained(path, adapter=tmp_path / "adapter")
    np.testing.assert_array_equal(np.asarray(back(ids, mask)), ours)


def test_mixer_multipliers_apply_to_every_mamba2_layer_and_other_kinds_refuse_them():
    """A Mamba-2 mixer's input and output multipliers act whether it runs beside attention (Falcon-H1) or alone
    (here Granite 4.0-H's layers): the input times m is the mixer with its five input projections times m, the
    output times m the one with its out projection times m (no biases there); the Mamba-2-only switches on another
    kind of layer are refused at construction."""
    mdef, params = _model("granite4_h")
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 64, (2, 10)), jnp.int32)
    lin = mdef.cfg.linear
    scaled = create(dataclasses.replace(mdef.cfg, linear=dataclasses.replace(lin, in_multiplier=1.7,
                                                                             out_multiplier=0.6)), abstract=True)[0]
    folded = jax.tree.map(lambda x: x, params)
    mix = folded["linear_layers"]["attn"]
    for k in ("z", "x", "B", "C", "dt"):
        mix[k] = mix[k] * 1.7
    mix["o"] = mix["o"] * 0.6
    want = np.asarray(mdef.bind(folded)(ids))
    got = np.asarray(scaled.bind(params)(ids))
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.abs(got - np.asarray(mdef.bind(params)(ids))).max() > 1e-3
    conv = FAMILY_CONFIGS["lfm2"]
    for kw in ({"norm": "none"}, {"in_multiplier": 2.0}, {"multipliers": (2.0, 1.0, 1.0, 1.0, 1.0)}):
        with pytest.raises(ValueError, match=f"linear.{next(iter(kw))}: Mamba-2 layers only"):
            create(dataclasses.replace(conv, linear=dataclasses.replace(conv.linear, **kw)), abstract=True)
