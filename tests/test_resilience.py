"""Training that survives: SIGTERM preemption, damaged checkpoints, failed saves."""

import errno
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

from helpers import tiny_model
from reasoning_rl.algorithms.steps import init_state, make_optimizer
from reasoning_rl.checkpoint import CheckpointError, StageCheckpointer
from reasoning_rl.config import OptimizerConfig
from reasoning_rl.metrics import read_metrics

TINY = str(Path(__file__).parent / "configs" / "tiny.yaml")
TIMING = {"seconds", "sample_s", "update_s", "gen_tokens_per_s", "tokens_per_s"}


def strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "reasoning_rl", "run", TINY, "--no-progress", *args],
                          capture_output=True, text=True, timeout=400, **kw)


def start_and_signal(run_dir: Path, sig: int, at_step: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "reasoning_rl", "run", TINY, "--no-progress", "--run-dir",
                             str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        recs = read_metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []
        if any(r["stage"] == "grpo" and r["step"] >= at_step for r in recs):
            os.kill(proc.pid, sig)
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("run ended before the signal could be sent")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref") / "run"
    p = cli("--run-dir", str(d))
    assert p.returncode == 0, p.stderr[-3000:]
    return d


@pytest.mark.slow
def test_sigterm_checkpoints_step_in_flight_then_resume_matches(reference, tmp_path):
    d = tmp_path / "run"
    proc = start_and_signal(d, signal.SIGTERM, at_step=3)
    t0 = time.time()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    assert time.time() - t0 < 60  # well inside a preemption grace period
    last = max(r["step"] for r in read_metrics(d) if r["stage"] == "grpo")
    steps = sorted(int(p.name) for p in (d / "checkpoints" / "grpo").iterdir() if p.name.isdigit())
    assert steps[-1] == last  # the step in flight was checkpointed, not only the periodic ones
    p = cli("--run-dir", str(d), "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert strip(read_metrics(d)) == strip(read_metrics(reference))


@pytest.mark.slow
def test_damaged_latest_checkpoint_is_skipped(reference, tmp_path):
    d = tmp_path / "run"
    proc = start_and_signal(d, signal.SIGTERM, at_step=3)
    proc.communicate(timeout=120)
    gdir = d / "checkpoints" / "grpo"
    steps = sorted(int(p.name) for p in gdir.iterdir() if p.name.isdigit())
    assert len(steps) >= 2
    latest = gdir / str(steps[-1])
    files = sorted(p for p in (latest / "state").rglob("*") if p.is_file() and p.stat().st_size > 0)
    for f in files:  # truncate every array file of the newest step
        with open(f, "r+b") as fh:
            fh.truncate(max(1, f.stat().st_size // 3))
    p = cli("--run-dir", str(d), "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"checkpoint step {steps[-1]}" in p.stderr and "damaged" in p.stderr
    assert strip(read_metrics(d)) == strip(read_metrics(reference))


def test_failed_save_is_a_clear_error_and_earlier_steps_restore(tmp_path, monkeypatch):
    mdef, params = tiny_model()
    tx = make_optimizer(OptimizerConfig(), 1)
    state = init_state(params, tx, 0)
    ck = StageCheckpointer(tmp_path / "ck", keep=3)
    ck.save(1, state, {"data": {"next_index": 1}})
    ck.wait()

    import orbax.checkpoint as ocp

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ocp.CheckpointManager, "save", no_space)
    with pytest.raises(CheckpointError, match="step 2.*No space left"):
        ck.save(2, state, {"data": {"next_index": 2}})
    monkeypatch.undo()
    got = StageCheckpointer(tmp_path / "ck", keep=3).restore(state)
    assert got is not None and got[0] == 1 and got[2]["data"] == {"next_index": 1}
    for a, b in zip(jax.tree.leaves(got[1].params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _restore_raw(step_dir: Path) -> dict:
    import orbax.checkpoint as ocp
    return ocp.StandardCheckpointer().restore(step_dir / "state")


@pytest.mark.slow
def test_injected_nan_step_is_skipped_and_the_run_finishes(tmp_path):
    d = tmp_path / "run"
    p = cli("--run-dir", str(d), "--set", "stages.grpo.optimizer.inject_nan_steps=[3]")
    assert p.returncode == 0, p.stderr[-3000:]
    grpo = {r["step"]: r for r in read_metrics(d) if r["stage"] == "grpo"}
    assert sorted(grpo) == list(range(1, 7))
    assert [grpo[s]["skipped"] for s in range(1, 7)] == [0, 0, 1, 0, 0, 0]
    assert grpo[3]["grad_norm"] is None  # NaN is written as null
    assert all(np.isfinite(grpo[s]["grad_norm"]) for s in (1, 2, 4, 5, 6))
    assert json.loads((d / "summary.json").read_text())["grpo"]["pass@1"] >= 0.0


@pytest.mark.slow
def test_consecutive_nan_steps_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path):
    d = tmp_path / "run"
    p = cli("--run-dir", str(d), "--set", "stages.grpo.optimizer.inject_nan_steps=[3,4,5]",
            "--set", "stages.grpo.optimizer.max_consecutive_skips=3")
    assert p.returncode == 1, p.stderr[-3000:]
    err = [ln for ln in p.stderr.splitlines() if "consecutive" in ln]
    assert err and "3 consecutive steps" in err[-1] and "step 5" in err[-1], p.stderr[-2000:]
    gdir = d / "checkpoints" / "grpo"
    steps = sorted(int(q.name) for q in gdir.iterdir() if q.name.isdigit())
    assert steps == [2, 4]  # step 4's save happened mid-streak; nothing after the failure
    good, mid = _restore_raw(gdir / "2"), _restore_raw(gdir / "4")
    for a, b in zip(jax.tree.leaves(good["params"]), jax.tree.leaves(mid["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the skipped updates changed nothing
        assert np.all(np.isfinite(np.asarray(a)))
    assert not (d / "checkpoints" / "grpo" / "manifest.json").exists()  # the stage is not marked complete
    assert "grpo" not in json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else True


def test_retention_keeps_the_last_complete_step_until_a_newer_one_is_complete(tmp_path, monkeypatch):
    mdef, params = tiny_model()
    tx = make_optimizer(OptimizerConfig(), 1)
    state = init_state(params, tx, 0)
    ck = StageCheckpointer(tmp_path / "ck", keep=1)
    ck.save(1, state, {"data": {"next_index": 1}})
    ck.wait()

    import orbax.checkpoint as ocp

    def fail_commit(self, step):  # the background write of the newer step never completes
        raise OSError(errno.EIO, "I/O error while committing")

    monkeypatch.setattr(ocp.CheckpointManager, "_finalize_checkpoint", fail_commit)
    try:
        ck.save(2, state, {"data": {"next_index": 2}})
        ck.wait()
    except CheckpointError:
        pass
    monkeypatch.undo()
    assert (tmp_path / "ck" / "1").is_dir()  # keep=1, yet step 1 survives: step 2's save never finalized
    got = StageCheckpointer(tmp_path / "ck", keep=1).restore(state, step=1)
    assert got is not None and got[0] == 1 and got[2]["data"] == {"next_index": 1}
