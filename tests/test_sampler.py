import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import compared_env, prompts, tiny_model
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


@pytest.mark.parametrize("greedy", [False, True])
def test_sampler_and_trainer_score_equal_logits_to_the_same_number(greedy):
    """The sampler's log-prob of a drawn token is the trainer's log-prob of it from the same logits, bit for
    bit, although the sampler scores [B, V] logits and the trainer [B, T, V] ones (one normaliser, summed in
    one order: ``sampling.log_normaliser``)."""
    from reasoning_rl.algorithms.logprobs import logprobs_entropy

    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(6, 8, 5003)) * 4, jnp.float32)
    keys = row_keys(jax.random.key(0), jnp.arange(6), jnp.zeros(6, jnp.int32))
    for t in range(8):
        tok, lp = jax.jit(lambda k, x: select(k, x, temperature=0.7, top_k=0, top_p=1.0, greedy=greedy))(
            keys, logits[:, t])
        ref = jax.jit(lambda x, y: logprobs_entropy(x, y, 0.7)[0])(logits, jnp.zeros((6, 8), jnp.int32).at[:, t].set(tok))
        np.testing.assert_array_equal(np.asarray(lp), np.asarray(ref[:, t]))


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


@pytest.mark.parametrize("loop", [{}, {"slots": 8, "refill_min": 2}, {"page_size": 4}])
def test_stop_strings_end_a_row_at_the_token_that_completes_one(loop):
    """With a stop table (strings over the tokens' texts) each row is the unstopped row's prefix up to and
    including the first token at which its text contains a stop string, whichever tokens spell it; rows
    with none are unchanged. Plain loop, refill and paged cache."""
    from reasoning_rl.rollout import stops

    mdef, params = tiny_model()
    texts = [chr(ord("a") + i % 13) * (1 + i % 3) for i in range(40)]  # "a", "bb", "ccc", "d", ...
    table = stops.build(["abb", "ccc", "gh"], texts)
    pt, pv = S.left_pad(prompts(6), 0)
    kw = dict(max_new_tokens=24, group_size=3, stop_ids=(3,), rng_seed=5, **loop)
    free = jax.device_get(S.generate(mdef, params, pt, pv, **kw))
    out = jax.device_get(S.generate(mdef, params, pt, pv, stop_table=table, **kw))
    ended = 0
    for r in range(len(free.lengths)):
        row, text, end = free.tokens[r, :free.lengths[r]], "", int(free.lengths[r])
        for t, tok in enumerate(row):
            text += texts[tok]
            if any(x in text for x in table.strings):
                end = t + 1
                break
        ended += end < free.lengths[r]
        assert out.lengths[r] == end
        np.testing.assert_array_equal(out.tokens[r, :end], row[:end])
        np.testing.assert_array_equal(out.logprobs[r, :end], free.logprobs[r, :end])
        assert not out.mask[r, end:].any()
    assert ended >= 3
    np.testing.assert_array_equal(stops.hits(table, out.tokens, out.lengths),
                                  [any(x in "".join(texts[t] for t in out.tokens[r, :out.lengths[r]])
                                       for x in table.strings) for r in range(len(out.lengths))])


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


@pytest.mark.parametrize("vocab,top_k,top_p,min_p", [(37, 0, 1.0, 0.0), (300, 0, 1.0, 0.0), (300, 5, 1.0, 0.0),
                                                     (300, 0, 0.6, 0.0), (300, 0, 1.0, 0.08)])
def test_token_draw_follows_the_filtered_softmax(vocab, top_k, top_p, min_p):
    """The inverse-CDF draw samples softmax(filtered logits): empirical frequencies over 40k draws match, and
    tokens outside top-k / top-p / min-p are never drawn; the log-prob is the unfiltered one (what the trainer
    uses)."""
    rng = np.random.default_rng(vocab + top_k)
    logits = jnp.asarray(rng.standard_normal((1, vocab)) * 2.0, jnp.float32)
    n = 40_000
    keys = row_keys(jax.random.key(7), jnp.zeros((n,), jnp.int32), jnp.arange(n))
    tok, lp = jax.jit(lambda k, l: select(k, l, temperature=0.8, top_k=top_k, top_p=top_p, greedy=False,
                                          min_p=min_p))(keys, jnp.repeat(logits, n, 0))
    want = np.asarray(jax.nn.softmax(filter_logits(logits / 0.8, top_k, top_p, min_p)))[0]
    assert (want > 0).sum() > 1
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
    assert S._compiled(mdef, sp, None)._cache_size() == 1


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


