"""PPO: the critic's values, GAE in the stage, the step (micro-batch invariance, critic warmup), and end-to-end
runs of a ppo stage (kill -9 and --resume, 8 devices vs 1, bad input, export of the critic)."""

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from helpers import compared_env, run_here, tiny_model
from reasoning_rl.algorithms import advantages as A
from reasoning_rl.algorithms.steps import (TrainState, init_state, make_optimizer, make_ppo_grad, make_ppo_step,
                                           make_value_fn)
from reasoning_rl.config import AlgorithmConfig, OptimizerConfig
from reasoning_rl.metrics import read_metrics
from reasoning_rl.models.value import init_value_head
from reasoning_rl.stages.ppo import advantages as ppo_advantages
from reasoning_rl.data.batching import trim_completions
from test_steps import padded, rollout

ROOT = Path(__file__).parent.parent
TINY_PPO = str(Path(__file__).parent / "configs" / "tiny_ppo.yaml")
TIMING = {"seconds", "sample_s", "update_s", "gen_tokens_per_s", "tokens_per_s", "eval_s"}


@functools.lru_cache(maxsize=1)
def base():
    """One tiny model, rollout batch (ragged rows) and jitted value function shared by the step tests."""
    mdef, params = tiny_model(n_layers=1)
    return mdef, params, rollout(mdef, params, n_prompts=4, g=2), jax.jit(make_value_fn(mdef))


def critic_of(params, seed=1):
    """A critic on a copy of the policy backbone with a non-zero head (values that vary)."""
    head = init_value_head(32)
    head["kernel"] = np.random.default_rng(seed).normal(0, 0.3, (32, 1)).astype(np.float32)
    return {"backbone": jax.tree.map(np.asarray, params), "head": head}


def ppo_batch(critic):
    _, _, b, value_fn = base()
    b = dict(b)
    values = np.asarray(value_fn(critic, b["tokens"], b["valid"], b["mask"]))
    values = np.where(b["mask"], values, 0.0).astype(np.float32)
    rewards = np.random.default_rng(2).normal(size=len(values)).astype(np.float32)
    a = AlgorithmConfig(beta=0.05, kl_in="reward", gamma=0.95, lam=0.9)
    adv, ret, _ = ppo_advantages(a, rewards, values, b)
    b.update(adv=adv, returns=ret, old_values=values + 0.3 * np.random.default_rng(3).normal(size=values.shape)
             .astype(np.float32))  # a behaviour critic that differs, so the value clipping engages
    return b


def test_zero_value_gamma_lam_one_no_kl_gives_the_reinforce_advantages():
    """A critic with a zero head (as a fresh one) values every state at exactly 0; with gamma = lam = 1 and no
    KL, PPO's advantages are then each row's reward on every token (REINFORCE), and whitened, REINFORCE++'s."""
    _, params, b, value_fn = base()
    critic = {"backbone": params, "head": init_value_head(32)}
    values = np.asarray(value_fn(critic, b["tokens"], b["valid"], b["mask"]))
    assert np.all(values == 0.0)
    rewards = np.random.default_rng(0).normal(size=8).astype(np.float32)
    mask = b["mask"]
    assert len(set(mask.sum(1).tolist())) > 1  # ragged rows: stop tokens mid-batch
    a = AlgorithmConfig(gamma=1.0, lam=1.0, beta=0.0, whiten_advantages=False)
    adv, ret, m = ppo_advantages(a, rewards, values, b)
    np.testing.assert_array_equal(adv, np.where(mask, rewards[:, None], 0.0).astype(np.float32))
    np.testing.assert_array_equal(ret, adv)
    adv_w, _, _ = ppo_advantages(dataclasses.replace(a, whiten_advantages=True), rewards, values, b)
    np.testing.assert_allclose(adv_w, A.compute_advantages("reinforce++", rewards, 2, mask=mask), rtol=1e-6,
                               atol=1e-7)
    assert m["values_mean"] == 0.0 and m["explained_variance"] == pytest.approx(0.0, abs=1e-6)


