"""The same steps on a device mesh: the quickstart's first SFT and GRPO steps on 8 CPU devices under several
mesh shapes equal the single-device run, and the compiled steps shard what they should."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import compared_env, run_here
from reasoning_rl.metrics import read_metrics

ROOT = Path(__file__).parent.parent
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
QUICKSTART_MOE = str(ROOT / "configs" / "quickstart_moe.yaml")
SHORT = ["--set", "stages.sft.steps=3", "--set", "stages.grpo.steps=2", "--set", "eval.num_problems=8",
         "--set", "eval.samples=2", "--set", "eval.k=[1,2]", "--set", "eval.greedy=false",
         "--set", "checkpoint.every=100",  # the stage end saves: the params compared
         "--set", "log.plots=false",
         "--set", "stages.sft.batch_size=16", "--set", "rollout.prompts_per_step=4",
         "--set", "rollout.max_new_tokens=24", "--set", "rollout.width_buckets=0",  # one GRPO update width
         # three SFT steps answer nothing right: a length-shaped reward (overlong shaping over the lengths an
         # early model writes) gives the GRPO steps advantages, so they compare real updates, not zeros
         "--set", "algorithm.overlong.enabled=true", "--set", "algorithm.overlong.max_len=16",
         "--set", "algorithm.overlong.cache=12"]
COMPARED = ("loss", "grad_norm", "reward_mean", "reward_std", "accuracy", "entropy", "response_len", "tokens")


def run(run_dir: Path, n_devices: int, *mesh: str, config: str = QUICKSTART) -> Path:
    """The run on ``n_devices`` CPU devices: one device in this process (helpers.run_here), more in a subprocess
    that asks for them."""
    args = ["run", config, "--no-progress", "--run-dir", str(run_dir), *SHORT,
            *[a for kv in mesh for a in ("--set", kv)]]
    if n_devices == 1:
        p = run_here(*args)
    else:
        p = subprocess.run([sys.executable, "-m", "reasoning_rl", *args], capture_output=True, text=True, timeout=600,
                           env=compared_env(n_devices))
    assert p.returncode == 0, p.stderr[-3000:]
    return run_dir


def final_params(run_dir: Path, stage: str) -> list[np.ndarray]:
    import jax
    import orbax.checkpoint as ocp

    d = run_dir / "checkpoints" / stage
    last = max(int(q.name) for q in d.iterdir() if q.name.isdigit())
    path = d / str(last) / "state"
    ck = ocp.StandardCheckpointer()
    meta = ck.metadata(path)
    meta = getattr(meta, "item_metadata", meta)
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # written on 8 devices, read back on one
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), dict(meta))
    tree = ck.restore(path, target)
    return [np.asarray(x) for x in jax.tree.leaves(tree["params"])]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return run(tmp_path_factory.mktemp("mesh") / "single", 1)


def assert_same_run(a_dir: Path, b_dir: Path) -> None:
    a, b = read_metrics(a_dir), read_metrics(b_dir)
    assert [(r["stage"], r["step"]) for r in a] == [(r["stage"], r["step"]) for r in b]
    grpo = [r for r in a if r["stage"] == "grpo"]
    assert grpo and all(r["reward_std"] > 0 and r["grad_norm"] > 0 for r in grpo)  # real updates, not zeros
    for ra, rb in zip(a, b):
        for k in COMPARED:
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-6), (ra["stage"], ra["step"], k)
    # float32 sums regrouped by the mesh differ in the last bits; Adam turns that into a step of up to lr for
    # elements whose gradient is ~0, so the params of the stage with real updates at a small lr (GRPO) get
    # the looser bound (as across hosts)
    for stage, rel in (("sft", 1e-5), ("grpo", 1e-4)):
        for x, y in zip(final_params(a_dir, stage), final_params(b_dir, stage)):
            assert np.abs(x - y).max() <= rel * max(np.abs(x).max(), 1e-6), stage


@pytest.mark.slow
def test_moe_quickstart_with_expert_parallelism_matches_one_device(tmp_path):
    single = run(tmp_path / "single", 1, config=QUICKSTART_MOE)
    ep = run(tmp_path / "ep", 8, "mesh.data=2", "mesh.expert=4", config=QUICKSTART_MOE)
    assert_same_run(single, ep)


@pytest.mark.slow
# (a data-only mesh: the 2-device data-parallel run in test_pipeline.py equals one device, and the sampler's
# per-device loops are checked on data meshes in test_sampler.py; here the meshes with fsdp and tensor axes;
# the first one also decodes as accelerators do by default: a cache buffer per layer, layers unrolled)
@pytest.mark.parametrize("mesh", [("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "model.decode_layers=unroll"),
                                  ("mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2")], ids=["d2f2t2", "f4t2"])
def test_first_steps_match_the_single_device_run(single, tmp_path, mesh):
    assert_same_run(single, run(tmp_path / "mesh", 8, *mesh))


HLO_PROBE = r"""
import json, sys
import jax, numpy as np
from reasoning_rl import config as C
from reasoning_rl.stages.common import Runtime
from reasoning_rl.algorithms.steps import make_sft_step
from reasoning_rl.data.batching import sft_batch
cfg = C.load(sys.argv[1], overrides=sys.argv[3:])
rt = Runtime(cfg, sys.argv[2])
stage = cfg.stages[0]
from reasoning_rl.stages.common import StageRun
run = StageRun(rt, stage, rt.init_params(), 10)
fn = rt.jit_step(make_sft_step(rt.mdef, stage.optimizer, run.tx), run.state)
rows = [rt.task.example("train", i).as_dict() for i in range(64)]
batch = rt.place_batch(sft_batch(rt.tok, rows, 96))
hlo = fn.lower(run.state, batch).compile().as_text()
state, metrics = fn(run.state, batch)
specs = {"/".join(str(getattr(k, "key", k)) for k in path): [str(x.sharding.spec), x.shape, x.size]
         for path, x in jax.tree_util.tree_flatten_with_path(state.params)[0]}
