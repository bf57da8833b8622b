"""LoRA training: gradients reach the adapters only (the frozen base is bit-for-bit unchanged), the KL reference
is the base model, the sampler (adapters merged once) matches the trainer (adapters unmerged), a LoRA stage
resumes exactly, every family's adapters (dense, MoE experts, MLA) train, and a bad ``model.lora`` fails
before any compute."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import compared_env
from reasoning_rl.models import MLAConfig, MoEConfig, TransformerConfig, create, lora
from reasoning_rl.models.config import LoRAConfig

from reasoning_rl import config as C
from reasoning_rl.algorithms.steps import init_state, make_logprob_fn, make_optimizer, make_sft_step
from reasoning_rl.config import ConfigError
from reasoning_rl.data.batching import prompt_batch, sft_batch
from reasoning_rl.metrics import MetricsWriter
from reasoning_rl.stages.common import Runtime, StageRun

TINY = str(Path(__file__).parent / "configs" / "tiny.yaml")
TINY_PPO = str(Path(__file__).parent / "configs" / "tiny_ppo.yaml")
LORA = "model.lora={rank: 4, alpha: 8, targets: [q, k, v, o, gate, up, down]}"


def runtime(tmp_path, *over):
    cfg = C.load(TINY, overrides=[LORA, *over])
    return Runtime(cfg, tmp_path / "run"), cfg


def _batch(rt, n=8):
    rows = [rt.task.example("train", i).as_dict() for i in range(n)]
    return rt.place_batch(sft_batch(rt.tok, rows, 48))


def _np(tree):
    return [np.array(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A LoRA runtime, its init params, and the state after three SFT steps."""
    rt, cfg = runtime(tmp_path_factory.mktemp("lora"))
    stage = cfg.stages[0]
    init = rt.init_params()
    base0 = _np(lora.split(init)[0])
    run = StageRun(rt, stage, init, 10)
    step = rt.jit_step(make_sft_step(rt.mdef, stage.optimizer, run.tx), run.state)
    batch = _batch(rt)
    state = run.state
    for _ in range(3):
        state, _ = step(state, batch)
    return rt, init, base0, state, batch


def test_step_trains_adapters_only_and_leaves_the_base_bit_identical(trained):
    _, init, base0, state, _ = trained
    base, ad = lora.split(state.params)
    for a, b in zip(base0, _np(base)):
        np.testing.assert_array_equal(a, b)  # bit for bit
    assert all(x is y for x, y in zip(jax.tree.leaves(base), jax.tree.leaves(lora.split(init)[0])))  # no copy
    b_leaves = [np.asarray(x) for p, x in lora.hf_save_flat(ad).items() if p[-1].endswith("_lora_b")]
    assert b_leaves and all(np.abs(b).max() > 0 for b in b_leaves)  # B left zero: the adapters trained
    # optimizer moments exist for the adapters only
    n_ad, n_base = lora.count(state.params)
    n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state) if getattr(x, "ndim", 0) >= 1)
    assert n_opt == 2 * n_ad and n_ad < n_base


def test_kl_reference_is_the_base_model(trained):
    rt, _, _, state, batch = trained
    mask = batch["valid"][:, 8:]
    ref = jax.jit(make_logprob_fn(rt.base_mdef, 1.0))(lora.split(state.params)[0], batch["tokens"],
                                                        batch["valid"], mask)
    bdef, bparams = create(rt.base_mdef.cfg, rt.cfg.seed)  # the base model as built without LoRA
    want = jax.jit(make_logprob_fn(bdef, 1.0))(bparams, batch["tokens"], batch["valid"], mask)
    np.testing.assert_array_equal(np.asarray(ref), np.asarray(want))
    policy = jax.jit(make_logprob_fn(rt.mdef, 1.0))(state.params, batch["tokens"], batch["valid"], mask)
    assert np.abs(np.asarray(policy) - np.asarray(want)).max() > 1e-4