def test_kl_in_the_reward_enters_the_advantages():
    b = base()[2]
    values = np.zeros(b["mask"].shape, np.float32)
    rewards = np.ones(8, np.float32)
    a = AlgorithmConfig(gamma=1.0, lam=1.0, beta=0.5, kl_in="reward", kl_estimator="k1", whiten_advantages=False)
    adv, _, m = ppo_advantages(a, rewards, values, b)
    kl = b["old_logp"] - b["ref_logp"]  # k1 of the batch's behaviour and reference log-probs
    pen = np.where(b["mask"], -0.5 * kl, 0.0)
    expect = np.where(b["mask"], 1.0 + np.flip(np.cumsum(np.flip(pen, 1), 1), 1), 0.0)
    np.testing.assert_allclose(adv, expect, rtol=1e-5, atol=1e-6)
    assert m["kl"] == pytest.approx(kl[b["mask"]].mean(), rel=1e-5)


@pytest.mark.parametrize("loss,extra", [("grpo", {}), ("cispo", {"eps_low": 1.0})])
def test_ppo_gradient_is_micro_batch_invariant(loss, extra):
    """Policy and critic gradients of one mini-batch are the same for 1 or 4 micro-batches (each part
    divided once by its own global count), with each token-level policy loss."""
    mdef, params, _, _ = base()
    critic = critic_of(params)
    batch = ppo_batch(critic)
    both = {"policy": params, "critic": critic}
    out = {}
    for micro in (1, 4):
        cfg = AlgorithmConfig(beta=0.05, kl_in="loss", eps_high=0.28, vf_clip=0.1, micro_batches=micro, loss=loss,
                              **extra)
        out[micro] = jax.jit(make_ppo_grad(mdef, mdef, cfg, 1.0, group=2))(both, batch)
    if loss != "grpo" or extra:  # the option reaches the policy's loss: its gradient is not the plain clip's
        plain = AlgorithmConfig(beta=0.05, kl_in="loss", eps_high=0.28, vf_clip=0.1)
        g0, _ = jax.jit(make_ppo_grad(mdef, mdef, plain, 1.0, group=2))(both, batch)
        diff = max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(g0["policy"]),
                                                              jax.tree.leaves(out[1][0]["policy"])))
        assert diff > 1e-6
    g1, a1 = out[1]
    assert float(a1["vf_clip_frac"][0]) > 0 and float(a1["clip_frac"][0]) >= 0
    for micro in (4,):
        g, a = out[micro]
        for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g)):
            assert np.abs(x - y).max() <= 5e-6 * (np.abs(x).max() + 1e-12)
        for k, n in (("loss_sum", "count"), ("vf_sum", "vf_count"), ("count", None), ("vf_count", None)):
            # a sum over tokens whose terms cancel: each token's term may differ in its last bits between the
            # two programs (other shapes, other blockings), so the slack is per token, not relative to the sum
            slack = 1e-6 * float(a1[n]) if n else 0.0
            assert float(a[k]) == pytest.approx(float(a1[k]), rel=1e-5, abs=slack + 1e-7), k
    assert any(np.abs(np.asarray(x)).max() > 0 for x in jax.tree.leaves(g1["critic"]["head"]))


def test_ppo_update_on_the_trimmed_batch_equals_the_whole_budget():
    """As the stage does it (values, GAE with the KL in the reward, the update), a batch laid out for a budget
    of 40 and the same batch cut to its longest completion give the same gradients and figures."""
    mdef, params, b, value_fn = base()
    critic = critic_of(params)
    a = AlgorithmConfig(beta=0.05, kl_in="reward", gamma=0.95, lam=0.9, vf_clip=0.1,
                        aggregation="seq-mean-token-sum-norm")
    rewards = np.random.default_rng(2).normal(size=len(b["mask"])).astype(np.float32)
    whole = padded(b, 30)
    grad = jax.jit(make_ppo_grad(mdef, mdef, a, 1.0, group=2, budget=40))
    out = []
    for x in (whole, trim_completions(whole, 16)):
        x = dict(x, ref_logp=x["sampler_logp"] - 0.1 * x["mask"])
        values = np.asarray(value_fn(critic, x["tokens"], x["valid"], x["mask"]))
        values = np.where(x["mask"], values, 0.0).astype(np.float32)
        adv, ret, am = ppo_advantages(a, rewards, values, x)
        x.update(adv=adv, returns=ret, old_values=values)
        out.append((grad({"policy": params, "critic": critic}, x), adv, am))
    ((g1, a1), adv1, am1), ((g2, a2), adv2, am2) = out
    assert adv2.shape[1] == 16
    np.testing.assert_allclose(adv2, adv1[:, :16], rtol=1e-5, atol=1e-6)
    assert not adv1[:, 16:].any()
    for k in am1:
        assert am2[k] == pytest.approx(am1[k], rel=1e-5, abs=1e-6), k
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        assert np.abs(x - y).max() <= 1e-5 * (np.abs(x).max() + 1e-12)
    for k in ("loss_sum", "count", "vf_sum", "vf_count"):
        assert float(a2[k]) == pytest.approx(float(a1[k]), rel=1e-5, abs=1e-7), k