mu = [str(x.sharding.spec) for x in jax.tree.leaves(state.opt_state) if getattr(x, "ndim", 0) >= 2]
print("RESULT" + json.dumps({"collectives": {op: hlo.count(op) for op in
      ("all-gather", "reduce-scatter", "all-reduce", "all-to-all")}, "params": specs, "moments": mu,
      "metrics": {k: float(v) for k, v in jax.device_get(metrics).items()}}))
"""


@pytest.mark.slow
def test_compiled_fsdp_tensor_step_shards_params_and_uses_collectives(tmp_path):
    p = subprocess.run([sys.executable, "-c", HLO_PROBE, QUICKSTART, str(tmp_path / "probe"), "mesh.data=1",
                        "mesh.fsdp=4", "mesh.tensor=2"], capture_output=True, text=True, timeout=600,
                       env=compared_env(8))
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.split("RESULT", 1)[1])
    c = out["collectives"]
    assert c["all-gather"] > 0 or c["reduce-scatter"] > 0, c  # FSDP gathers weights / scatters gradients
    assert c["all-reduce"] > 0, c  # tensor-parallel partial sums
    largest = sorted(out["params"].items(), key=lambda kv: -kv[1][2])[:3]
    for name, (spec, shape, size) in largest:  # no accidental full replication of the biggest weights
        assert "fsdp" in spec or "tensor" in spec, (name, spec, shape)
    assert all(("fsdp" in s or "tensor" in s) for s in out["moments"][:3]), out["moments"]


@pytest.mark.slow
def test_compiled_expert_parallel_step_sends_tokens_with_all_to_all_and_counts_drops(tmp_path):
    p = subprocess.run([sys.executable, "-c", HLO_PROBE, QUICKSTART_MOE, str(tmp_path / "probe"), "mesh.data=2",
                        "mesh.expert=4", "model.moe.capacity_factor=0.5"],
                       capture_output=True, text=True, timeout=600, env=compared_env(8))
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.split("RESULT", 1)[1])
    assert out["collectives"]["all-to-all"] >= 2, out["collectives"]  # dispatch and return, forward and back
    experts = {k: v for k, v in out["params"].items() if k.endswith(("mlp/gate", "mlp/up", "mlp/down"))}
    assert experts and all("expert" in spec for spec, _, _ in experts.values()), experts
    m = out["metrics"]
    assert 0.0 < m["moe_dropped_frac"] < 1.0, m  # half the slots: some token copies cannot be placed
    assert m["moe_balance_loss"] >= 1.0 - 1e-5, m


PLAN_PROBE = r"""
import json, sys
import jax
from reasoning_rl import config as C, sharding as shd
from reasoning_rl.plan import plan
from reasoning_rl.stages.common import Runtime, StageRun
from reasoning_rl.models import KVCache
from reasoning_rl.rollout.sampler import shard_cache
cfg = C.load(sys.argv[1], overrides=sys.argv[3:])
p = plan(cfg, 8, prompt_len=32)
rt = Runtime(cfg, sys.argv[2])
stage = cfg.stages[1]
run = StageRun(rt, stage, rt.init_params(), 10)
dev0 = jax.devices()[0]
def on_dev0(tree):
    return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == dev0)
