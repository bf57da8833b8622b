"""Sharded loading on 8 CPU devices gives the unsharded model's logits, with every tensor placed straight into
the sharding its logical axes ask for. Runs in a subprocess because the device count is fixed when jax starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from helpers import compared_env
from test_hf_io import _save_random

CHILD = r"""
import json, sys
import jax, numpy as np
from jax.sharding import AxisType
from reasoning_rl.models import load_pretrained

assert jax.device_count() == 8, jax.devices()
out = {}
for name, path in json.loads(sys.argv[1]).items():
    if "moe" in name or "deepseek" in name or "gpt_oss" in name or name in ("laguna", "beam", "kimi_linear"):
        mesh = jax.make_mesh((1, 2, 2, 2), ("data", "fsdp", "expert", "tensor"), axis_types=(AxisType.Auto,) * 4)
    else:
        mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    ids = np.random.RandomState(0).randint(0, 64, (4, 12)).astype(np.int32)
    mask = np.ones((4, 12), bool)
    mask[1, :4] = False
    ref = np.asarray(load_pretrained(path)(ids, mask))
    model = load_pretrained(path, mesh=mesh)
    got = np.asarray(model(ids, mask))
    specs = {"/".join(map(str, k)): list(v.sharding.spec) for k, v in
             jax.tree_util.tree_flatten_with_path(model.params)[0]
             for k in [[getattr(p, "key", p) for p in k]]}
    out[name] = {"err": float(np.abs(got - ref)[mask].max()), "specs": specs}