def test_critic_warmup_trains_the_critic_only_then_both():
    mdef, params, _, _ = base()
    critic = critic_of(params)
    batch = ppo_batch(critic)
    ocfg = OptimizerConfig(lr=1e-3)
    tx, ctx = make_optimizer(ocfg, 4), make_optimizer(ocfg, 4)
    a = AlgorithmConfig(vf_clip=0.0)
    step = jax.jit(make_ppo_step(mdef, mdef, a, ocfg, tx, ocfg, ctx, 1.0, group=2, warmup_updates=1))
    s0 = init_state(params, tx, 0)
    s0 = TrainState(s0.params, s0.opt_state, s0.step, s0.rng, s0.skipped,
                    {"params": critic, "opt_state": ctx.init(critic)})
    s1, m1 = step(s0, batch)
    s2, m2 = step(s1, batch)
    same = lambda x, y: all(np.array_equal(np.asarray(p), np.asarray(q))
                            for p, q in zip(jax.tree.leaves(x), jax.tree.leaves(y)))
    assert int(m1["policy_updated"]) == 0 and int(m2["policy_updated"]) == 1
    assert same(s0.params, s1.params) and same(s0.opt_state, s1.opt_state)
    assert not same(s0.critic["params"], s1.critic["params"])
    assert not same(s1.params, s2.params) and not same(s1.critic["params"], s2.critic["params"])
    assert float(m2["value_loss"]) < float(m1["value_loss"])  # the critic moved towards the returns


# ------------------------------------------------------------------------------------------ end to end


def run_cli(*args, config=TINY_PPO):
    """``reasoning-rl run CONFIG --no-progress ARGS`` in this process (helpers.run_here)."""
    return run_here("run", config, "--no-progress", *args)


def strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def critic_params(run_dir: Path, step: int | None = None) -> list[np.ndarray]:
    import orbax.checkpoint as ocp

    d = run_dir / "checkpoints" / "ppo"
    last = step or max(int(q.name) for q in d.iterdir() if q.name.isdigit())
    path = d / str(last) / "critic"
    ck = ocp.StandardCheckpointer()
    meta = ck.metadata(path)
    meta = getattr(meta, "item_metadata", meta)
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), dict(meta))
    tree = ck.restore(path, target)
    return [np.asarray(x) for x in jax.tree.leaves(tree["params"])]


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("ppo") / "run"
    p = run_cli("--run-dir", str(d))
    assert p.returncode == 0, p.stderr[-3000:]
    return d


@pytest.mark.slow
def test_ppo_stage_runs_and_logs_its_metrics(ppo_run):
    recs = [r for r in read_metrics(ppo_run) if r["stage"] == "ppo" and "held_out/problems" not in r]
    assert [r["step"] for r in recs] == list(range(1, 7))
    curve = [(r["step"], r["held_out/pass@1"]) for r in read_metrics(ppo_run) if "held_out/problems" in r]
    for key in ("value_loss", "explained_variance", "vf_clip_frac", "returns_mean", "returns_std",
                "advantages_mean", "advantages_std", "kl", "entropy", "clip_frac", "logprob_gap", "tokens_per_s",
                "loss", "grad_norm", "critic_grad_norm", "reward_mean"):
        assert key in recs[0], key
    assert max(r["logprob_gap"] for r in recs) < 1e-4
    assert recs[0]["values_mean"] == 0.0 and recs[-1]["values_mean"] != 0.0  # the critic learned something
    assert any(r["kl"] > 0 for r in recs[1:])
    assert [r["entropy_coef"] for r in recs] == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04, 0.05])
    summary = json.loads((ppo_run / "summary.json").read_text())
    assert "pass@1" in summary["ppo"]
    assert [s for s, _ in curve] == [0, 3, 6] and curve[-1][1] == summary["ppo"]["pass@1"]  # eval.every: 3
    assert (ppo_run / "checkpoints" / "ppo" / "6" / "critic").is_dir()