ref = rt.place(rt.init_params())
r = stage.rollout
with shd.use(rt.ctx):
    cache = jax.jit(lambda: shard_cache(KVCache.empty(rt.mdef.cfg, r.prompts_per_step * r.group_size,
                                                      32 + r.max_new_tokens)))()
real = {"params": on_dev0(run.state.params), "optimizer": on_dev0(run.state.opt_state) - 4,  # minus the count
        "reference": on_dev0(ref), "kv_cache": on_dev0((cache.k, cache.v))}
print("RESULT" + json.dumps({"plan": p["per_device_bytes"], "real": real}))
"""


@pytest.mark.slow
def test_plan_matches_the_real_per_device_allocation(tmp_path):
    p = subprocess.run([sys.executable, "-c", PLAN_PROBE, QUICKSTART, str(tmp_path / "probe"), "mesh.data=2",
                        "mesh.fsdp=2", "mesh.tensor=2", "algorithm.beta=0.1", "tokenizer.vocab_size=48"],
                       capture_output=True, text=True, timeout=600, env=compared_env(8))
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.split("RESULT", 1)[1])
    for k, real in out["real"].items():
        assert out["plan"][k] == pytest.approx(real, rel=0.10), (k, out)


def test_plan_sizes_deepseek_v3_without_allocating():
    from reasoning_rl import config as C
    from reasoning_rl.plan import plan

    cfg = C.load(str(ROOT / "configs" / "arch" / "deepseek_v3_grpo.yaml"))
    p = plan(cfg, 256, memory_gb=95)
    assert 660e9 < p["model"]["params"] < 690e9 and p["model"]["experts"] == 256
    per = p["per_device_bytes"]
    assert per["params"] < 2 * p["params_global_bytes"] / 256  # sharded, not replicated
    assert p["fits"]
    small = plan(C.load(str(ROOT / "configs" / "arch" / "deepseek_v3_grpo.yaml"), ["mesh.fsdp=1", "mesh.expert=1",
                                                                                  "mesh.tensor=8"]), 8, memory_gb=95)
    assert not small["fits"]


def test_plan_sizes_deepseek_v32_with_its_indexer_keys():
    """DeepSeek-V3.2 GRPO (configs/arch): V3's 671B plus the sparse-attention indexers (0.9B); the sampler's cache
    holds, beside each token's latent (512) and rotary key (64), its indexer key (128): exactly 704 / 576 of
    V3's on the same mesh."""
    from reasoning_rl import config as C
    from reasoning_rl.plan import plan

    v32 = plan(C.load(str(ROOT / "configs" / "arch" / "deepseek_v32_grpo.yaml")), 256, memory_gb=95)
    v3 = plan(C.load(str(ROOT / "configs" / "arch" / "deepseek_v3_grpo.yaml")), 256, memory_gb=95)
    assert v32["model"]["family"] == "deepseek_v32" and v32["fits"]
    assert 0.8e9 < v32["model"]["params"] - v3["model"]["params"] < 0.9e9
    assert v32["per_device_bytes"]["kv_cache"] * 576 == v3["per_device_bytes"]["kv_cache"] * 704


def test_plan_without_devices_sizes_the_mesh_the_config_names():
    """A config whose mesh fixes every axis (here fsdp 16 x expert 2) is planned for those 32 devices without
    --devices, on whatever host (this one has 8 or 1); one with an axis of -1 takes the host's count."""
    import jax

    from reasoning_rl import config as C
    from reasoning_rl.plan import plan

    arch = str(ROOT / "configs" / "arch" / "qwen3_30b_a3b_lora_grpo.yaml")  # fsdp 4 x expert 2
    assert plan(C.load(arch, ["mesh.fsdp=16"]))["devices"] == 32 == plan(C.load(arch, ["mesh.fsdp=16"]), 32)["devices"]
    free = ["mesh.data=-1", "mesh.fsdp=1", "mesh.expert=1"]
    assert plan(C.load(arch, free))["devices"] == jax.device_count()
    assert plan(C.load(arch, free), 16)["devices"] == 16


