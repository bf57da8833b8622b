"""Asynchronous rollouts (rollout.mode async): the sampler on its own device decodes ahead of the trainer.

The schedule is fixed (step s trains on the batch sampled after step s-1-k), so k = 0 is the synchronous run
exactly, and a killed and resumed run is the uninterrupted one (the batches in flight ride in the checkpoint).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reasoning_rl.algorithms.losses import off_policy_weights
from reasoning_rl.metrics import read_metrics

TINY = str(Path(__file__).parent / "configs" / "tiny.yaml")
SPLIT = ["mesh.cpu_devices=2", "mesh.rollout_devices=1"]
# with a KL reference, a held-out curve (evaluated on the trainer's device while the sampler decodes) and adaptive
# entropy control (a target above any entropy here: the coefficient, host state, rises by 0.01 every step)
ASYNC = ["rollout.mode=async", "rollout.max_staleness=1", "algorithm.beta=0.02", "eval.every=2",
         "algorithm.entropy_target=10.0", "algorithm.entropy_coef_step=0.01"]
TIMING = {"seconds", "sample_s", "update_s", "gen_tokens_per_s", "tokens_per_s", "wait_s", "sampler_busy_frac",
          "trainer_busy_frac", "eval_s"}


def run_cli(run_dir, *sets, resume=False, timeout=600):
    args = [a for s in [*SPLIT, *sets] for a in ("--set", s)]
    return subprocess.run([sys.executable, "-m", "reasoning_rl", "run", TINY, "--no-progress", "--run-dir",
                           str(run_dir), *args, *(["--resume"] if resume else [])],
                          capture_output=True, text=True, timeout=timeout)


def grpo(d, curve: bool = True):
    """The grpo stage's records without timings (``curve=False``: without its held-out points)."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(d)
            if r["stage"] == "grpo" and (curve or "held_out/problems" not in r)]


@pytest.fixture(scope="module")
def async_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("async") / "run"
    p = run_cli(d, *ASYNC)
    assert p.returncode == 0, p.stderr[-3000:]
    return d


@pytest.mark.slow
def test_staleness_zero_is_the_synchronous_run(tmp_path):
    p = run_cli(tmp_path / "sync", "rollout.mode=sync")
    assert p.returncode == 0, p.stderr[-3000:]
    q = run_cli(tmp_path / "async", "rollout.mode=async", "rollout.max_staleness=0", "stages.grpo.eval.every=2")
    assert q.returncode == 0, q.stderr[-3000:]
    sync, asy = grpo(tmp_path / "sync"), grpo(tmp_path / "async", curve=False)  # a curve changes no number
    assert len(sync) == len(asy) == 6
    for a, b in zip(sync, asy):
        assert b["staleness"] == 0
        assert {k: b[k] for k in a} == a  # every metric of the synchronous run, to the bit
    s1 = json.loads((tmp_path / "sync" / "summary.json").read_text())["grpo"]
    s2 = json.loads((tmp_path / "async" / "summary.json").read_text())["grpo"]
    assert s1["pass@1"] == s2["pass@1"]
    curve = [r for r in grpo(tmp_path / "async") if "held_out/problems" in r]
    assert [r["step"] for r in curve] == [0, 2, 4, 6] and curve[-1]["held_out/pass@1"] == s2["pass@1"]


@pytest.mark.slow
def test_async_run_trains_on_stale_batches_with_correction(async_run):
    recs = [r for r in read_metrics(async_run) if r["stage"] == "grpo" and "held_out/problems" not in r]
    assert [r["staleness"] for r in recs] == [0, 1, 1, 1, 1, 1]  # step 1 samples with the initial policy
    assert [r["entropy_coef"] for r in recs] == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04, 0.05])
    for r in recs[1:]:
        assert 0 < r["is_ratio_mean"] < 10 and r["is_ratio_max"] >= r["is_ratio_mean"]
        assert 0 <= r["is_truncated_frac"] <= 1
    for r in recs:
        assert 0 < r["sampler_busy_frac"] <= 1 and 0 < r["trainer_busy_frac"] <= 1
        assert np.isfinite(r["loss"])


