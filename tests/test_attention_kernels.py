"""Kernel attention paths against the XLA reference, on CPU: the Pallas decode kernel in the Pallas
interpreter, the cuDNN call site through ``jax.nn.dot_product_attention(implementation="xla")``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import prompts, tiny_model
from reasoning_rl.models import TransformerConfig
from reasoning_rl.models.layers import kernels
from reasoning_rl.models.layers.attention import (
    _decode_attention,
    _dot_attention,
    attention_mask,
    prefix_attention,
)

from reasoning_rl import config as C
from reasoning_rl.rollout import sampler as S

KEYS = jax.random.split(jax.random.key(0), 8)


def rnd(i, shape, dtype=jnp.float32):
    return jax.random.normal(KEYS[i], shape, jnp.float32).astype(dtype)


def left_valid(pads, length):
    return jnp.asarray(np.arange(length)[None] >= np.asarray(pads)[:, None])


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_pallas_decode_equals_decode_attention(dtype, tol):
    """Left padding, a hole inside a row's range, a sliding window, GQA (3 query heads a KV head) and a key
    count the split-k tiling has to pad (40 slots: a bucketed window's view)."""
    b, h, kv, d, s = 3, 6, 2, 16, 40
    q, k, v = rnd(0, (b, 1, h, d), dtype), rnd(1, (b, kv, s, d), dtype), rnd(2, (b, kv, s, d), dtype)
    valid = left_valid([0, 5, 9], s).at[2, 20].set(False)
    index = jnp.array([39, 30, 25])
    for window in (0, 12):
        mask = attention_mask(valid, index[:, None], jnp.arange(s), window)
        out = jax.jit(lambda *a: kernels.pallas_decode(*a, d**-0.5, interpret=True))(q, k, v, mask)
        ref = jax.jit(lambda *a: _decode_attention(*a, d**-0.5, None))(q, k, v, mask)
        assert out.dtype == ref.dtype
        err = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref.astype(jnp.float32))))
        assert err < tol, (window, err)


def test_split_plan_tiles_with_power_of_two_splits():
    for s in (1, 16, 40, 136, 288, 1000, 4096):
        sp, n, block = kernels.split_plan(s)
        split = sp // n
        assert sp >= s and sp % n == 0 and split & (split - 1) == 0 and split >= 16 and split % block == 0
    assert kernels.split_plan(288)[0] == 288  # a 128-token prompt with a 160-token budget needs no pad


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_cudnn_call_site_equals_dot_attention(dtype, tol):
    """Training layout (causal, left padding, sliding window) and prefill's heads-first cache layout."""
    b, t, h, kv, d = 3, 12, 4, 2, 16
    q, k, v = rnd(0, (b, t, h, d), dtype), rnd(1, (b, t, kv, d), dtype), rnd(2, (b, t, kv, d), dtype)
    valid = left_valid([0, 3, 7], t)
    rows = valid[:, :, None, None]
    for window in (0, 5):
        mask = attention_mask(valid, jnp.arange(t), jnp.arange(t), window)
        ref = _dot_attention(q, k, v, mask, 0.3)
        for heads_first in (False, True):
            kk, vv = (jnp.swapaxes(a, 1, 2) for a in (k, v)) if heads_first else (k, v)
            out = kernels.cudnn_attention(q, kk, vv, mask, 0.3, heads_first=heads_first, emulated=True)
            err = jnp.abs(out.astype(jnp.float32) - ref.astype(jnp.float32))
            assert float(jnp.max(jnp.where(rows, err, 0))) < tol, (window, heads_first)


def test_cudnn_call_site_equals_prefix_attention():
    n, r, t, p, h, kv, d = 2, 2, 6, 8, 4, 2, 16
    q, k, v = rnd(0, (n * r, t, h, d)), rnd(1, (n * r, t, kv, d)), rnd(2, (n * r, t, kv, d))
    kp, vp = rnd(3, (n, kv, p, d)), rnd(4, (n, kv, p, d))
    key_valid = jnp.concatenate([jnp.repeat(left_valid([0, 3], p), r, 0), left_valid([0, 0, 0, 0], t)], 1)
    key_valid = key_valid.at[3, p + t - 1].set(False)  # a pad at a row's end
    mask = attention_mask(key_valid, p + jnp.arange(t), jnp.arange(p + t))
    out = jax.jit(lambda *a: kernels.cudnn_prefix_attention(*a, 0.25, emulated=True))(q, k, v, kp, vp, mask)
    ref = jax.jit(lambda *a: prefix_attention(*a, 0.25))(q, k, v, kp, vp, mask)
    assert float(jnp.max(jnp.abs(out - ref))) < 1e-5


def test_config_option_validates():
    assert C.load("configs/quickstart.yaml").model.attention_impl == "auto"
    assert C.load("configs/quickstart.yaml", ["model.attention_impl=pallas"]).model.attention_impl == "pallas"
    with pytest.raises(C.ConfigError) as e:
        C.load("configs/quickstart.yaml", ["model.attention_impl=flash"])
    assert str(e.value).startswith("model.attention_impl:") and "\n" not in str(e.value)