def test_plan_counts_the_held_out_curves_sampling_cache_inside_training():
    """eval.every samples held-out completions beside the optimizer state: the quickstart's evaluation rows
    (128 prompts x 4 samples) make a cache 4x its rollouts' (16 x 8); an SFT-only config gets one."""
    from reasoning_rl import config as C
    from reasoning_rl.plan import plan

    base = plan(C.load(str(ROOT / "configs" / "quickstart.yaml")), 1)["per_device_bytes"]
    curve = plan(C.load(str(ROOT / "configs" / "quickstart.yaml"), ["stages.grpo.eval.every=25"]), 1)
    assert curve["per_device_bytes"]["kv_cache"] == 4 * base["kv_cache"]
    small = plan(C.load(str(ROOT / "configs" / "quickstart.yaml"), ["stages.grpo.eval.every=25",
                                                                     "stages.grpo.eval.every_problems=16"]), 1)
    assert small["per_device_bytes"]["kv_cache"] == base["kv_cache"]  # 16 prompts x 4 < 128 rollouts
    sft = ["stages=[{name: sft, kind: sft, steps: 10}]"]
    assert "kv_cache" not in plan(C.load(str(ROOT / "configs" / "quickstart.yaml"), sft), 1)["per_device_bytes"]
    got = plan(C.load(str(ROOT / "configs" / "quickstart.yaml"), [*sft, "eval.every=5"]), 1)["per_device_bytes"]
    assert got["kv_cache"] == 4 * base["kv_cache"]


def test_plan_sizes_gpt_oss_120b_on_64_and_128_devices():
    """gpt-oss-120b GRPO (README's table): 117B parameters, sharded, fits 80 GB devices on both layouts."""
    from reasoning_rl import config as C
    from reasoning_rl.plan import plan

    path = str(ROOT / "configs" / "arch" / "gpt_oss_120b_grpo.yaml")
    p64 = plan(C.load(path), 64, memory_gb=80)
    p128 = plan(C.load(path, ["mesh.data=2"]), 128, memory_gb=80)
    assert 115e9 < p64["model"]["params"] < 119e9 and p64["model"]["experts"] == 128
    for p in (p64, p128):  # sharded over fsdp x tensor x expert = 64 (data 2 replicates them)
        assert p["fits"] and p["per_device_bytes"]["params"] < 2 * p["params_global_bytes"] / 64
    assert p128["per_device_bytes"]["kv_cache"] < p64["per_device_bytes"]["kv_cache"]


def test_plan_sizes_glm_4_5_air():
    """GLM-4.5-Air GRPO (configs/arch): 106B parameters (the multi-token-prediction layer is not loaded), 128
    routed experts, sharded over fsdp x expert; fits 80 GB devices on 32."""
    from reasoning_rl import config as C
    from reasoning_rl.plan import plan

    p = plan(C.load(str(ROOT / "configs" / "arch" / "glm_4.5_air_grpo.yaml")), 32, memory_gb=80)
    assert 106e9 < p["model"]["params"] < 107.5e9 and p["model"]["experts"] == 128
    assert p["model"]["family"] == "glm4_moe"
    assert p["fits"] and p["per_device_bytes"]["params"] < 2 * p["params_global_bytes"] / 32


def test_plan_sizes_minimax_m2_from_its_released_config_fields():
    """MiniMax-M2 GRPO (configs/arch, the released config.json's fields: rotary_dim, MTP switches): 229B
    parameters, 256 experts in every layer, fits 80 GB devices on 64."""
    from reasoning_rl import config as C
    from reasoning_rl.plan import plan

    p = plan(C.load(str(ROOT / "configs" / "arch" / "minimax_m2_grpo.yaml")), 64, memory_gb=80)
    assert 228e9 < p["model"]["params"] < 230e9 and p["model"]["experts"] == 256
    assert p["fits"] and p["per_device_bytes"]["params"] < 2 * p["params_global_bytes"] / 64


def test_plan_sizes_hy3_preview_from_the_reference_defaults():
    """Hy3-preview GRPO (configs/arch: a config.json without the rope base or the MLP kinds, as the reference
    fills them in): 295B parameters, 21B active, 192 experts in 79 layers; fits 80 GB devices on 128."""
    from reasoning_rl import config as C
    from reasoning_rl.plan import plan

    p = plan(C.load(str(ROOT / "configs" / "arch" / "hy3_preview_grpo.yaml")), 128, memory_gb=80)
    assert 294e9 < p["model"]["params"] < 296e9 and p["model"]["experts"] == 192
    assert p["model"]["family"] == "hy_v3"
    assert p["fits"] and p["per_device_bytes"]["params"] < 2 * p["params_global_bytes"] / 128