@pytest.mark.slow
def test_async_stage_with_several_updates_per_batch_corrects_with_a_separate_forward(tmp_path):
    """Two mini-batches per rollout batch: the proximal log-probs cannot come from an update's own forward
    (the second update's params differ), so the stage computes them once before the updates."""
    p = run_cli(tmp_path / "run", *ASYNC, "algorithm.mini_batches=2", "stages.grpo.steps=3")
    assert p.returncode == 0, p.stderr[-3000:]
    recs = grpo(tmp_path / "run", curve=False)
    assert [r["staleness"] for r in recs] == [0, 1, 1]
    for r in recs[1:]:
        assert 0 < r["is_ratio_mean"] < 10 and r["is_ratio_max"] >= r["is_ratio_mean"], r
        assert r["skipped"] == 0 and np.isfinite(r["loss"])


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_kill_then_resume_of_an_async_stage_matches_uninterrupted(async_run, tmp_path, sig):
    d = tmp_path / "run"
    args = [a for s in [*SPLIT, *ASYNC] for a in ("--set", s)]
    proc = subprocess.Popen([sys.executable, "-m", "reasoning_rl", "run", TINY, "--no-progress", "--run-dir",
                             str(d), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, killed = time.time() + 300, False
    while time.time() < deadline and proc.poll() is None:
        recs = read_metrics(d) if (d / "metrics.jsonl").exists() else []
        if any(r["stage"] == "grpo" and r["step"] >= 3 for r in recs):  # a checkpoint at step 2 holds batch 3
            os.kill(proc.pid, sig)
            killed = True
            break
        time.sleep(0.05)
    rc = proc.wait(timeout=120)
    assert killed, "the run finished before it could be killed"
    if sig == signal.SIGTERM:  # the step in flight finishes, its checkpoint (with the batch ahead) is written
        assert rc == 75, proc.stderr.read()[-3000:]
    p = run_cli(d, *ASYNC, resume=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert grpo(d) == grpo(async_run)


def test_off_policy_weights_truncate_or_mask():
    prox = np.log(np.array([[0.5, 0.9, 0.2, 0.3]], np.float32))
    behav = np.log(np.array([[0.5, 0.3, 0.4, 0.3]], np.float32))
    mask = np.array([[True, True, True, False]])
    w, m = off_policy_weights(prox, behav, mask, "tis", 2.0)
    np.testing.assert_allclose(np.asarray(w), [[1.0, 2.0, 0.5, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(float(m["is_ratio_mean"]), (1 + 3 + 0.5) / 3, rtol=1e-6)
    np.testing.assert_allclose(float(m["is_ratio_max"]), 3.0, rtol=1e-6)
    np.testing.assert_allclose(float(m["is_truncated_frac"]), 1 / 3, rtol=1e-6)
    w, _ = off_policy_weights(prox, behav, mask, "decoupled", 2.0)
    np.testing.assert_allclose(np.asarray(w), [[1.0, 0.0, 0.5, 0.0]], rtol=1e-6)


def test_async_config_errors(tmp_path):
    p = subprocess.run([sys.executable, "-m", "reasoning_rl", "run", TINY, "--no-progress", "--run-dir",
                        str(tmp_path / "r"), "--set", "rollout.mode=async"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "mesh.rollout_devices" in p.stderr.strip().splitlines()[-1], p.stderr[-2000:]


@pytest.mark.parametrize("mode,micro", [("tis", 1), ("decoupled", 2)])
def test_proximal_logprobs_from_the_update_forward_equal_a_separate_forward(mode, micro):
    """A stale batch that gets one update: the step's own forward gives the proximal log-probs (no second
    forward); the gradient and the importance-ratio metrics equal the separate-forward path's."""
    import jax

    from helpers import tiny_model
    from reasoning_rl.algorithms.steps import make_grpo_grad, make_logprob_fn
    from reasoning_rl.config import AlgorithmConfig
    from test_steps import rollout

    mdef, params = tiny_model()
    batch = rollout(mdef, params)
    behav = batch["old_logp"]  # perturbed: a behaviour policy that differs from the current one
    cfg = AlgorithmConfig(off_policy=mode, tis_cap=1.5, micro_batches=micro, beta=0.05)
    prox = np.asarray(jax.jit(make_logprob_fn(mdef, 1.0))(params, batch["tokens"], batch["valid"], batch["mask"]))
    w, m_sep = off_policy_weights(prox, behav, batch["mask"], mode, 1.5)
    separate = dict(batch, old_logp=prox, is_weight=np.asarray(w))
    fused = {**{k: v for k, v in batch.items() if k != "sampler_logp"}, "behaviour_logp": behav}
    grad = jax.jit(make_grpo_grad(mdef, cfg, temperature=1.0))
    g1, a1 = grad(params, separate)
    g2, a2 = grad(params, fused)
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        assert np.abs(np.asarray(x) - np.asarray(y)).max() <= 1e-5 * (np.abs(np.asarray(x)).max() + 1e-12)
    assert float(a2["is_ratio_max"]) == pytest.approx(float(m_sep["is_ratio_max"]), rel=1e-5)
    for k in ("is_ratio_mean", "is_truncated_frac"):
        assert float(a2[k][0] / a2[k][1]) == pytest.approx(float(m_sep[k]), rel=1e-5, abs=1e-6)
    assert 0 < float(m_sep["is_truncated_frac"]) < 1  # the cap bites on some tokens, not all
    assert float(a1["loss_sum"]) == pytest.approx(float(a2["loss_sum"]), rel=1e-5)
