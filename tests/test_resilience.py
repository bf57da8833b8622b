"""Training that survives: SIGTERM preemption, damaged checkpoints, failed saves."""

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from helpers import run_here, tiny_model
from reasoning_rl.algorithms.steps import init_state, make_optimizer
from reasoning_rl.checkpoint import CheckpointError, StageCheckpointer
from reasoning_rl.config import ConfigError, OptimizerConfig
from reasoning_rl.metrics import read_metrics

TINY = str(Path(__file__).parent / "configs" / "tiny.yaml")
TIMING = {"seconds", "sample_s", "update_s", "gen_tokens_per_s", "tokens_per_s"}


def strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def cli(*args):
    """``reasoning-rl run tiny.yaml --no-progress ARGS`` in this process (helpers.run_here): the runs that are
    signalled are subprocesses (``start_and_signal``)."""
    return run_here("run", TINY, "--no-progress", *args)


def start_and_signal(run_dir: Path, sig: int, at_step: int, stage: str = "grpo", extra: tuple = (),
                     times: int = 1) -> subprocess.Popen:
    """Start a run and send ``sig`` once ``stage`` has logged ``at_step``. SIGINT goes to the whole process
    group, as a terminal's Ctrl-C does (reward worker processes get it too)."""
    proc = subprocess.Popen([sys.executable, "-m", "reasoning_rl", "run", TINY, "--no-progress", "--run-dir",
                             str(run_dir), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        recs = read_metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []
        if any(r["stage"] == stage and r["step"] >= at_step for r in recs):
            for i in range(times):
                if sig == signal.SIGINT:
                    os.killpg(proc.pid, sig)
                else:
                    os.kill(proc.pid, sig)
                time.sleep(0.2)
            return proc
        time.sleep(0.01)  # a tiny GRPO step takes ~10 ms: poll finer than a step, or the run may finish first
    proc.kill()
    raise AssertionError("run ended before the signal could be sent")


def saved_steps(stage_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in stage_dir.iterdir() if p.name.isdigit())


def snapshot(d: Path) -> dict:
    """Every path with its bytes and mtime; the run dir's lock is left out (each run that takes it writes its
    own pid there; it holds no data)."""
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else b"dir", p.stat().st_mtime_ns)
            for p in sorted(d.rglob("*")) if p != d / ".lock"}


def no_traceback(err: str) -> None:
    assert "Traceback" not in err and "Event loop is closed" not in err, err[-3000:]