def test_plan_sizes_solar_open_100b():
    """Solar-Open-100B GRPO (configs/arch): 102.6B parameters, 128 experts in every layer; fits 80 GB devices
    on 32."""
    from reasoning_rl import config as C
    from reasoning_rl.plan import plan

    p = plan(C.load(str(ROOT / "configs" / "arch" / "solar_open_100b_grpo.yaml")), 32, memory_gb=80)
    assert 102e9 < p["model"]["params"] < 103e9 and p["model"]["experts"] == 128
    assert p["model"]["family"] == "solar_open"
    assert p["fits"] and p["per_device_bytes"]["params"] < 2 * p["params_global_bytes"] / 32


def test_plan_sizes_mimo_v2_flash_from_its_released_config():
    """MiMo-V2-Flash GRPO (configs/arch, the released config.json layout: hybrid_layer_pattern, swa_* fields):
    309B parameters, 256 experts, full and sliding layers of their own stacks; the sampler's cache counted as
    allocated (the most key/value heads of either kind, 8, in each of the 48 layers); fits 80 GB devices on 128."""
    from reasoning_rl import config as C
    from reasoning_rl.plan import plan

    p = plan(C.load(str(ROOT / "configs" / "arch" / "mimo_v2_flash_grpo.yaml")), 128, memory_gb=80)
    assert 308e9 < p["model"]["params"] < 310e9 and p["model"]["experts"] == 256
    assert p["model"]["family"] == "mimo_v2_flash"
    assert p["fits"] and p["per_device_bytes"]["params"] < 2 * p["params_global_bytes"] / 128


def test_plan_sizes_a_gemma4_26b_a4b_shaped_model_with_a_cache_per_layer_kind():
    """A Gemma 4 26B-A4B-shaped GRPO step (configs/arch): 25.2B parameters, 128 experts in every layer beside a dense
    MLP; the sampler's cache counted as allocated: each kind of layer its own shape (25 sliding layers of 8
    key/value heads of 256, 5 full ones of 2 of 512; 512 rows of 4096 + 256 slots), less than half of one buffer
    as wide as the widest layer (8 heads of 512 in all 30); fits 80 GB devices on 32."""
    from reasoning_rl import config as C
    from reasoning_rl.plan import plan

    p = plan(C.load(str(ROOT / "configs" / "arch" / "gemma_4_26b_a4b_grpo.yaml")), 32, memory_gb=80)
    assert 25.1e9 < p["model"]["params"] < 25.3e9 and p["model"]["experts"] == 128
    assert p["model"]["family"] == "gemma4" and p["fits"]
    assert p["per_device_bytes"]["kv_cache"] == 2 * 512 * 4352 * (25 * 8 * 256 + 5 * 2 * 512) * 2 // 32
    assert p["per_device_bytes"]["kv_cache"] < 0.46 * 2 * 30 * 512 * 4352 * 8 * 512 * 2 // 32


def test_plan_sizes_a_gemma4_e2b_shaped_model_whose_shared_layers_hold_no_cache():
    """A Gemma 4 E2B-shaped GRPO step on one device (configs/arch): 4.63B parameters, 2.35B of them the per-layer
    input table; the sampler's cache holds the 15 layers computing keys/values (12 sliding of one 256-wide head, 3
    full of one 512-wide), not the 20 sharing theirs: 64 rows of 4096 + 256 slots; fits an 80 GB device."""
    from reasoning_rl import config as C
    from reasoning_rl.plan import plan

    p = plan(C.load(str(ROOT / "configs" / "arch" / "gemma_4_e2b_grpo.yaml")), 1, memory_gb=80)
    assert 4.62e9 < p["model"]["params"] < 4.64e9 and p["model"]["family"] == "gemma4" and p["fits"]
    assert p["per_device_bytes"]["kv_cache"] == 2 * 64 * 4352 * (12 * 256 + 3 * 512) * 2