@pytest.mark.parametrize("merged", [False, True], ids=["unmerged", "merged_once"])
def test_sampler_matches_the_trainer(trained, merged):
    from reasoning_rl.rollout.sampler import SamplingParams, sample_impl

    rt, _, _, state, _ = trained
    ad = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(3), x.shape),
                      lora.split(state.params)[1])  # adapters that matter
    params = lora.join(lora.split(state.params)[0], ad)
    pt, pv = prompt_batch(rt.tok, [rt.task.example("train", i).as_dict() for i in range(4)])
    sp = SamplingParams(12, 1.0, pad_id=rt.tok.pad_id, group_size=2, stop_ids=(rt.tok.eos_id,))
    if merged:  # GRPO with model.lora.merge_sampling: the adapters folded in once, the base model decodes
        mdef, sparams = rt.base_mdef, jax.jit(lambda p: lora.merge(rt.mdef, p)[1])(params)
    else:  # the default: the trainer's own adapter arithmetic in every decode step
        mdef, sparams = rt.mdef, params
    out = jax.jit(lambda p, a, b, k: sample_impl(mdef, sp, p, a, b, k))(sparams, pt, pv, jax.random.key(0))
    tokens = np.concatenate([np.repeat(pt, 2, 0), np.asarray(out.tokens)], 1)
    valid = np.concatenate([np.repeat(pv, 2, 0), np.asarray(out.mask)], 1)
    lp = jax.jit(make_logprob_fn(rt.mdef, 1.0, group=2))(params, tokens, valid, np.asarray(out.mask))
    gap = np.abs((np.asarray(lp) - np.asarray(out.logprobs)) * np.asarray(out.mask)).max()
    assert gap <= 1e-5, gap


def test_lora_stage_resumes_exactly(tmp_path):
    from reasoning_rl.pipeline import restore_params
    from reasoning_rl.stages.sft import run_sft

    def go(d, steps_list):
        rt, cfg = runtime(d, "checkpoint.every=2")
        for steps in steps_list:
            stage = dataclasses.replace(cfg.stages[0], steps=steps)
            w = MetricsWriter(rt.run_dir)
            params, _ = run_sft(rt, stage, rt.init_params(), w, progress=False)
            w.close()
        return rt, stage, params

    rt, stage, straight = go(tmp_path / "a", [4])
    _, _, resumed = go(tmp_path / "b", [2, 4])  # the second call resumes the step-2 checkpoint
    for a, b in zip(_np(straight), _np(resumed)):
        np.testing.assert_array_equal(a, b)
    # the checkpoint holds adapters only and restores onto the base it names
    back, step = restore_params(rt, rt.run_dir / "checkpoints" / stage.name, stage, 2)
    assert step == 4
    for a, b in zip(_np(straight), _np(back)):
        np.testing.assert_array_equal(a, b)
    # a full (no LoRA) stage initialised from this checkpoint gets the adapters merged into the base
    from reasoning_rl.pipeline import load_outside

    C.dump(rt.cfg, rt.run_dir / "config.yaml")
    full = Runtime(C.load(TINY), tmp_path / "full")
    merged, lineage = load_outside(full, str(rt.run_dir / "checkpoints" / stage.name))
    assert lineage["step"] == 4 and not lora.has_adapters(merged)
    want = jax.jit(lambda p: lora.merge(rt.mdef, p)[1])(straight)
    for a, b in zip(_np(want), _np(merged)):
        np.testing.assert_array_equal(a, b)


def _with_dropout(mdef, rate):
    return lora.with_lora(mdef, dataclasses.replace(mdef.cfg.lora, dropout=rate))


