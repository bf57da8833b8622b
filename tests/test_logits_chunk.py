"""Log-probs in sequence chunks by default once a micro-batch's logits pass the budget: the same values and
gradients as whole logits, and chunks sized to the budget."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from helpers import tiny_model

from reasoning_rl import sharding as shd
from reasoning_rl.algorithms.logprobs import (
    LOGITS_BUDGET,
    MIN_CHUNK,
    auto_chunk,
    logits_bytes,
    target_logprobs,
)


def test_auto_chunk_fits_the_budget_and_is_off_below_it():
    assert auto_chunk(16, 64, 48) == 0  # a small vocabulary: whole logits
    for rows, n, vocab in ((16, 256, 49152), (4, 520, 8192), (64, 1024, 151936), (2, 8192, 151936)):
        c = auto_chunk(rows, n, vocab)
        assert logits_bytes(rows, n, vocab) > LOGITS_BUDGET and 0 < c < n and c % 8 == 0
        assert rows * c * vocab * 4 <= LOGITS_BUDGET or c == MIN_CHUNK
        assert c + 8 >= n or rows * (c + 8) * vocab * 4 > LOGITS_BUDGET or -(-n // (c + 8)) == -(-n // c)
    # rows split over 4 data-parallel devices: each holds a quarter of the logits
    ctx = shd.context(jax.sharding.AbstractMesh((4, 1, 1, 1), shd.AXES))
    assert logits_bytes(16, 256, 49152, ctx) * 4 == logits_bytes(16, 256, 49152)
    assert auto_chunk(4, 256, 49152, ctx) == 0 < auto_chunk(4, 256, 49152)


def _batch(vocab: int, rows: int, group: int, tp: int, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    prompt = np.repeat(rng.integers(1, vocab, (rows // group, tp)), group, axis=0)
    toks = np.concatenate([prompt, rng.integers(1, vocab, (rows, n))], axis=1).astype(np.int32)
    valid = np.ones(toks.shape, bool)
    valid[0, :3] = False  # a left-padded prompt
    mask = np.ones((rows, n), bool)
    mask[1, n // 2:] = False  # a row that stopped early
    valid[:, tp:] = mask
    lp = rng.normal(-9.0, 0.5, (rows, n)).astype(np.float32)
    return {"tokens": toks, "valid": valid, "mask": mask, "old_logp": lp, "sampler_logp": lp,
            "adv": rng.normal(size=rows).astype(np.float32)}


def test_auto_chunked_logprobs_and_gradients_equal_whole_logits():
    vocab, rows, group, tp, n = 8192, 4, 2, 8, 520  # 68 MB of float32 logits: past the 64 MiB budget
    assert auto_chunk(rows, n, vocab) > 0
    mdef, params = tiny_model(vocab=vocab)
    b = _batch(vocab, rows, group, tp, n)
    w = jnp.asarray(b["adv"])[:, None] * jnp.asarray(b["mask"])

    def run(chunk):
        def f(p):
            def loss(p):
                lp, ent = target_logprobs(mdef.bind(p), b["tokens"], b["valid"], n, 0.9, chunk, with_entropy=True,
                                          group=group)
                return jnp.sum(lp * w), (lp, ent)

            return jax.grad(loss, has_aux=True)(p)

        return jax.device_get(jax.jit(f)(params))

    (g0, (lp0, ent0)), (g1, (lp1, ent1)) = run(0), run(None)
    np.testing.assert_allclose(lp1, lp0, atol=1e-6, rtol=0)
    np.testing.assert_allclose(ent1, ent0, atol=0, rtol=1e-6)  # entropies ~9: 1e-6 is a float32 ulp there
    for x, y in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        assert np.abs(x - y).max() <= 1e-5 * (np.abs(x).max() + 1e-12)


def test_plan_reports_the_logits_share_and_the_default_shrinks_it(tmp_path):
    import json

    from reasoning_rl import config as config_lib
    from reasoning_rl.models import TransformerConfig
    from reasoning_rl.models.hf import hf_config
    from reasoning_rl.plan import format_plan, plan

    d = tmp_path / "smollm-shape"  # a config-only directory is enough to plan
    d.mkdir()
    shape = TransformerConfig(family="llama", vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                              head_dim=64, ffn_dim=1536, tie_embeddings=True)
    (d / "config.json").write_text(json.dumps(hf_config(shape)))
    raw = {"model": {"path": str(d), "remat": "full"}, "tokenizer": {"kind": "hf"},
           "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 256},
           "stages": [{"name": "grpo", "kind": "grpo", "steps": 1}]}
    auto = plan(config_lib.from_dict(raw), 1, 192)
    whole = plan(config_lib.from_dict({**raw, "model": {**raw["model"], "logits_chunk": 0}}), 1, 192)
    assert auto["logits"]["auto"] and auto["logits"]["chunk"] == auto_chunk(16, 256, 49152) > 0
    assert whole["logits"]["chunk"] == 0 and whole["logits"]["bytes"] == 3 * 16 * 256 * 49152 * 4
    assert auto["logits"]["share_of_total"] < 0.1 < whole["logits"]["share_of_total"]
    assert whole["per_device_total_bytes"] - auto["per_device_total_bytes"] == whole["logits"]["bytes"] - auto[
        "logits"]["bytes"]
    assert "logits: " in format_plan(auto) and "in chunks of" in format_plan(auto)
    nested = plan(config_lib.from_dict({**raw, "model": {**raw["model"], "remat": "nested"}}), 1, 192)
    # 30 layers in groups of 5: 6 group inputs + 5 layer inputs kept instead of 30 (16 x 448 x 576 float32 each)
    per_layer = 16 * (192 + 256) * 576 * 4
    assert auto["per_device_bytes"]["activations_estimate"] - nested["per_device_bytes"]["activations_estimate"] == (
        30 - 11) * per_layer
    assert "remat nested" in format_plan(nested)


def test_chunked_logprobs_equal_whole_bitwise_at_real_magnitudes():
    """|log p| ~ 9 (an 8k vocabulary) over 4 x 1024 positions (128 MiB of logits): XLA:CPU summed these rows
    of whole logits with another kernel than a chunk's, 1e-6 apart; the fixed-order softmax sums make every
    chunking give the same numbers."""
    vocab, rows, group, tp, n = 8192, 4, 2, 8, 1024
    mdef, params = tiny_model(vocab=vocab)
    b = _batch(vocab, rows, group, tp, n)
    out = {}
    for chunk in (0, None, 200):  # whole, the default (2 chunks of 512) and a chunk that needs padding
        f = jax.jit(lambda p, t, v, c=chunk: target_logprobs(mdef.bind(p), t, v, n, 0.9, c, group=group))
        out[chunk] = np.asarray(f(params, b["tokens"], b["valid"]))
    assert auto_chunk(rows, n, vocab) == 512 and np.abs(out[0]).mean() > 8
    for chunk in (None, 200):
        assert np.abs(out[chunk] - out[0]).max() <= 1e-6
        np.testing.assert_array_equal(out[chunk], out[0])