def test_routes_cpu_auto_is_xla_gpu_auto_picks_kernels_and_falls_back():
    cfg = TransformerConfig(vocab_size=64, d_model=64, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=16,
                            ffn_dim=64, dtype="bfloat16")
    assert jax.default_backend() == "cpu"
    assert {v["path"] for v in kernels.plan(cfg).values()} == {"xla"}
    gpu = kernels.plan(cfg, platform="gpu")
    assert [gpu[k]["path"] for k in kernels.KINDS] == ["cudnn", "cudnn", "cudnn", "pallas", "pallas"]
    assert not any(v["emulated"] for v in gpu.values())
    capped = kernels.plan(dataclasses_replace(cfg, attn_softcap=30.0), platform="gpu")
    assert {v["path"] for v in capped.values()} == {"xla"} and capped["train"]["reason"] == "attention softcap"
    f32 = kernels.plan(dataclasses_replace(cfg, dtype="float32"), platform="gpu")
    assert f32["train"]["path"] == "xla" and f32["decode"]["path"] == "pallas"
    assert kernels.route("xla", "decode", dtype=jnp.bfloat16, head_dim=16, platform="gpu").path == "xla"
    odd = kernels.route("auto", "decode", dtype=jnp.bfloat16, head_dim=80, platform="gpu")
    assert odd.path == "xla" and "power-of-two" in odd.reason
    tp = kernels.route("auto", "decode", dtype=jnp.bfloat16, head_dim=16, platform="gpu", sharded=True)
    assert tp.path == "xla" and "mesh" in tp.reason
    # an explicit kernel on CPU runs its call site emulated
    cpu = kernels.plan(dataclasses_replace(cfg, attention_impl="pallas"))
    assert cpu["decode"] == {"path": "pallas", "emulated": True, "reason": ""} and cpu["train"]["path"] == "xla"


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("page_size,slots", [(0, 0), (8, 4)])
def test_sampler_with_pallas_decode_equals_xla(page_size, slots):
    """A tiny model's sampler: Pallas decode (interpreted) against XLA, the plain loop on a contiguous cache
    and in-flight refill (per-row cache slots) on a paged one; and the cuDNN call site for the prefill."""
    outs = {}
    for impl in ("xla", "pallas", "cudnn"):
        mdef, params = tiny_model(head_dim=16, attention_impl=impl)
        routes = kernels.plan(mdef.cfg)
        assert routes["decode"]["path"] == routes["paged_decode"]["path"] == ("pallas" if impl == "pallas" else "xla")
        assert routes["prefill"]["path"] == ("cudnn" if impl == "cudnn" else "xla")
        pt, pv = S.left_pad(prompts(3), 0)
        outs[impl] = jax.device_get(S.generate(mdef, params, pt, pv, max_new_tokens=10, group_size=2,
                                               rng_seed=1, page_size=page_size, slots=slots))
    ref = outs["xla"]
    for impl in ("pallas", "cudnn"):
        np.testing.assert_array_equal(outs[impl].tokens, ref.tokens)
        np.testing.assert_array_equal(outs[impl].mask, ref.mask)
        assert np.abs(outs[impl].logprobs - ref.logprobs).max() < 1e-5, impl


def test_model_forward_with_cudnn_call_site_equals_xla():
    """Training forward (causal within the sequence, left padding) through the cuDNN call site."""
    pt, pv = S.left_pad(prompts(3, lo=5, hi=14), 0)
    hs = []
    for impl in ("xla", "cudnn"):
        mdef, params = tiny_model(head_dim=16, attention_impl=impl)
        model = mdef.bind(params)
        from reasoning_rl.models import positions_from_valid

        h, _ = model.hidden(jnp.asarray(pt), positions_from_valid(jnp.asarray(pv)), jnp.asarray(pv))
        hs.append(np.where(pv[..., None], np.asarray(h), 0))
    assert np.abs(hs[0] - hs[1]).max() < 1e-5


def test_self_check_runs_every_path_at_a_tiny_shape():
    cfg = TransformerConfig(vocab_size=64, d_model=64, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=16,
                            ffn_dim=64, dtype="bfloat16")
    out = kernels.self_check(cfg, batch=2, seq=16, decode_batch=2, decode_len=40, dtype="float32", reps=1)
    for name in ("train", "prefix", "decode"):
        assert "error" not in out[name], out[name]
        assert out[name]["max_abs_diff"] < 1e-5, (name, out[name])
        assert out[name]["kernel_emulated"] is True and out[name]["route"] == "xla"  # auto on CPU
    assert out["train"]["grad_max_abs_diff"] < 1e-4
    assert out["decode"]["kernel_s"] > 0 and out["train"]["kernel_fwd_bwd_s"] > 0
    assert out["plan"]["decode"]["path"] == "xla"  # auto on CPU


def test_auto_uses_a_kernel_only_after_it_passes_its_probe(monkeypatch):
    """On a GPU, ``auto`` runs each kernel once against the XLA path before choosing it; one that cannot be
    built or disagrees leaves the call on XLA (with the reason) instead of failing the run. Here the probe's
    call sites run emulated (cuDNN's through the xla implementation, Pallas in the interpreter)."""
    kernels.probe.cache_clear()
    seen = []

    @jax.jit
    def traced(x):  # routes are decided while a model is traced: the probe must run there, not be staged
        seen.extend([kernels.probe("cudnn", emulated=True), kernels.probe("pallas", emulated=True)])
        return x

    traced(jnp.zeros(()))
    assert seen == ["", ""]
    ok = kernels.Route("pallas")
    monkeypatch.setattr(kernels, "probe", lambda path, emulated=False: "")
    assert kernels._probed(ok, "auto", None) == ok
    monkeypatch.setattr(kernels, "probe", lambda path, emulated=False: "RuntimeError: no PTX for sm_90")
    r = kernels._probed(ok, "auto", None)
    assert r.path == "xla" and "no PTX for sm_90" in r.reason
    assert kernels._probed(ok, "pallas", None) == ok  # asked for by name: never replaced
    assert kernels._probed(ok, "auto", "gpu") == ok  # planning for another platform: nothing runs