def test_lora_dropout_applies_to_training_passes_only(trained):
    """PEFT's lora_dropout: the adapters' input is dropped in the training losses (sft, grpo), with masks drawn
    from the state's key and step; the sampler and the old/reference log-probs never drop; dropout 0 leaves
    the step's program without random draws, as before dropout existed. In GRPO the ratio's new log-probs
    come from the dropped forward and the old ones from the sampler (no dropout), as TRL with PEFT."""
    from reasoning_rl.algorithms.steps import make_grpo_step
    from reasoning_rl.data.batching import rollout_batch
    from reasoning_rl.rollout.sampler import SamplingParams, sample_impl

    rt, _, _, state, batch = trained
    stage = rt.cfg.stages[0]
    tx = make_optimizer(stage.optimizer, 10)
    ad = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(3), x.shape), lora.split(state.params)[1])
    params = lora.join(lora.split(state.params)[0], ad)
    st = dataclasses.replace(init_state(params, tx, 0), step=jnp.asarray(5, jnp.int32))
    d0, dp = rt.mdef, _with_dropout(rt.mdef, 0.3)
    sft0, sftp = make_sft_step(d0, stage.optimizer, tx), make_sft_step(dp, stage.optimizer, tx)
    assert "random_bits" not in str(jax.make_jaxpr(sft0)(st, batch))
    assert "random_bits" in str(jax.make_jaxpr(sftp)(st, batch))
    sft0, sftp = jax.jit(sft0), jax.jit(sftp)
    plain, m0 = sft0(st, batch)
    other_key, _ = sft0(dataclasses.replace(st, rng=jax.random.key(9)), batch)
    for a, b in zip(_np(plain.params), _np(other_key.params)):
        np.testing.assert_array_equal(a, b)  # dropout 0 draws nothing from the state's key
    dropped, m1 = sftp(st, batch)
    again, _ = sftp(st, batch)
    _, m2 = sftp(dataclasses.replace(st, step=st.step + 1), batch)
    assert float(m1["loss"]) != float(m0["loss"]) and float(m2["loss"]) != float(m1["loss"])
    for a, b in zip(_np(dropped.params), _np(again.params)):
        np.testing.assert_array_equal(a, b)  # a pure function of the state: same step, same masks
    for a, b in zip(_np(lora.split(dropped.params)[0]), _np(lora.split(params)[0])):
        np.testing.assert_array_equal(a, b)  # the base stays frozen
    # no dropout outside the training losses: log-probs (old / reference / eval) and the sampler
    mask = batch["valid"][:, 8:]
    lps = [np.asarray(jax.jit(make_logprob_fn(m, 1.0))(params, batch["tokens"], batch["valid"], mask)) for m in (d0, dp)]
    np.testing.assert_array_equal(*lps)
    pt, pv = prompt_batch(rt.tok, [rt.task.example("train", i).as_dict() for i in range(4)])
    sp = SamplingParams(8, 1.0, pad_id=rt.tok.pad_id, group_size=2, stop_ids=(rt.tok.eos_id,))
    outs = [jax.jit(lambda p, a, b, k, m=m: sample_impl(m, sp, p, a, b, k))(params, pt, pv, jax.random.key(0))
            for m in (d0, dp)]
    for f in ("tokens", "logprobs", "mask"):
        np.testing.assert_array_equal(np.asarray(getattr(outs[0], f)), np.asarray(getattr(outs[1], f)))
    # GRPO: without dropout the first update's log-probs are the sampler's; with it they are not
    out = outs[0]
    rb = rollout_batch(pt, pv, np.asarray(out.tokens), np.asarray(out.mask), np.asarray(out.logprobs),
                       np.linspace(-1, 1, 8).astype(np.float32), 2)
    gaps = {}
    for rate, mdef in ((0.0, d0), (0.3, dp)):
        _, m = jax.jit(make_grpo_step(mdef, C.AlgorithmConfig(), stage.optimizer, tx, 1.0, group=2))(st, rb)
        assert np.isfinite(float(m["loss"]))
        gaps[rate] = float(m["logprob_gap"])
    assert gaps[0.0] <= 1e-5 and gaps[0.3] > 1e-3, gaps
    # the mask itself: entries dropped with the rate, kept ones scaled by 1 / (1 - rate); none outside a scope
    x = jnp.ones((64, 256))
    with lora.dropout((jax.random.key(1), 0.25)):
        lora.next_forward()
        with lora.dropout_layer(jnp.int32(0)):
            y, y2 = np.asarray(lora.drop_input(x, "q")), np.asarray(lora.drop_input(x, "k"))
    assert abs((y == 0).mean() - 0.25) < 0.01 and np.allclose(y[y != 0], 1 / 0.75)
    assert (y != y2).any()  # each target its own mask
    np.testing.assert_array_equal(np.asarray(lora.drop_input(x, "q")), np.asarray(x))