@pytest.mark.slow
def test_ppo_sigkill_then_resume_matches_uninterrupted(ppo_run, tmp_path):
    d = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "reasoning_rl", "run", TINY_PPO, "--no-progress", "--run-dir",
                             str(d)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    killed = False
    while time.time() < deadline and proc.poll() is None:
        recs = read_metrics(d) if (d / "metrics.jsonl").exists() else []
        if any(r["stage"] == "ppo" and r["step"] >= 3 for r in recs):  # a checkpoint at 2, killed in 3 or 4
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed, "the run finished before it could be killed"
    p = run_cli("--run-dir", str(d), "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert strip(read_metrics(d)) == strip(read_metrics(ppo_run))  # value loss, explained variance included
    for x, y in zip(critic_params(d), critic_params(ppo_run)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_ppo_on_8_devices_fsdp_tensor_equals_one_device(ppo_run, tmp_path):
    env = compared_env(8)
    d = tmp_path / "mesh"
    p = subprocess.run([sys.executable, "-m", "reasoning_rl", "run", TINY_PPO, "--no-progress", "--run-dir", str(d),
                        "--set", "mesh.data=2", "--set", "mesh.fsdp=2", "--set", "mesh.tensor=2"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = read_metrics(ppo_run), read_metrics(d)
    assert [(r["stage"], r["step"]) for r in a] == [(r["stage"], r["step"]) for r in b]
    for ra, rb in zip(a, b):
        for k in ("loss", "value_loss", "grad_norm", "critic_grad_norm", "reward_mean", "returns_mean",
                  "advantages_std", "explained_variance", "kl", "entropy", "response_len", "held_out/pass@1",
                  "held_out/mean_response_tokens"):
            if k in ra and ra[k] is not None:
                assert rb[k] == pytest.approx(ra[k], rel=1e-4, abs=1e-5), (ra["stage"], ra["step"], k)
    for x, y in zip(critic_params(ppo_run), critic_params(d)):
        assert np.abs(x - y).max() <= 1e-4 * max(np.abs(x).max(), 1e-6)
    man = json.loads((d / "checkpoints" / "ppo" / "manifest.json").read_text())
    assert man["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2, "expert": 1}


@pytest.mark.parametrize("sets,key", [
    (["stages.ppo.critic=null"], "stages[1].critic:"),
    (["algorithm.gamma=1.5"], "stages[1].algorithm.gamma:"),
    (["algorithm.lam=-0.1"], "stages[1].algorithm.lam:"),
    (["stages.ppo.critic_model.vocab_size=64"], "stages[1].critic_model:"),
], ids=["no-critic", "gamma", "lam", "vocab"])
def test_bad_ppo_config_is_one_line_and_exit_2_before_compute(tmp_path, sets, key):
    d = tmp_path / "run"
    p = run_cli("--run-dir", str(d), *[a for s in sets for a in ("--set", s)])
    assert p.returncode == 2, p.stderr[-2000:]
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("config error")]
    assert len(err) == 1 and key in err[0], p.stderr[-2000:]
    assert not (d / "metrics.jsonl").exists()


@pytest.mark.slow
def test_export_writes_the_critic_as_a_token_classification_value_model(ppo_run, tmp_path):
    """``reasoning-rl export`` of a ppo stage writes the critic beside the policy; transformers loads it as
    Qwen2ForTokenClassification and its per-token logits are our critic's values."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from reasoning_rl.models import load_pretrained
    from reasoning_rl.models.safetensors_io import SafetensorsFile
    from reasoning_rl.models.value import load_value_head

    from reasoning_rl.algorithms.logprobs import target_values

    out = tmp_path / "export"
    p = run_here("export", str(ppo_run), str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    cdir = out / "critic"
    conf = json.loads((cdir / "config.json").read_text())
    assert conf["architectures"] == ["Qwen2ForTokenClassification"] and conf["num_labels"] == 1
    ours = critic_params(ppo_run)
    index = json.loads((cdir / "model.safetensors.index.json").read_text())["weight_map"]
    score = SafetensorsFile(cdir / index["score.weight"])
    head = {"kernel": np.asarray(score.get("score.weight")).T, "bias": np.asarray(score.get("score.bias"))}
    assert any(np.array_equal(head["kernel"], x) for x in ours)  # the checkpoint's trained head
    m = load_pretrained(cdir)  # the backbone; the score head is known to belong to a value model
    loaded = load_value_head(cdir)  # what a critic_model: <this dir> starts from
    np.testing.assert_array_equal(np.asarray(loaded["kernel"]), head["kernel"])
    hf = transformers.AutoModelForTokenClassification.from_pretrained(cdir, dtype=torch.float32).eval()
    tokens = np.array([[5, 7, 9, 11, 4, 6, 8, 3]], np.int32) % conf["vocab_size"]
    valid = np.ones_like(tokens, bool)
    with torch.no_grad():
        logits = hf(torch.tensor(tokens, dtype=torch.long)).logits[0, :, 0].numpy()
    values = np.asarray(target_values(m.mdef, {"backbone": m.params, "head": head}, tokens, valid, 7))[0]
    np.testing.assert_allclose(values, logits[:7], rtol=1e-4, atol=1e-5)  # V before token i+1 = logits at i
    assert np.abs(logits).max() > 0
    # --step: a kept earlier checkpoint (steps 4 and 6 are kept), policy and critic of that step
    at4 = tmp_path / "at4"
    p = run_here("export", str(ppo_run), str(at4), "--step", "4")
    assert p.returncode == 0, p.stderr[-3000:]
    index = json.loads((at4 / "critic" / "model.safetensors.index.json").read_text())["weight_map"]
    kernel4 = np.asarray(SafetensorsFile(at4 / "critic" / index["score.weight"]).get("score.weight")).T
    assert any(np.array_equal(kernel4, x) for x in critic_params(ppo_run, 4))
    assert not any(np.array_equal(kernel4, x) for x in ours)  # not the final step's head
    p = run_here("export", str(ppo_run), str(tmp_path / "at3"), "--step", "3")
    assert p.returncode == 2 and "--step: stage ppo has no checkpoint step 3" in p.stderr
    assert "(kept: 4, 6;" in p.stderr
    assert not (tmp_path / "at3").exists()


@pytest.mark.slow
def test_ppo_with_a_smaller_separate_critic_model(tmp_path):
    """critic_model: a narrower backbone of its own (fresh, the policy's tokenizer) under the value head."""
    d = tmp_path / "run"
    p = run_cli("--run-dir", str(d), "--set", "stages.ppo.critic_model={d_model: 16, n_heads: 2, n_kv_heads: 1, "
                "ffn_dim: 24}", "--set", "stages.ppo.steps=2", "--set", "checkpoint.every=1")
    assert p.returncode == 0, p.stderr[-3000:]
    recs = [r for r in read_metrics(d) if r["stage"] == "ppo" and "held_out/problems" not in r]
    assert len(recs) == 2 and recs[1]["values_mean"] != 0.0 and recs[0]["critic_grad_norm"] > 0
    shapes = sorted(x.shape for x in critic_params(d))
    assert (16, 1) in shapes and not any(32 in s or 64 in s for s in shapes)  # its own widths, not the policy's


def test_ppo_reference_resets(tmp_path):
    """algorithm.ref_reset in a ppo stage (its KL in the reward): after steps 2 and 4 the reference is the
    policy, so the step after each samples from the reference itself and measures no KL."""
    d = tmp_path / "run"
    p = run_cli("--run-dir", str(d), "--set", "stages.ppo.algorithm.ref_reset.every=2", "--set", "stages.ppo.steps=4",
                "--set", "stages.ppo.eval.every=0")
    assert p.returncode == 0, p.stderr[-3000:]
    recs = {r["step"]: r for r in read_metrics(d) if r["stage"] == "ppo" and "kl" in r}
    assert [s for s in sorted(recs) if recs[s].get("ref_reset")] == [2, 4]
    assert recs[3]["kl"] < 1e-6 < recs[2]["kl"] and recs[4]["kl"] > 1e-6, {s: r["kl"] for s, r in recs.items()}
