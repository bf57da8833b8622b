"""A fresh model is drawn in one jitted program onto its shardings (``models.create``): the weights equal the
op-by-op construction's bit for bit (a seeded run starts from the same model as before, on any mesh), and on a
mesh each device draws and holds only its slices."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import compared_env
from reasoning_rl.models import LoRAConfig, create
from reasoning_rl.models.transformer import Transformer
from test_hf_io import FAMILY_CONFIGS

HERE = Path(__file__).parent


def _op_by_op(cfg, seed: int) -> dict:
    return nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed)), nnx.Param))


def _cases() -> dict:
    # every kind of draw (embedding, output layer, layer weights, adapters) and the cast to a narrower dtype; op by
    # op each case costs seconds of eager compiles under these flags, so two cases cover them
    return {"lora": dataclasses.replace(FAMILY_CONFIGS["qwen3"], lora=LoRAConfig(rank=4, targets=("q", "v", "up"))),
            "bf16": dataclasses.replace(FAMILY_CONFIGS["llama"], param_dtype="bfloat16", dtype="bfloat16")}


# Under the flags users' runs compile with (XLA's defaults). Under the suite's fast-compile flags (LLVM at O0, the
# older fusion emitter) the draws' own polynomials round differently in one program and op by op; each side is
# deterministic, and tests compare runs initialised the same way.
@pytest.mark.optimized
def test_jitted_init_equals_the_op_by_op_construction_bit_for_bit():
    for name, cfg in _cases().items():
        _, got = create(cfg, 7)
        want = _op_by_op(cfg, 7)
        flat_got = jax.tree_util.tree_leaves_with_path(got)
        assert jax.tree.structure(got) == jax.tree.structure(want), name
        for (path, g), w in zip(flat_got, jax.tree.leaves(want)):
            g, w = np.asarray(g), np.asarray(w)
            assert g.dtype == w.dtype and g.shape == w.shape, (name, jax.tree_util.keystr(path))
            assert np.array_equal(g, w), (name, jax.tree_util.keystr(path), np.abs(g - w).max())


SHARDED = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, sys.argv[1])
from test_hf_io import FAMILY_CONFIGS
from reasoning_rl import sharding as shd
from reasoning_rl.models import create

out = {}
for name in ("llama", "deepseek_v3"):
    cfg = FAMILY_CONFIGS[name]
    mdef, want = create(cfg, 3)
    ctx = shd.context(shd.make_mesh({"fsdp": 4, "tensor": 2}, jax.devices()))
    shardings = shd.param_shardings(ctx, mdef.param_axes(), mdef.abstract_params())
    _, got = create(cfg, 3, shardings=shardings)
    leaves = jax.tree.leaves(got)
    out[name] = {
        "placed": all(x.sharding == s for x, s in zip(leaves, jax.tree.leaves(shardings))),
        "equal": all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves, jax.tree.leaves(want))),
        # bytes one device holds, against the whole model's
        "device0": sum(s.data.nbytes for x in leaves for s in x.addressable_shards if s.device == jax.devices()[0]),
        "whole": sum(x.nbytes for x in leaves),
        "split": sum(not x.sharding.is_fully_replicated for x in leaves),
    }
print(json.dumps(out))
"""


def test_init_on_a_mesh_draws_each_devices_slices_and_equals_the_single_device_init():
    p = subprocess.run([sys.executable, "-c", SHARDED, str(HERE)], capture_output=True, text=True, timeout=300,
                       env=compared_env(8), check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    for name, r in res.items():
        assert r["placed"] and r["equal"], (name, r)
        assert r["split"] > 0, (name, r)
        assert r["device0"] < 0.5 * r["whole"], (name, r)  # 8 devices: a device holds its slices, not the model