@pytest.mark.slow
def test_lora_stage_with_dropout_resumes_exactly(tmp_path):
    """The dropout masks come from the train state (key, step), so a resumed stage draws the masks the
    uninterrupted one drew; and they do change the training (a run without dropout ends elsewhere)."""
    from reasoning_rl.stages.sft import run_sft

    def go(d, steps_list, rate=0.2):
        rt, cfg = runtime(d, "checkpoint.every=2", f"model.lora.dropout={rate}")
        assert rt.mdef.cfg.lora.dropout == rate
        for steps in steps_list:
            w = MetricsWriter(rt.run_dir)
            params, _ = run_sft(rt, dataclasses.replace(cfg.stages[0], steps=steps), rt.init_params(), w,
                                progress=False)
            w.close()
        return params

    straight = go(tmp_path / "a", [4])
    resumed = go(tmp_path / "b", [2, 4])  # the second call resumes the step-2 checkpoint
    for a, b in zip(_np(straight), _np(resumed)):
        np.testing.assert_array_equal(a, b)
    without = go(tmp_path / "c", [4], 0.0)
    assert any(not np.array_equal(a, b) for a, b in zip(_np(straight), _np(without)))


@pytest.mark.parametrize("kind", ["moe_experts", "mla"])
def test_moe_experts_and_mla_adapters_train(kind):
    kw = dict(vocab_size=48, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=48)
    if kind == "mla":
        kw["mla"] = MLAConfig(q_lora_rank=16, kv_lora_rank=8, qk_nope_dim=8, qk_rope_dim=4, v_dim=8)
        targets = ("q_a", "q_b", "kv_a", "kv_b", "o", "gate", "up", "down")
    else:
        kw["moe"] = MoEConfig(n_experts=4, top_k=2, ffn_dim=16, n_shared=1)
        targets = ("q", "gate", "up", "down")
    cfg = TransformerConfig(**kw, lora=LoRAConfig(rank=2, alpha=4, targets=targets, experts=True))
    mdef, params = create(cfg, 0)
    ocfg = C.OptimizerConfig(lr=1e-2)
    tx = make_optimizer(ocfg, 10)
    step = jax.jit(make_sft_step(mdef, ocfg, tx))
    rng = np.random.RandomState(0)
    batch = {"tokens": jnp.asarray(rng.randint(0, 48, (4, 12)), jnp.int32), "valid": jnp.ones((4, 12), bool),
             "loss_mask": jnp.ones((4, 12), bool)}
    state, m = step(init_state(params, tx, 0), batch)
    assert np.isfinite(float(m["loss"]))
    for a, b in zip(_np(lora.split(params)[0]), _np(lora.split(state.params)[0])):
        np.testing.assert_array_equal(a, b)
    new = lora.hf_save_flat(lora.split(state.params)[1])
    changed = {p for p, x in new.items() if p[-1].endswith("_lora_b") and np.abs(np.asarray(x)).max() > 0}
    want = {p for p in new if p[-1].endswith("_lora_b")}
    assert changed == want, sorted(want - changed)
    if kind == "moe_experts":
        assert ("layers", "mlp", "gate_lora_b") in want and ("layers", "mlp", "shared", "up_lora_b") in want