def test_cache_grows_to_each_window_keeping_its_slots():
    """The plain loop's cache holds the current window's slots exactly: growing keeps every written slot and
    adds empty ones; a paged cache or a smaller size is refused by name."""
    from reasoning_rl.models import KVCache

    mdef, _ = tiny_model()
    c = KVCache.empty(mdef.cfg, 3, 5)
    c = KVCache(c.k + 1.0, c.v + 2.0, c.valid.at[:, :4].set(True))
    g = c.grow(9)
    assert g.size == 9 and g.k.shape[3] == g.v.shape[3] == 9
    np.testing.assert_array_equal(g.k[:, :, :, :5], c.k)
    np.testing.assert_array_equal(g.v[:, :, :, :5], c.v)
    assert not np.asarray(g.k[:, :, :, 5:]).any() and not np.asarray(g.valid[:, 5:]).any()
    np.testing.assert_array_equal(g.valid[:, :5], c.valid)
    with pytest.raises(ValueError, match="grow"):
        c.grow(4)
    with pytest.raises(ValueError, match="grow"):
        KVCache(c.k, c.v, c.valid, jnp.zeros((3, 2), jnp.int32)).grow(9)


PER_DEVICE_PROBE = r"""
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 4)
import numpy as np
sys.path.insert(0, sys.argv[1])
from helpers import prompts, tiny_model
from reasoning_rl import sharding as shd
from reasoning_rl.models import LinearAttnConfig, MoEConfig
from reasoning_rl.rollout.sampler import SamplingParams, left_pad, sample_impl

dense = tiny_model(seed=1)
moe = tiny_model(seed=2, moe=MoEConfig(n_experts=4, top_k=2, ffn_dim=32))
# Gated DeltaNet and gated attention layers (Qwen3.5): recurrent states in the per-device and sharded caches
hybrid = tiny_model(seed=3, n_layers=2, attn_gate=True,
                    linear=LinearAttnConfig(layers=(0,), k_heads=2, v_heads=4, k_dim=8, v_dim=8))
pt0, pv0 = left_pad(prompts(8, seed=5), 0)
cases = {
    "plain": (dense, SamplingParams(20, 1.0, 0, 1.0, False, (5, 6, 7), 0, 3)),
    "refill": (dense, SamplingParams(20, 1.0, 0, 1.0, False, (5, 6, 7), 0, 3, slots=8)),
    "paged": (dense, SamplingParams(20, 1.0, 0, 1.0, False, (5, 6, 7), 0, 3, page_size=4)),
    "moe_routes": (moe, SamplingParams(12, 1.0, 0, 1.0, False, (5,), 0, 2, record_routes=True)),
    "hybrid": (hybrid, SamplingParams(20, 1.0, 0, 1.0, False, (5, 6, 7), 0, 3)),
}
res = {}
for name, ((mdef, params0), sp) in cases.items():
    outs, loops = {}, {}
    # 6 prompts do not split over 4 devices, and a tensor axis needs collectives: one global program for both
    for axes, prompts_n in [((("data", 1),), 8), ((("data", 4),), 8), ((("data", 4),), 6),
                            ((("data", 2), ("tensor", 2)), 8)]:
        n = 1 if axes[0][1] == 1 else 4
        mesh = shd.make_mesh(dict(axes), jax.devices()[:n])
        ctx = shd.context(mesh)
        params = jax.device_put(params0, shd.replicated(mesh))
        pt = jax.device_put(pt0[:prompts_n], shd.batch_sharding(ctx, pt0[:prompts_n].shape))
        pv = jax.device_put(pv0[:prompts_n], shd.batch_sharding(ctx, pv0[:prompts_n].shape))

        def fn(*a, sp=sp, mdef=mdef, ctx=ctx):
            with shd.use(ctx):
                return sample_impl(mdef, sp, *a)

        f = jax.jit(fn)
        hlo = f.lower(params, pt, pv, jax.random.key(7), 0).compile().as_text()
        loops[(axes, prompts_n)] = "all-reduce" in hlo.split("ENTRY")[0]  # a collective inside a loop body
        outs[(axes, prompts_n)] = jax.device_get(f(params, pt, pv, jax.random.key(7), 0))
    one, four = outs[((("data", 1),), 8)], outs[((("data", 4),), 8)]
    odd, tensor = outs[((("data", 4),), 6)], outs[((("data", 2), ("tensor", 2)), 8)]
    rows6 = 6 * sp.group_size
    res[name] = {
        "same": bool(all((o.tokens == one.tokens).all() and (o.mask == one.mask).all()
                         and (o.lengths == one.lengths).all() for o in (four, tensor))),
        "same_odd": bool((one.tokens[:rows6] == odd.tokens).all() and (one.lengths[:rows6] == odd.lengths).all()),
        "lp_diff": max(float(np.abs(one.logprobs - o.logprobs).max()) for o in (four, tensor)),
        "routes": None if one.routes is None else bool((one.routes == four.routes).all()),
        "slot_steps": [int(one.slot_steps), int(four.slot_steps)],
        "collective_in_loop": [loops[((("data", 4),), 8)], loops[((("data", 2), ("tensor", 2)), 8)]],
        "stopped_early": int((one.lengths < sp.max_new_tokens).sum()),
    }
print(json.dumps(res))
"""