print("RESULT" + json.dumps(out))
"""


def test_sharded_load_matches_unsharded(tmp_path):
    """Also expert-parallel (expert 2, tensor 2): gpt-oss's expert biases (the down bias added once, after the
    partial sums over ``tensor``), Qwen2-MoE's gated shared expert, dense layers between MoE ones, Nemotron-H's
    ungated experts (up and down only) beside Mamba-2 layers with and without an MLP, and in a latent space
    (Nemotron-3-Super's: dispatched at the latent width); Falcon-H1's attention and Mamba-2 mixer side by side,
    both split over ``tensor`` by heads; DeepSeek-V3.2's sparse-attention indexer, its heads split over ``tensor``
    (each device scoring its heads' share of every key); MiMo-V2-Flash's full layers (2 key/value heads, their own
    stack) beside sliding ones (4, and sinks), each split over ``tensor``; Gemma 4's full layers (wider heads, no
    value projection) and its experts beside a dense MLP (expert-parallel); Command A+'s experts in Command A's
    parallel layers (attention and experts on one normed input), the shared expert averaged in; Gemma 4 E2B's
    per-layer table split as the embedding is, and its layers sharing another's keys/values (queries split over
    ``tensor``, no key/value projections); LFM3's per-head output gates split over ``tensor`` with the heads they
    scale, beside short convolutions; Laguna's full layers with half the sliding ones' query heads (a stack of
    their own, split over ``tensor``) beside experts; Beam's gates and their per-head biases split with the heads;
    Kimi Linear's delta-attention layers (their decay and gate projections, decay biases and rates split over
    ``tensor`` by heads) beside latent attention and experts."""
    paths = {}
    for name in ("qwen3", "qwen3_moe", "deepseek_v3", "gpt_oss", "qwen2_moe", "qwen3_moe_dense", "nemotron_h_moe",
                 "nemotron_h_moe_latent", "falcon_h1", "deepseek_v32", "mimo_v2_flash",
                 "gemma4", "gemma4_moe", "cohere2_moe", "gemma4_e2b", "lfm3", "laguna", "beam", "kimi_linear"):
        _save_random(name, tmp_path / name)
        paths[name] = str(tmp_path / name)
    env = compared_env(8)
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(paths)], capture_output=True, text=True,
                       env=env, timeout=600, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.split("RESULT", 1)[1])
    # (Gemma 4's and LFM3's random tiny models are sharp, their outputs' norms scaling small sums up: float32 noise
    # ~2e-5, as in Gemma 4's sampler tests)
    for name, r in res.items():
        assert r["err"] <= (5e-5 if name.startswith(("gemma4", "lfm3")) else 1e-5), (name, r["err"])
    dense, moe, ds = res["qwen3"]["specs"], res["qwen3_moe"]["specs"], res["deepseek_v3"]["specs"]
    assert dense["layers/attn/q"] == [None, "fsdp", "tensor", None]
    assert dense["embed"] == ["tensor", "fsdp"]
    assert moe["layers/mlp/gate"] == [None, "expert", "fsdp", "tensor"]
    assert ds["layers/mlp/down"] == [None, "expert", "tensor", "fsdp"]
    assert ds["dense_layers/attn/kv_b"] == [None, None, "tensor", None]
    oss = res["gpt_oss"]["specs"]
    assert oss["layers/mlp/gate_b"] == [None, "expert", "tensor"] and oss["layers/attn/sinks"] == [None, "tensor"]
    assert res["qwen3_moe_dense"]["specs"]["dense_layers/mlp/gate"] == [None, "fsdp", "tensor"]
    nem = res["nemotron_h_moe"]["specs"]
    assert nem["linear_layers/mlp/up"] == [None, "expert", "fsdp", "tensor"] and "linear_layers/mlp/gate" not in nem
    assert nem["linear_mixer_layers/attn/o"][0] is None and not any(k.startswith("linear_mixer_layers/mlp")
                                                                     for k in nem)
    fal = res["falcon_h1"]["specs"]
    assert fal["linear_layers/attn/q"] == fal["linear_layers/mamba/z"] == [None, "fsdp", "tensor", None]
    assert fal["linear_layers/mamba/o"] == [None, "tensor", None, "fsdp"]
    dsa = res["deepseek_v32"]["specs"]
    assert dsa["layers/attn/idx_q"] == [None, None, "tensor", None] and dsa["layers/attn/idx_w"][-1] == "tensor"
    mimo = res["mimo_v2_flash"]["specs"]
    assert mimo["full_layers/attn/k"] == mimo["layers/attn/k"] == [None, "fsdp", "tensor", None]
    assert mimo["layers/attn/sinks"] == [None, "tensor"] and "full_layers/attn/sinks" not in mimo
    g4 = res["gemma4"]["specs"]
    assert g4["full_layers/attn/q"] == [None, "fsdp", "tensor", None] and "full_layers/attn/v" not in g4
    assert g4["full_layers/attn/k"] == [None, "fsdp", None, None]  # one key/value head: not split
    g4m = res["gemma4_moe"]["specs"]
    assert g4m["full_layers/mlp/gate"] == [None, "expert", "fsdp", "tensor"]
    assert g4m["full_layers/dense_mlp/gate"] == [None, "fsdp", "tensor"]
    e2b = res["gemma4_e2b"]["specs"]
    assert e2b["ple_embed"] == ["tensor", "fsdp"] and e2b["shared_layers/ple_gate"] == [None, "fsdp", None]
    assert e2b["full_shared_layers/attn/q"] == [None, "fsdp", "tensor", None] and "shared_layers/attn/k" not in e2b
    lfm = res["lfm3"]["specs"]
    assert lfm["layers/attn/h_gate"] == [None, "fsdp", "tensor"] == lfm["layers/attn/q"][:3]
    lag = res["laguna"]["specs"]
    assert lag["full_layers/attn/q"] == lag["layers/attn/q"] == [None, "fsdp", "tensor", None]
    assert lag["full_layers/attn/h_gate"] == [None, "fsdp", "tensor"]
    assert lag["layers/mlp/gate"] == [None, "expert", "fsdp", "tensor"]
    beam = res["beam"]["specs"]
    assert beam["layers/attn/q_gate"] == [None, "fsdp", "tensor", None]
    assert beam["layers/attn/gate_bias"] == [None, "tensor"]
    kimi = res["kimi_linear"]["specs"]
    assert kimi["linear_layers/attn/f_b"] == kimi["linear_layers/attn/g_b"] == [None, None, "tensor", None]
    assert kimi["linear_layers/attn/dt_bias"] == [None, "tensor", None] == kimi["linear_layers/attn/A_log"] + [None]
    assert kimi["linear_layers/attn/q"] == [None, "fsdp", "tensor", None]
    assert kimi["linear_layers/mlp/gate"] == [None, "expert", "fsdp", "tensor"]
    cmd = res["cohere2_moe"]["specs"]
    assert cmd["layers/mlp/gate"] == [None, "expert", "fsdp", "tensor"] and "layers/mlp_norm/scale" not in cmd