@pytest.mark.parametrize("bad, msg", [
    ("model.lora={rank: 0}", "model.lora.rank"),
    ("model.lora={rnak: 4}", "model.lora.rnak: unknown key"),
    ("model.lora={targets: [q, qq]}", "model.lora.targets: 'qq'"),
    ("model.lora={targets: [q_a]}", "model.lora.targets: ['q_a'] match no weight"),
    ("model.lora={dropout: 1.0}", "model.lora.dropout: expected in"),
    ("model.lora={dropout: 0.1, experts: true}", "model.lora.dropout: 0.1 with experts: true is not supported"),
])
def test_bad_lora_config_is_one_clear_error(tmp_path, bad, msg):
    with pytest.raises(ConfigError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        runtime(tmp_path, bad)


@pytest.mark.parametrize("bad, msg", [
    ("model.moe={n_experts: 4, top_k: 2, ffn_dim: 8, score: softplus}", "model.moe.score: 'softplus' is not one"),
    ("model.moe={n_experts: 4, top_k: 2, ffn_dim: 8, n_group: 2, group_score: mean}", "model.moe.group_score"),
    ("model.moe={n_experts: 4, top_k: 5, ffn_dim: 8}", "model.moe.top_k: 5 is not between 1 and n_experts"),
    ("model.moe={n_experts: 6, top_k: 2, ffn_dim: 8, n_group: 4, topk_group: 2}", "model.moe.n_group / topk_group"),
    ("model.moe={n_experts: 4, top_k: 2, ffn_dim: 8, n_group: 2, topk_group: 3}", "model.moe.n_group / topk_group"),
    ("model.moe={n_experts: 4, top_k: 2, ffn_dim: 8, topk: 2}", "model.moe.topk: unknown key"),
])
def test_bad_moe_config_is_one_clear_error(tmp_path, bad, msg):
    with pytest.raises(ConfigError, match=msg):
        runtime(tmp_path, bad)


PROBE = r"""
import json, sys
import jax, numpy as np
from reasoning_rl import config as C
from reasoning_rl.stages.common import Runtime, StageRun
from reasoning_rl.algorithms.steps import make_sft_step
from reasoning_rl.data.batching import sft_batch
from reasoning_rl.models import lora
out = {}
for name, devs, mesh in (("one", jax.devices()[:1], []), ("mesh", jax.devices(),
                         ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"])):
    cfg = C.load(sys.argv[1], overrides=[sys.argv[3], "model.d_model=64", "model.n_heads=4", "model.n_kv_heads=2"]
                 + mesh)
    rt = Runtime(cfg, sys.argv[2] + name, devices=devs)
    run = StageRun(rt, cfg.stages[0], rt.init_params(), 10)
    fn = rt.jit_step(make_sft_step(rt.mdef, cfg.stages[0].optimizer, run.tx), run.state)
    rows = [rt.task.example("train", i).as_dict() for i in range(8)]
    state, m = fn(run.state, rt.place_batch(sft_batch(rt.tok, rows, 48)))
    flat = {"/".join(str(getattr(k, "key", k)) for k in p): x
            for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]}
    out[name] = {"loss": float(m["loss"]), "specs": {k: str(x.sharding.spec) for k, x in flat.items()},
                 "values": {k: np.asarray(x).tolist() for k, x in flat.items() if "lora" in k}}
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_adapters_follow_their_weights_sharding_on_8_devices(tmp_path):
    env = compared_env(8)  # one device against the mesh, in one process
    p = subprocess.run([sys.executable, "-c", PROBE, TINY, str(tmp_path / "r"), LORA], capture_output=True,
                       text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.split("RESULT", 1)[1])
    specs = {k: v.replace("PartitionSpec", "P") for k, v in out["mesh"]["specs"].items()}
    # A takes the weight's input axes (embed -> fsdp), B its output axes (heads -> tensor), rank replicated
    assert specs["layers/attn/q_lora_a"] == "P(None, 'fsdp', None)", specs
    assert specs["layers/attn/q_lora_b"] == "P(None, None, 'tensor', None)", specs
    assert specs["layers/attn/o_lora_a"] == "P(None, 'tensor', None, None)", specs
    assert specs["layers/attn/o_lora_b"] == "P(None, None, 'fsdp')", specs
    assert specs["layers/mlp/down_lora_a"] == "P(None, 'tensor', None)", specs
    assert out["mesh"]["loss"] == pytest.approx(out["one"]["loss"], rel=1e-5)
    for k, v in out["one"]["values"].items():
        np.testing.assert_allclose(np.asarray(out["mesh"]["values"][k]), np.asarray(v), rtol=1e-4, atol=1e-6)


def test_save_lora_load_adapter_round_trip_and_bad_adapters(tmp_path):
    from safetensors.numpy import load_file, save_file

    cfg = TransformerConfig(vocab_size=48, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=48,
                            lora=LoRAConfig(rank=2, alpha=3, targets=("q", "o", "down")))
    mdef, params = create(cfg, 0)
    base, ad = lora.split(params)
    ad = jax.tree.map(lambda x: x + 0.1, ad)
    lora.save_lora((mdef, lora.join(base, ad)), tmp_path / "a")
    conf = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert conf["r"] == 2 and conf["lora_alpha"] == 3 and conf["target_modules"] == ["down_proj", "o_proj", "q_proj"]
    mdef2, back = lora.load_adapter(tmp_path / "a", lora.base_mdef(mdef))
    assert mdef2.cfg.lora.targets == ("q", "o", "down")
    for x, y in zip(_np(ad), _np(back)):
        np.testing.assert_array_equal(x, y)
    conf["use_dora"] = True
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(conf))
    with pytest.raises(lora.LoRAError, match="use_dora=True is not supported"):
        lora.load_adapter(tmp_path / "a", lora.base_mdef(mdef))
    conf["use_dora"] = False
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(conf))
    f = tmp_path / "a" / "adapter_model.safetensors"
    t = {k: v for k, v in load_file(f).items() if ".layers.1.self_attn.q_proj" not in k}
    save_file(t, f)
    with pytest.raises(lora.LoRAError, match="q is adapted in only some layers"):
        lora.load_adapter(tmp_path / "a", lora.base_mdef(mdef))


def test_reward_model_stage_refuses_lora_and_ppo_accepts_it():
    """A reward model's score head carries no adapters: one line naming the stage, before any compute (check_refs
    runs before the first stage). A ppo stage trains its policy's adapters (its critic is a full model)."""
    from reasoning_rl.pipeline import check_refs

    cfg = C.load(str(Path(__file__).parent.parent / "configs" / "r1_pipeline.yaml"), overrides=[LORA])
    i = [s.kind for s in cfg.stages].index("reward_model")
    with pytest.raises(ConfigError, match=rf"stages\[{i}\]\.kind: a reward_model stage does not train LoRA adapters"):
        check_refs(cfg)
    check_refs(C.load(str(Path(__file__).parent.parent / "configs" / "quickstart_ppo.yaml"), overrides=[LORA]))