def test_plan_sizes_qwen3_5_35b_a3b_with_its_recurrent_cache():
    """Qwen3.5-35B-A3B GRPO (configs/arch): 34.7B parameters, 256 experts in every layer; fits 80 GB devices on 16.
    The sampler's cache is keys/values for the 10 attention layers (growing with the slots) and, for each of the
    30 linear layers, a fixed float32 state and 3 convolution inputs per row, counted exactly."""
    from reasoning_rl import config as C
    from reasoning_rl.plan import plan

    p = plan(C.load(str(ROOT / "configs" / "arch" / "qwen3_5_35b_a3b_grpo.yaml")), 16, memory_gb=80)
    assert 34e9 < p["model"]["params"] < 35.5e9 and p["model"]["experts"] == 256
    assert p["model"]["family"] == "qwen3_5_moe" and p["fits"]
    rows, slots = 32 * 8 // 16, 256 + 4096  # rows over fsdp x expert; prompt + response slots
    keys_values = 10 * rows * 2 * slots * 256 * 2 * 2  # layers, rows, kv heads, slots, head dim, k and v, bf16
    states = 30 * rows * (32 * 128 * 128 * 4 + 3 * (2 * 16 * 128 + 32 * 128) * 2)
    assert p["per_device_bytes"]["kv_cache"] == keys_values + states


def test_plan_sizes_kimi_linear_48b_with_its_delta_attention_states():
    """Kimi-Linear-48B-A3B GRPO (configs/arch, its released config.json: layers named 1-based in
    ``linear_attn_config``): 49.1B parameters; fits 80 GB devices on 16. The sampler's cache is, for the 7
    latent-attention layers, each slot's latent (512) and rotary key (64), and for the 20 Kimi Delta Attention
    layers a fixed float32 state [32, 128, 128] and 3 convolution inputs per row, counted exactly."""
    from reasoning_rl import config as C
    from reasoning_rl.plan import plan

    p = plan(C.load(str(ROOT / "configs" / "arch" / "kimi_linear_48b_a3b_grpo.yaml")), 16, memory_gb=80)
    assert 48.5e9 < p["model"]["params"] < 49.5e9 and p["model"]["experts"] == 256
    assert p["model"]["family"] == "kimi_linear" and p["fits"]
    rows, slots = 32 * 8 // 16, 256 + 4096  # rows over fsdp x expert; prompt + response slots
    latents = 7 * rows * slots * (512 + 64) * 2  # layers, rows, slots, latent + rotary key, bf16
    states = 20 * rows * (32 * 128 * 128 * 4 + 3 * 3 * 32 * 128 * 2)
    assert p["per_device_bytes"]["kv_cache"] == latents + states


def test_plan_sizes_falcon_h1r_7b_with_both_caches_in_every_layer():
    """Falcon-H1R-7B GRPO (configs/arch): 7.59B parameters; each of the 44 parallel layers keeps a KV cache and a
    Mamba-2 state per row, both counted exactly."""
    from reasoning_rl import config as C
    from reasoning_rl.plan import plan

    p = plan(C.load(str(ROOT / "configs" / "arch" / "falcon_h1r_7b_grpo.yaml")), 8, memory_gb=80)
    assert 7.58e9 < p["model"]["params"] < 7.6e9 and p["model"]["family"] == "falcon_h1" and p["fits"]
    rows, slots = 32 * 8 // 8, 256 + 4096  # rows over fsdp; prompt + response slots
    keys_values = 44 * rows * 2 * slots * 128 * 2 * 2  # layers, rows, kv heads, slots, head dim, k and v, bf16
    states = 44 * rows * (24 * 256 * 128 * 4 + 3 * (3072 + 2 * 256) * 2)  # float32 state, 3 bf16 conv inputs
    assert p["per_device_bytes"]["kv_cache"] == keys_values + states


def test_plan_sizes_hunyuan_a13b_from_its_released_config_fields():
    """Hunyuan-A13B GRPO (configs/arch, the released config.json's fields: per-layer MoE lists, rope_scaling of
    type dynamic with alpha): 80B parameters, 64 experts and a shared MLP in every layer; fits 80 GB devices on
    16."""
    from reasoning_rl import config as C
    from reasoning_rl.plan import plan

    p = plan(C.load(str(ROOT / "configs" / "arch" / "hunyuan_a13b_grpo.yaml")), 16, memory_gb=80)
    assert 80e9 < p["model"]["params"] < 81e9 and p["model"]["experts"] == 64
    assert p["model"]["family"] == "hunyuan"
    assert p["fits"] and p["per_device_bytes"]["params"] < 2 * p["params_global_bytes"] / 16