def damage_arrays(step_dir: Path) -> None:
    """Truncate the array store's root manifest: the step's metadata still reads, its arrays do not."""
    f = step_dir / "state" / "manifest.ocdbt"
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size // 3)


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
def test_sigterm_outside_the_step_loops_exits_75_with_a_line_then_resume_matches(reference, tmp_path):
    """SIGTERM between the cold start's end and GRPO's first step (its plot, GRPO's start-up and compiling):
    no step loop handles it there, yet the run stops with exit status 75 (what a scheduler's requeue rule
    looks for) and one line, not killed by the signal (status 143, nothing in the log)."""
    d = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "reasoning_rl", "run", TINY, "--no-progress", "--run-dir",
                             str(d)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (d / "checkpoints" / "sft" / "manifest.json").exists():
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    assert not any(r["stage"] == "grpo" for r in read_metrics(d)), "the signal came too late to test this"
    assert err.strip().splitlines()[-1].startswith("preempted: SIGTERM outside the training steps")
    no_traceback(err)
    p = cli("--run-dir", str(d), "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "stage sft already complete" in p.stderr
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
    no_traceback(p.stderr)
    assert strip(read_metrics(d)) == strip(read_metrics(reference))
    assert (gdir / f"{steps[-1]}.damaged").is_dir()  # kept aside, and the step was written anew
    assert saved_steps(gdir)[-1] == 6


# a checkpoint interval longer than the stages: any checkpoint of an interrupted stage is the step in flight's
NO_PERIODIC = ("--set", "checkpoint.every=100")


@pytest.mark.slow
@pytest.mark.parametrize("stage,at_step", [("sft", 1), ("grpo", 2)])
def test_ctrl_c_checkpoints_step_in_flight_then_resume_matches(reference, tmp_path, stage, at_step):
    d = tmp_path / "run"
    proc = start_and_signal(d, signal.SIGINT, at_step, stage=stage, extra=NO_PERIODIC)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    no_traceback(err)
    final = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert final.startswith(f"interrupted: stage {stage} stopped after"), err[-2000:]
    last = max(r["step"] for r in read_metrics(d) if r["stage"] == stage)
    assert saved_steps(d / "checkpoints" / stage) == [last]  # the step in flight, though no periodic save was due
    assert not (d / "checkpoints" / stage / "manifest.json").exists()
    p = cli("--run-dir", str(d), "--resume", *NO_PERIODIC)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"stage {stage}: resumed from step {last}" in p.stderr
    assert strip(read_metrics(d)) == strip(read_metrics(reference))


@pytest.mark.slow
def test_second_ctrl_c_exits_at_once(tmp_path):
    d = tmp_path / "run"
    # enough steps that the first Ctrl-C lands mid-stage (6 tiny steps can all finish before it is delivered)
    proc = start_and_signal(d, signal.SIGINT, 1, stage="grpo", extra=(*NO_PERIODIC, "--set", "stages.grpo.steps=200"),
                            times=2)
    t0 = time.time()
    _, err = proc.communicate(timeout=120)
    # 130, or killed by the SIGINT itself when it lands in the last moments of shutdown: the shell reports 130
    # either way
    assert proc.returncode in (130, -signal.SIGINT), err[-2000:]
    assert time.time() - t0 < 5
    no_traceback(err)
    assert proc.returncode == -signal.SIGINT or "interrupted again: exiting now" in err


@pytest.mark.slow
def test_resume_with_every_checkpoint_damaged_fails_and_changes_nothing(reference, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(reference, d)
    gdir = d / "checkpoints" / "grpo"
    (gdir / "manifest.json").unlink()  # grpo was interrupted after its last checkpoints, both now damaged
    for s in saved_steps(gdir):
        damage_arrays(gdir / str(s))
    before = snapshot(d)
    p = cli("--run-dir", str(d), "--resume")
    assert p.returncode == 2, p.stderr[-3000:]
    no_traceback(p.stderr)
    line = [ln for ln in p.stderr.splitlines() if ln.strip()][-1]
    assert line.startswith("checkpoint error: --resume: no usable checkpoint of stage grpo"), line
    assert "checkpoint step 6: " in line and "checkpoint step 4: " in line, line
    assert snapshot(d) == before
    # without --resume the fallback to the start of the stage is stated in one line, and the run matches
    p = cli("--run-dir", str(d))
    assert p.returncode == 0, p.stderr[-3000:]
    no_traceback(p.stderr)
    falls = [ln for ln in p.stderr.splitlines() if "no usable checkpoint" in ln]
    assert len(falls) == 1 and "starting the stage over" in falls[0], p.stderr[-3000:]
    assert strip(read_metrics(d)) == strip(read_metrics(reference))
    assert {q.name for q in gdir.iterdir() if "damaged" in q.name} == {"4.damaged", "6.damaged"}


@pytest.mark.slow
def test_a_run_dir_copied_elsewhere_continues(reference, tmp_path):
    d = tmp_path / "elsewhere" / "copy"
    shutil.copytree(reference, d)
    p = cli("--run-dir", str(d), "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "stage sft already complete" in p.stderr and "stage grpo already complete" in p.stderr
    assert strip(read_metrics(d)) == strip(read_metrics(reference))


@pytest.mark.slow
def test_a_finished_stage_trained_longer_equals_the_longer_run(reference, tmp_path, capsys, caplog):
    """A run whose last stage ended at 3 steps, continued with steps: 6 (the reference's count), goes on from
    its step-3 checkpoint and ends with the reference's metrics; the stage before it is not redone. Changes it
    cannot honour are refused, touching nothing."""
    d = tmp_path / "run"
    p = cli("--run-dir", str(d), "--set", "stages.grpo.steps=3")
    assert p.returncode == 0, p.stderr[-3000:]
    sft_manifest = json.loads((d / "checkpoints" / "sft" / "manifest.json").read_text())
    older = {k: v for k, v in sft_manifest.items() if k != "stage_hash"}  # as runs of older versions wrote it
    (d / "checkpoints" / "sft" / "manifest.json").write_text(json.dumps(older))
    p = cli("--run-dir", str(d), "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "continuing" in p.stderr and "stages.grpo.steps: 3 -> 6: stage grpo goes on from its step-3" in p.stderr
    assert "stage sft already complete" in p.stderr and "running it again" not in p.stderr
    assert json.loads((d / "checkpoints" / "sft" / "manifest.json").read_text()) == sft_manifest
    assert strip(read_metrics(d)) == strip(read_metrics(reference))
    assert json.loads((d / "summary.json").read_text())["grpo"]["steps"] == 6
    assert "steps: 6" in (d / "config.yaml").read_text().split("name: grpo")[1]
    # fewer checkpoints kept (a disk filling up): where steps are saved changes no number, and nothing reruns
    from reasoning_rl import cli as main_cli

    metrics = (d / "metrics.jsonl").read_bytes()
    caplog.set_level(logging.INFO, logger="reasoning_rl")
    assert main_cli.main(["run", TINY, "--no-progress", "--run-dir", str(d), "--set", "checkpoint.keep=1"]) == 0
    said = [r.getMessage() for r in caplog.records]
    assert f"run_dir: continuing {d} with checkpoint.keep: 2 -> 1" in said
    assert "stage sft already complete: skipped" in said and "stage grpo already complete: skipped" in said
    assert (d / "metrics.jsonl").read_bytes() == metrics and "keep: 1" in (d / "config.yaml").read_text()
    changes = [json.loads(ln)["changes"] for ln in (d / "config_changes.jsonl").read_text().splitlines()]
    assert changes == [[f"run_dir: continuing {d} with stages.grpo.steps: 3 -> 6: stage grpo goes on from its "
                        "step-3 checkpoint"], [f"run_dir: continuing {d} with checkpoint.keep: 2 -> 1"]]
    capsys.readouterr()
    before = snapshot(d)
    for change, says in ((("--set", "stages.grpo.steps=4"), "stages.grpo.steps: 6 -> 4: stage grpo has already "
                                                            "taken 6 steps"),
                         (("--set", "stages.sft.steps=5"), "stages.sft.steps: 4 -> 5: stage grpo started from stage "
                                                           "sft as it was"),
                         (("--set", "stages.grpo.steps=8", "--set", "optimizer.lr=0.002"), "different config "
                                                                                            "(optimizer.lr")):
        assert main_cli.main(["run", TINY, "--no-progress", "--run-dir", str(d), "--resume", *change,
                              "--set", "checkpoint.keep=1"]) == 2  # refused before any compute
        err = capsys.readouterr().err
        assert says in err.strip().splitlines()[-1], (change, err[-2000:])
        no_traceback(err)
    assert snapshot(d) == before


@pytest.mark.slow
def test_a_stage_appended_to_a_finished_run_runs_alone(reference, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(reference, d)
    text = Path(TINY).read_text()
    cfg = tmp_path / "three.yaml"
    cfg.write_text(text + "  - {name: more, kind: grpo, steps: 2, init: grpo}\n")
    p = run_here("run", str(cfg), "--no-progress", "--run-dir", str(d), "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "with stage(s) more appended" in p.stderr
    assert "stage sft already complete" in p.stderr and "stage grpo already complete" in p.stderr
    recs = read_metrics(d)
    assert strip([r for r in recs if r["stage"] != "more"]) == strip(read_metrics(reference))
    assert [r["step"] for r in recs if r["stage"] == "more"] == [1, 2]
    man = json.loads((d / "checkpoints" / "more" / "manifest.json").read_text())
    assert man["complete"] and man["parent"]["stage"] == "grpo"


def test_step_counts_that_would_not_continue_the_run_are_refused(tmp_path):
    """What a changed step count cannot honour, from the run dir alone (no compute)."""
    from reasoning_rl.config import from_dict
    from reasoning_rl.pipeline import check_continuation

    def cfg(sft, grpo, **opt):
        return from_dict({"optimizer": {"lr": 1e-3, **opt}, "stages": [
            {"name": "sft", "kind": "sft", "steps": sft}, {"name": "grpo", "kind": "grpo", "steps": grpo,
                                                             "init": "sft"}]})

    (tmp_path / "checkpoints" / "sft" / "4").mkdir(parents=True)
    old = cfg(4, 6, schedule="cosine")
    with pytest.raises(ConfigError, match=r"stages.sft.steps: 4 -> 8: stage sft's optimizer.schedule is cosine"):
        check_continuation(old, cfg(8, 6, schedule="cosine"), tmp_path, {"sft": (4, 8)}, [])
    lines = check_continuation(old, cfg(4, 9, schedule="cosine"), tmp_path, {"grpo": (6, 9)}, [])
    assert [t for _, t in lines] == [f"run_dir: continuing {tmp_path} with stages.grpo.steps: 6 -> 9 (stage grpo "
                                     "not started)"]  # cosine over steps not yet taken is fine
    with pytest.raises(ConfigError, match=r"stages.sft.steps: 4 -> 3: stage sft has already taken 4 steps"):
        check_continuation(cfg(4, 6), cfg(3, 6), tmp_path, {"sft": (4, 3)}, [])
    (tmp_path / "checkpoints" / "grpo" / "2.orbax-checkpoint-tmp-1").mkdir(parents=True)  # an unfinished write
    with pytest.raises(ConfigError, match=r"stages.sft.steps: 4 -> 8: stage grpo started from stage sft as it"):
        check_continuation(cfg(4, 6), cfg(8, 6), tmp_path, {"sft": (4, 8)}, [])
    # a stage that ended early stays ended; asynchronous rollouts that ended with their stage are redrawn fresher
    d = tmp_path / "other"
    for name, step in (("sft", 3), ("grpo", 6)):
        (d / "checkpoints" / name / str(step)).mkdir(parents=True)
        (d / "checkpoints" / name / "manifest.json").write_text(json.dumps({"complete": True, "final_step": step}))
    lines = check_continuation(cfg(4, 6), cfg(4, 9), d, {"grpo": (6, 9)}, [])
    assert lines == [(20, f"run_dir: continuing {d} with stages.grpo.steps: 6 -> 9: stage grpo goes on from its "
                          "step-6 checkpoint")]
    lines = check_continuation(cfg(4, 6), cfg(4, 9), d, {"grpo": (6, 9)}, ["more"])
    assert lines[-1] == (20, f"run_dir: continuing {d} with stage(s) more appended")
    shutil.rmtree(d / "checkpoints" / "grpo")
    lines = check_continuation(cfg(4, 6), cfg(8, 6), d, {"sft": (4, 8)}, [])
    assert lines[0][1].endswith("stage sft goes on from its step-3 checkpoint; it stopped early at step 3 "
                                "(stop_at_loss), so it stays stopped")
    (d / "checkpoints" / "grpo" / "6").mkdir(parents=True)
    (d / "checkpoints" / "grpo" / "manifest.json").write_text(json.dumps({"complete": True, "final_step": 6}))
    def async_cfg(n):
        return from_dict({"rollout": {"mode": "async", "max_staleness": 2}, "mesh": {"rollout_devices": 1},
                          "stages": [{"name": "sft", "kind": "sft", "steps": 4},
                                     {"name": "grpo", "kind": "grpo", "steps": n, "init": "sft"}]})

    lines = check_continuation(async_cfg(6), async_cfg(9), d, {"grpo": (6, 9)}, [])
    assert lines[1] == (30, "stage grpo: its asynchronous rollouts ended with step 6, so steps 7..8 are sampled "
                            "from the step-6 policy, fresher than in an uninterrupted 9-step run (up to 2 steps "
                            "stale)")


FULL_DISK = r"""
import json, os, shutil, subprocess, sys, time
mnt, tiny, out, free_kib, when = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", mnt], check=True)
run_dir, filler = os.path.join(mnt, "run"), os.path.join(mnt, "filler")


def fill(leave):  # the file system full but for ``leave`` bytes
    # Unbuffered writes, smaller and smaller: a buffered file would keep its unwritten tail and raise the
    # same ENOSPC again when closed.
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (1 << 20, 65536, 4096, 1):
            try:
                while os.write(fd, b"x" * chunk):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    os.truncate(filler, max(os.path.getsize(filler) - leave, 0))


cmd = [sys.executable, "-m", "reasoning_rl", "run", tiny, "--no-progress", "--run-dir", run_dir]
if when == "start":
    fill(free_kib * 1024)
proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
if when == "after sft":
    while proc.poll() is None and not os.path.exists(os.path.join(run_dir, "checkpoints", "sft", "manifest.json")):
        time.sleep(0.005)
    fill(0)
err = proc.communicate(timeout=300)[1]
os.remove(filler)  # space again: the same command goes on
again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
shutil.copy(os.path.join(run_dir, "metrics.jsonl"), out)
print(json.dumps({"rc": proc.returncode, "err": err, "rc2": again.returncode, "err2": again.stderr}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("free_kib,when", [(300, "start"), (0, "after sft")])
def test_a_full_disk_stops_the_run_in_one_line_and_the_same_command_goes_on(reference, tmp_path, free_kib, when):
    """A real full file system (a small tmpfs, mounted in a user and mount namespace of its own): the run
    stops with exit 1 and one line naming the cause and the fix, no traceback from orbax's, tensorboard's or
    any other thread; after space is freed the same command finishes with the reference run's metrics."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to mount a small file system without privileges")
    mnt, out = tmp_path / "mnt", tmp_path / "metrics.jsonl"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "mount", "-t", "tmpfs", "-o",
                            "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()}")
    p = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c", FULL_DISK, str(mnt),
                        TINY, str(out), str(free_kib), when], capture_output=True, text=True, timeout=700)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["rc"] == 1, got["err"][-3000:]
    last = got["err"].strip().splitlines()[-1]
    assert last.startswith("error: ") and "no space left on device" in last and "run the same command again" in last
    for noise in ("Traceback", "Exception ignored", "Exception in thread", " ERROR "):
        assert noise not in got["err"], got["err"][-3000:]
    assert got["rc2"] == 0, got["err2"][-3000:]
    assert " absl: " not in got["err2"], got["err2"][-3000:]  # the unfinished write is named once, by the run
    assert strip(read_metrics(out.parent)) == strip(read_metrics(reference))


@pytest.mark.slow
def test_allowed_zero_step_stage_is_skipped_with_a_line(tmp_path):
    d = tmp_path / "run"
    p = cli("--run-dir", str(d), "--set", "stages.sft.steps=0", "--set", "stages.sft.allow_empty=true",
            "--set", "stages.grpo.steps=1", "--set", "stages.grpo.allow_random_init=true")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "stage sft: 0 steps, skipped (allow_empty: true)" in p.stderr
    assert {r["stage"] for r in read_metrics(d)} == {"grpo"}
    man = json.loads((d / "checkpoints" / "grpo" / "manifest.json").read_text())
    assert man["parent"]["kind"] == "fresh"  # the skipped stage passed its own init on
    assert not (d / "checkpoints" / "sft" / "manifest.json").exists()


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
    with pytest.raises(CheckpointError, match="step 2 in .* failed: no space left on device$"):
        ck.save(2, state, {"data": {"next_index": 2}})
    monkeypatch.undo()
    got = StageCheckpointer(tmp_path / "ck", keep=3).restore(state)
    assert got is not None and got[0] == 1 and got[2]["data"] == {"next_index": 1}
    for a, b in zip(jax.tree.leaves(got[1].params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def orphan(message: str) -> None:
    """asyncio's "exception was never retrieved" report of a future whose error was set, never raised (no
    traceback), as tensorstore leaves them."""
    import asyncio
    import gc

    loop = asyncio.new_event_loop()
    fut = loop.create_future()
    fut.set_exception(ValueError(message))
    del fut
    gc.collect()
    loop.close()


def test_late_read_errors_of_a_skipped_step_are_not_printed(tmp_path, caplog):
    """A read that tensorstore fails after orbax gave up on a damaged step can reach asyncio's "exception was
    never retrieved" report with no traceback at all (the error was set on a future, never raised): it must
    not print (it once came out as a bare ``ValueError: DATA_LOSS`` line after the run's final error), while
    the same report about anything else still does."""
    _, params = tiny_model()
    state = init_state(params, make_optimizer(OptimizerConfig(), 1), 0)
    ck = StageCheckpointer(tmp_path / "ck", keep=3)
    ck.save(1, state, {"data": {"next_index": 1}})
    ck.wait()
    damage_arrays(tmp_path / "ck" / "1")
    assert StageCheckpointer(tmp_path / "ck", keep=3).restore(state, report=False) is None

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        orphan(f'DATA_LOSS: Error reading in OCDBT database at local file "{tmp_path / "ck" / "1" / "state"}/"')
        assert not [r for r in caplog.records if r.name == "asyncio"]
        orphan(f'DATA_LOSS: Error reading local file "{tmp_path / "elsewhere" / "1" / "state"}/"')
        assert len([r for r in caplog.records if r.name == "asyncio"]) == 1


def test_late_write_errors_of_a_failed_save_are_not_printed(tmp_path, caplog):
    """One of a save's writes that found the disk full can reach asyncio's "exception was never retrieved"
    report after the save failed and the run said so in one line (it once came out as a bare
    ``ValueError: RESOURCE_EXHAUSTED: Error writing ...`` line after the run's final error): such a report
    about a stage's checkpoint directory must not print; one about another directory, or about a write that
    failed for another reason, still does."""
    StageCheckpointer(tmp_path / "ck", keep=3)

    def write_error(where: Path, why: str) -> str:
        return (f'RESOURCE_EXHAUSTED: Error writing "opt_state.0.count/0" in OCDBT database at local file '
                f'"{where}/": {why}')

    tmp = tmp_path / "ck" / "5.orbax-checkpoint-tmp-1733" / "state"
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        orphan(write_error(tmp, "No space left on device [os_error_code='28']"))
        assert not [r for r in caplog.records if r.name == "asyncio"]
        orphan(write_error(tmp_path / "elsewhere" / "state", "No space left on device [os_error_code='28']"))
        assert len([r for r in caplog.records if r.name == "asyncio"]) == 1
        orphan(write_error(tmp, "Permission denied [os_error_code='13']"))
        assert len([r for r in caplog.records if r.name == "asyncio"]) == 2


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
def test_consecutive_nan_steps_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch):
    from reasoning_rl import checkpoint

    made, closed = [], []
    init, close = checkpoint.StageCheckpointer.__init__, checkpoint.StageCheckpointer.close
    monkeypatch.setattr(checkpoint.StageCheckpointer, "__init__", lambda self, *a, **k: (made.append(self),
                                                                                        init(self, *a, **k))[1])
    monkeypatch.setattr(checkpoint.StageCheckpointer, "close", lambda self: (close(self), closed.append(self))[0])
    d = tmp_path / "run"
    p = cli("--run-dir", str(d), "--set", "stages.grpo.optimizer.inject_nan_steps=[3,4,5]",
            "--set", "stages.grpo.optimizer.max_consecutive_skips=3")
    assert p.returncode == 1, p.stderr[-3000:]
    # the failed stage's checkpointer is closed too (its Orbax threads end), not left to garbage collection
    assert made and all(any(c is m for c in closed) for m in made), (len(made), len(closed))
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


def test_math_reward_workers_ignore_ctrl_c(monkeypatch):
    """A terminal's Ctrl-C reaches the whole process group: the math-verify workers must survive it, since the
    trainer finishes the step in flight (and scores it) before stopping."""
    from reasoning_rl.rewards import math as rmath

    rmath.shutdown_pool()
    monkeypatch.setenv("REASONING_RL_MATH_WORKERS", "1")
    try:
        assert rmath.verify_equivalent("\\frac{1}{2}", "0.5")  # starts the worker
        pool = rmath._get_pool()
        workers = [w.proc for w in pool.idle]
        assert workers
        for w in workers:  # the disposition itself (Linux): whether the signal lands between jobs is a race
            ignored = int(Path(f"/proc/{w.pid}/status").read_text().split("SigIgn:")[1].split()[0], 16)
            assert ignored & (1 << (signal.SIGINT - 1))
        for w in workers:
            os.kill(w.pid, signal.SIGINT)
        time.sleep(0.5)
        assert all(w.poll() is None for w in workers)
        assert rmath.verify_equivalent("\\frac{1}{2}", "0.5")
        assert [w.proc for w in pool.idle] == workers  # the same workers answered
    finally:
        rmath.shutdown_pool()


CTRL_C_DURING_WRITE = r"""
import os, signal, sys, time
sys.path.insert(0, sys.argv[2])
sig = getattr(signal, sys.argv[3])
if sig == signal.SIGINT:
    # Python's own Ctrl-C handler, as in a terminal: a process started in the background by a non-interactive
    # shell inherits SIGINT ignored, and Python then installs none (the test would see no interrupt at all)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stop = KeyboardInterrupt
else:  # what `run` installs for SIGTERM outside a stage's step loop
    from reasoning_rl.stages.common import Terminated, stop_on_sigterm
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    stop = Terminated
from helpers import run_here, tiny_model
from reasoning_rl.algorithms.steps import init_state, make_optimizer
from reasoning_rl.checkpoint import StageCheckpointer
from reasoning_rl.config import ConfigError, OptimizerConfig
mdef, params = tiny_model()
state = init_state(params, make_optimizer(OptimizerConfig(), 1), 0)
ck = StageCheckpointer(sys.argv[1], keep=3)
ck.save(1, state, {"data": {"next_index": 1}})
orig = ck.mgr.wait_until_finished
finished = []
def slow_wait():  # the signal lands while the write is being finished
    os.kill(os.getpid(), sig)
    time.sleep(0.3)
    orig()
    finished.append(True)
ck.mgr.wait_until_finished = slow_wait
try:
    ck.close()
    print("NO-INTERRUPT")
except stop:
    print("INTERRUPTED-AFTER-WRITE" if finished else "INTERRUPTED-MID-WRITE")
got = StageCheckpointer(sys.argv[1], keep=3).restore(state)
print("RESTORED", got[0])
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_while_a_checkpoint_write_finishes_waits_for_it(tmp_path, sig):
    """A Ctrl-C (or a SIGTERM outside a step loop) that lands while the last checkpoint write finishes (after
    a stage's step loop) is held until the write is complete, then ends the run as an interrupt (a
    preemption): no Orbax 'save failed' traceback, the step kept."""
    p = subprocess.run([sys.executable, "-c", CTRL_C_DURING_WRITE, str(tmp_path / "ck"), str(Path(__file__).parent),
                        sig],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split() == ["INTERRUPTED-AFTER-WRITE", "RESTORED", "1"], (p.stdout, p.stderr[-2000:])
    assert "Traceback" not in p.stderr and "finishing the checkpoint write first" in p.stderr


def test_a_stop_before_a_held_out_point_skips_it_and_the_resumed_stage_evaluates_it_first(tmp_path):
    """eval.every: a step's held-out point comes before its checkpoint; when a stop (SIGTERM, Ctrl-C) is already
    asked for, the point is skipped so the checkpoint is written at once, and the stage resumed there evaluates
    it before anything else (a point already recorded is not evaluated again)."""
    from reasoning_rl import config as C
    from reasoning_rl.metrics import MetricsWriter
    from reasoning_rl.stages.common import Preempted, Runtime, StageRun
    from reasoning_rl.stages.evaluate import HeldOutCurve

    cfg = C.load(TINY, overrides=["eval.every=2", "checkpoint.every=2"])
    rt, stage = Runtime(cfg, tmp_path / "run"), C.stage(cfg, "grpo")
    writer, asked = MetricsWriter(rt.run_dir, tensorboard=False), []

    def evaluate(params, step):
        asked.append(step)
        return {"num_problems": 8, "pass@1": step / 10}

    def host():
        return {"data": {}, "wall_seconds": 0.0}

    run = StageRun(rt, stage, rt.init_params(), stage.steps)
    run.curve = HeldOutCurve(stage, writer, evaluate)
    guard = run.guard()  # not entered: no signal handlers; a stop is asked for below by hand
    run.end_step(2, guard, host)
    run.ckpt.wait()
    assert asked == [2] and saved_steps(run.dir) == [2]
    guard.requested = True
    with pytest.raises(Preempted):
        run.end_step(4, guard, host)
    run.close()
    assert asked == [2] and saved_steps(run.dir) == [2, 4]  # checkpointed without its point
    again = StageRun(rt, stage, rt.init_params(), stage.steps)
    again.resume()
    again.curve = HeldOutCurve(stage, writer, evaluate)
    again.curve.start(again.start_step, again.state.params)
    again.curve.start(2, again.state.params)  # recorded already
    again.close()
    writer.close()
    assert again.start_step == 4 and asked == [2, 4]
    assert [(r["step"], r["held_out/pass@1"]) for r in read_metrics(rt.run_dir)] == [(2, 0.2), (4, 0.4)]