def _saved_state(sdir: Path, step: int) -> dict:
    """The shapes of a checkpoint step's policy item (params and optimizer state), by path."""
    import orbax.checkpoint as ocp

    meta = ocp.StandardCheckpointer().metadata(sdir / str(step) / "state")
    meta = dict(getattr(meta, "item_metadata", meta))
    return {k: {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(meta[k])}
            for k in ("params", "opt_state")}


@pytest.mark.slow
def test_lora_ppo_stage_trains_adapters_over_the_frozen_base_and_resumes_exactly(tmp_path):
    """A ppo stage with model.lora: the base is bit for bit unchanged after the steps (and not copied), the
    adapters trained, the policy's optimizer state and checkpoints cover the adapters only, the critic is a full
    model, a stage resumed from its step-2 checkpoint ends exactly where the uninterrupted one does, and export
    writes the policy with its adapters merged and the critic as a value model."""
    from reasoning_rl.metrics import read_metrics
    from reasoning_rl.pipeline import restore_params
    from reasoning_rl.stages.ppo import restore_critic, run_ppo

    def go(d, steps_list):
        cfg = C.load(TINY_PPO, overrides=[LORA, "checkpoint.every=2"])
        rt = Runtime(cfg, d)
        init = rt.init_params()
        base0 = _np(lora.split(init)[0])
        for steps in steps_list:
            stage = dataclasses.replace(cfg.stages[1], steps=steps)
            w = MetricsWriter(rt.run_dir)
            params, _ = run_ppo(rt, stage, init, w, progress=False)
            w.close()
        return rt, stage, init, base0, params

    rt, stage, init, base0, straight = go(tmp_path / "a", [4])
    base, ad = lora.split(straight)
    for a, b in zip(base0, _np(base)):
        np.testing.assert_array_equal(a, b)  # bit for bit
    assert all(x is y for x, y in zip(jax.tree.leaves(base), jax.tree.leaves(lora.split(init)[0])))  # no copy
    b_leaves = [np.asarray(x) for p, x in lora.hf_save_flat(ad).items() if p[-1].endswith("_lora_b")]
    assert b_leaves and all(np.abs(b).max() > 0 for b in b_leaves)  # B left zero: the adapters trained
    recs = [r for r in read_metrics(rt.run_dir) if r["stage"] == "ppo" and "held_out/problems" not in r]
    assert [r["step"] for r in recs] == [1, 2, 3, 4] and recs[-1]["values_mean"] != 0.0
    assert recs[0]["kl"] == 0.0 and recs[-1]["kl"] > 0  # the reference is the base: the policy moved away from it
    assert max(r["logprob_gap"] for r in recs) < 1e-5  # merged sampling, unmerged training
    sdir = rt.run_dir / "checkpoints" / "ppo"
    saved = _saved_state(sdir, 4)
    n_ad, n_base = lora.count(straight)
    assert all("_lora_" in k for k in saved["params"]) and sum(np.prod(s) for s in saved["params"].values()) == n_ad
    assert sum(np.prod(s) for s in saved["opt_state"].values() if len(s) >= 1) == 2 * n_ad < n_base
    _, critic = restore_critic(rt, stage, sdir, 2)
    assert not lora.has_adapters(critic) and lora.count(critic["backbone"])[1] == n_base  # a full model

    _, _, _, _, resumed = go(tmp_path / "b", [2, 4])  # the second call resumes the step-2 checkpoint
    for a, b in zip(_np(straight), _np(resumed)):
        np.testing.assert_array_equal(a, b)
    timing = {"seconds", "sample_s", "update_s", "gen_tokens_per_s", "tokens_per_s", "eval_s"}
    assert [r["step"] for r in read_metrics(tmp_path / "b") if "held_out/problems" in r] == [0, 3]  # eval.every: 3
    strip = lambda d: [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(d)]
    assert strip(tmp_path / "b") == strip(rt.run_dir)
    _, critic_b = restore_critic(rt, stage, tmp_path / "b" / "checkpoints" / "ppo", 2)
    for a, b in zip(_np(critic), _np(critic_b)):
        np.testing.assert_array_equal(a, b)
    back, step = restore_params(rt, sdir, stage, 2)  # the adapters, joined onto the base the checkpoint names
    assert step == 4
    for a, b in zip(_np(straight), _np(back)):
        np.testing.assert_array_equal(a, b)

    # export: the policy with its adapters merged, the critic as a value model beside it
    import argparse

    from reasoning_rl.models import load_pretrained
    from reasoning_rl.models.value import load_value_head

    from reasoning_rl.stages.checkpoint_eval import run_export

    C.dump(rt.cfg, rt.run_dir / "config.yaml")
    out = tmp_path / "export"
    run_export(argparse.Namespace(target=str(rt.run_dir), stage="ppo", out=str(out), dtype=None))
    exported = load_pretrained(out)
    assert not lora.has_adapters(exported.params)
    want = lora.hf_save_flat(jax.jit(lambda p: lora.merge(rt.mdef, p)[1])(straight))
    got = lora.hf_save_flat(exported.params)
    for k, v in want.items():  # (the loaded family may add zero biases this model has not)
        np.testing.assert_array_equal(np.asarray(v), np.asarray(got[k]), err_msg=str(k))
    assert json.loads((out / "critic" / "config.json").read_text())["num_labels"] == 1
    np.testing.assert_array_equal(np.asarray(load_value_head(out / "critic")["kernel"]),
                                  np.asarray(critic["head"]["kernel"]))