def test_data_parallel_sampling_runs_a_loop_per_device_with_the_same_completions(tmp_path):
    """On a data-only mesh each device decodes its prompts in its own loop (no collective inside the decode
    loop); plain, refill, paged, MoE routing-replay and linear-attention (recurrent state) sampling return what one
    device returns. A batch that
    does not split over the devices, or a mesh with a tensor axis, falls back to one global program (whose
    loop holds cross-device reductions) with the same completions."""
    env = compared_env()  # the child asks for its 4 devices itself
    p = subprocess.run([sys.executable, "-c", PER_DEVICE_PROBE, str(Path(__file__).parent)], capture_output=True,
                       text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    for name, r in res.items():
        assert r["same"] and r["same_odd"], name
        assert r["lp_diff"] < 1e-5, name
        assert r["routes"] in (None, True), name
        assert r["collective_in_loop"] == [False, True], name
        assert r["stopped_early"] > 0, name  # the stop tokens end rows early, so per-device exits are exercised
        # the per-device loops stop independently: never more slot steps than one global loop
        assert 0 < r["slot_steps"][1] <= r["slot_steps"][0], name
    assert res["moe_routes"]["routes"] is True


@pytest.mark.parametrize("family", ["gemma3", "qwen3_moe_dense", "mla", "pallas"])
def test_decode_with_a_cache_buffer_per_layer_equals_the_layer_scan(family):
    """``decode_layers: unroll`` (the cache split into one buffer per layer, layers unrolled: what accelerators
    run by default) samples the same tokens with the same log-probs as the scan over the stacked cache, for
    the layer kinds that take it differently (sliding/full schedules, MoE stacks between dense layers, MLA's
    latent cache, the Pallas decode kernel), across growing windows, and its log-probs equal the trainer's."""
    import dataclasses

    from reasoning_rl.models import create
    from test_hf_io import FAMILY_CONFIGS as CONFIGS

    if family == "pallas":
        mdef, params = tiny_model(seed=4, n_layers=3, attention_impl="pallas")
        vocab = 40
    elif family == "mla":  # DeepSeek-V3's attention (latent cache) over dense layers
        mdef, params = create(dataclasses.replace(CONFIGS["deepseek_v3"], moe=None), 0)
        vocab = mdef.cfg.vocab_size
    else:
        mdef, params = create(CONFIGS[family], 0)
        vocab = mdef.cfg.vocab_size
    pt, pv = S.left_pad(prompts(3, vocab=vocab, seed=4), 0)
    sp = S.SamplingParams(10, 1.0, 0, 1.0, False, (5,), 0, 2, windows=2)
    outs = {}
    for mode in ("scan", "unroll"):
        m = dataclasses.replace(mdef, cfg=dataclasses.replace(mdef.cfg, decode_layers=mode))
        outs[mode] = jax.device_get(S.sample(m, params, pt, pv, jax.random.key(1), sp))
    assert S.split_decode(dataclasses.replace(mdef.cfg, decode_layers="unroll"))
    assert not S.split_decode(mdef.cfg)  # auto: the scan on CPU
    np.testing.assert_array_equal(outs["unroll"].tokens, outs["scan"].tokens)
    np.testing.assert_allclose(outs["unroll"].logprobs, outs["scan"].logprobs, atol=2e-6)
    lp = trainer_logprobs(mdef, params, pt, pv, outs["unroll"], 2, 1.0)
    assert np.abs(np.where(outs["unroll"].mask, lp - outs["unroll"].logprobs, 0.0)).max() < 1e-5


def _loop_slices_of_stacks(jaxpr, n_layers: int, inside: bool = False) -> list:
    """Slices of [n_layers, ...] arrays (stacked parameters or caches) taken inside a while loop's body."""
    out = []
    for e in jaxpr.eqns:
        if inside and e.primitive.name in ("slice", "dynamic_slice", "squeeze", "gather"):
            sh = getattr(e.invars[0].aval, "shape", ())
            if len(sh) >= 3 and sh[0] == n_layers:
                out.append((e.primitive.name, sh))
        for v in e.params.values():
            for j in v if isinstance(v, (list, tuple)) else [v]:
                sub = getattr(j, "jaxpr", j)
                if hasattr(sub, "eqns"):
                    out += _loop_slices_of_stacks(sub, n_layers, inside or e.primitive.name == "while")
    return out


def test_split_decode_loop_reads_layer_weights_and_cache_in_place():
    """With ``decode_layers: unroll`` the decode loop takes no slice of a stacked parameter or cache: each
    layer's weights are sliced once before the loop (``Transformer.layer_states``) and each layer has its
    own cache buffer; the layer scan takes them per step (what copies them out on a GPU)."""
    import dataclasses

    mdef, params = tiny_model(n_layers=3)
    pt, pv = S.left_pad(prompts(3), 0)
    sp = S.SamplingParams(9, 1.0, 0, 1.0, False, (5,), 0, 2, windows=2)
    found = {}
    for mode in ("scan", "unroll"):
        m = dataclasses.replace(mdef, cfg=dataclasses.replace(mdef.cfg, decode_layers=mode))
        jp = jax.make_jaxpr(lambda p, m=m: S._sample_rows(m, sp, p, pt, pv, jax.random.key(0)))(params)
        found[mode] = _loop_slices_of_stacks(jp.jaxpr, 3)
    assert found["unroll"] == []
    # the check itself sees slices: the same unrolled loop without the hoisted weights takes them per step
    from reasoning_rl.models import transformer as T

    m = dataclasses.replace(mdef, cfg=dataclasses.replace(mdef.cfg, decode_layers="unroll"))
    orig = T.Transformer.layer_states
    try:
        T.Transformer.layer_states = lambda self: None
        jp = jax.make_jaxpr(lambda p: S._sample_rows(m, sp, p, pt, pv, jax.random.key(0)))(params)
    finally:
        T.Transformer.layer_states = orig
    assert len(_loop_slices_of_stacks(jp.jaxpr, 3)) >= 3 * 4


def test_plan_counts_the_split_decode_copy_of_the_layer_weights():
    """``reasoning-rl plan`` adds the per-layer weight copy a split decode holds while it samples (none for
    the scan, the default on CPU)."""
    from reasoning_rl import config as config_lib
    from reasoning_rl.plan import plan

    raw = {"model": {"d_model": 64, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 96, "vocab_size": 50},
           "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 16},
           "stages": [{"name": "grpo", "kind": "grpo", "steps": 1}]}
    scan = plan(config_lib.from_dict(raw), 1, 16)
    unroll = plan(config_lib.from_dict({**raw, "model": {**raw["model"], "decode_layers": "unroll"}}), 1, 16)
    assert "decode_layer_weights" not in scan["per_device_bytes"]
    layer = unroll["per_device_bytes"]["decode_layer_weights"]
    embed_and_norm = (50 * 64 + 64) * 4  # tied embedding and the final norm: not per layer
    assert layer == unroll["per_device_bytes"]["params"] - embed_and_norm
    assert unroll["per_device_total_bytes"] - scan["per_device_total_bytes"] == layer
    bf16 = plan(config_lib.from_dict({**raw, "model": {**raw["model"], "decode_layers": "unroll",
                                                      "dtype": "bfloat16"}}), 1, 16)
    assert bf16["per_device_bytes"]["decode_layer_weights"] == layer // 2  # held in the compute dtype


@pytest.mark.parametrize("family", ["qwen3_moe_dense", "gpt_oss"])
def test_split_decode_reads_float32_master_weights_cast_once(family):
    """Under bf16 compute with float32 parameters, the split decode stores the projections cast to bf16 once
    (``COMPUTE_CAST``) and keeps routers, sinks and norm scales in float32: it samples exactly what the same
    loop converting the weights at every step samples."""
    import dataclasses

    from reasoning_rl.models import create
    from reasoning_rl.models import transformer as T
    from test_hf_io import FAMILY_CONFIGS as CONFIGS

    cfg = dataclasses.replace(CONFIGS[family], dtype="bfloat16", param_dtype="float32", decode_layers="unroll")
    mdef, params = create(cfg, 0)
    rng = np.random.default_rng(0)  # norm scales off 1.0, where float32 and bf16 differ
    params = jax.tree_util.tree_map_with_path(
        lambda p, a: a * (1 + 0.1 * rng.standard_normal(a.shape)).astype(a.dtype)
        if "scale" in jax.tree_util.keystr(p) else a, params)
    states = mdef.bind(params).layer_states()
    leaves = {jax.tree_util.keystr(p): a.dtype for p, a in jax.tree_util.tree_leaves_with_path(states)}
    assert any("['q']" in k and d == jnp.bfloat16 for k, d in leaves.items())
    assert all(d == jnp.float32 for k, d in leaves.items() if any(n in k for n in ("scale", "router", "sinks")))
    pt, pv = S.left_pad(prompts(3, vocab=cfg.vocab_size, seed=6), 0)
    sp = S.SamplingParams(10, 1.0, 0, 1.0, False, (5,), 0, 2)

    def run(names):  # a fresh trace with COMPUTE_CAST = names
        orig = T.COMPUTE_CAST
        try:
            T.COMPUTE_CAST = names
            return jax.device_get(jax.jit(lambda p: S._sample_rows(mdef, sp, p, pt, pv, jax.random.key(3)))(params))
        finally:
            T.COMPUTE_CAST = orig

    cast, plain = run(T.COMPUTE_CAST), run(frozenset())
    np.testing.assert_array_equal(cast.tokens, plain.tokens)
    np.testing.assert_array_equal(cast.logprobs, plain.logprobs)
    wrong = run(T.COMPUTE_CAST | {"scale"})  # norm scales are used in float32: casting them changes the model
    assert np.abs(wrong.logprobs - plain.logprobs).max() > 0


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_refill_with_a_cache_buffer_per_layer_equals_the_layer_scan(impl):
    """In-flight refill decodes with the split cache too (slots take their rows' prompt K/V layer by layer):
    the same tokens and log-probs as the stacked cache, with the XLA path and the Pallas kernel."""
    import dataclasses

    mdef, params = tiny_model(seed=8, n_layers=3, attention_impl=impl)
    pt, pv = S.left_pad(prompts(5, seed=8), 0)
    sp = S.SamplingParams(12, 1.0, 0, 1.0, False, (5, 6), 0, 2, slots=4)
    outs = {}
    for mode in ("scan", "unroll"):
        m = dataclasses.replace(mdef, cfg=dataclasses.replace(mdef.cfg, decode_layers=mode))
        outs[mode] = jax.device_get(jax.jit(lambda p, m=m: S._sample_rows(m, sp, p, pt, pv, jax.random.key(4)))(params))
    assert (outs["scan"].lengths < 12).any()  # rows stop early: slots are refilled
    np.testing.assert_array_equal(outs["unroll"].tokens, outs["scan"].tokens)
    np.testing.assert_array_equal(outs["unroll"].lengths, outs["scan"].lengths)
    np.testing.assert_allclose(outs["unroll"].logprobs, outs["scan"].logprobs, atol=2e-6)
