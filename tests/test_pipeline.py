"""End-to-end runs of the CLI on a tiny config: outputs, lineage, resume after SIGKILL, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_here

from reasoning_rl.metrics import read_metrics

TINY = str(Path(__file__).parent / "configs" / "tiny.yaml")
TIMING = {"seconds", "sample_s", "update_s", "gen_tokens_per_s", "tokens_per_s", "eval_s"}


def run_cli(*args):
    """``reasoning-rl run tiny.yaml --no-progress ARGS`` in this process (helpers.run_here)."""
    return run_here("run", TINY, "--no-progress", *args)


FIGURES = ("pass@1", "pass@2", "maj@2", "greedy_accuracy", "format_rate", "mean_response_tokens")


def strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref") / "run"
    p = run_cli("--run-dir", str(d))
    assert p.returncode == 0, p.stderr[-3000:]
    return d


@pytest.mark.slow
def test_run_writes_outputs_and_lineage(reference_run):
    d = reference_run
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "tokenizer.model"):
        assert (d / name).is_file(), name
    summary = json.loads((d / "summary.json").read_text())
    for stage in ("sft", "grpo"):
        for key in ("pass@1", "pass@2", "mean_response_tokens", "format_rate", "wall_seconds", "greedy_accuracy"):
            assert key in summary[stage], (stage, key)
    recs = read_metrics(d)
    grpo = [r for r in recs if r["stage"] == "grpo"]
    assert [r["step"] for r in grpo] == list(range(1, 7))
    for key in ("loss", "reward_mean", "reward_std", "accuracy", "response_len", "entropy", "clip_frac",
                "grad_norm", "logprob_gap", "gen_tokens_per_s", "seconds"):
        assert key in grpo[0], key
    assert max(r["logprob_gap"] for r in grpo) < 1e-4
    man = json.loads((d / "checkpoints" / "grpo" / "manifest.json").read_text())
    assert man["complete"] and man["parent"]["stage"] == "sft" and man["parent"]["step"] == 4
    assert (d / "tensorboard").is_dir()
    assert not (d / "plots").exists()  # tiny.yaml's log.plots: false (tests/test_run_report.py draws them)


@pytest.mark.slow
def test_in_flight_refill_and_paged_run_equals_the_plain_run(reference_run, tmp_path):
    """rollout.slots: the 16 rows of each GRPO step decoded on 4 slots, on a paged cache, give the same run."""
    p = run_cli("--run-dir", str(tmp_path / "run"), "--set", "rollout.slots=4", "--set", "rollout.refill_min=1",
                "--set", "rollout.page_size=8", "--set", "stages.grpo.steps=3")
    assert p.returncode == 0, p.stderr[-3000:]
    ours = [r for r in read_metrics(tmp_path / "run") if r["stage"] == "grpo"]
    ref = [r for r in read_metrics(reference_run) if r["stage"] == "grpo"][:3]
    assert len(ours) == 3
    for a, b in zip(ours, ref):
        assert a["response_len"] == b["response_len"] and a["reward_mean"] == b["reward_mean"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        assert 0 < b["slot_utilisation"] <= 1 and 0 < a["slot_utilisation"] <= 1


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(reference_run, tmp_path):
    """Killed in GRPO and resumed, with a held-out curve (eval.every: 2, which the reference run has not): the
    same training records as the uninterrupted run, and a curve with a point before each stage and every 2
    steps, ending with the end-of-stage figures (the evaluation draws nothing from the training's state)."""
    d = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "reasoning_rl", "run", TINY, "--no-progress", "--run-dir",
                             str(d), "--set", "eval.every=2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 240
    killed = False
    while time.time() < deadline and proc.poll() is None:
        recs = read_metrics(d) if (d / "metrics.jsonl").exists() else []
        if any(r["stage"] == "grpo" and r["step"] >= 3 for r in recs):
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed, "the run finished before it could be killed"
    p = run_cli("--run-dir", str(d), "--resume", "--set", "eval.every=2")
    assert p.returncode == 0, p.stderr[-3000:]
    recs = read_metrics(d)
    curve = {(r["stage"], r["step"]): r for r in recs if "held_out/problems" in r}
    assert strip([r for r in recs if "held_out/problems" not in r]) == strip(read_metrics(reference_run))
    a = json.loads((d / "summary.json").read_text())
    b = json.loads((reference_run / "summary.json").read_text())
    assert a == {k: {**v, "wall_seconds": a[k]["wall_seconds"]} for k, v in b.items()}
    assert list(curve) == [("sft", 0), ("sft", 2), ("sft", 4), ("grpo", 0), ("grpo", 2), ("grpo", 4), ("grpo", 6)]
    for stage, step in (("sft", 4), ("grpo", 6)):
        assert {k: curve[stage, step][f"held_out/{k}"] for k in FIGURES} == {k: b[stage][k] for k in FIGURES}
        assert curve[stage, step]["held_out/problems"] == 8
    assert curve["grpo", 0]["held_out/pass@1"] == b["sft"]["pass@1"]  # where sft ended
    events = b"".join(f.read_bytes() for f in (d / "tensorboard").rglob("events*"))
    assert b"grpo/held_out/pass_at_1" in events and b"grpo/held_out/greedy_accuracy" in events


@pytest.mark.slow
def test_a_held_out_curve_goes_on_with_a_continued_run_and_a_rerun_adds_no_second_point(reference_run, tmp_path):
    """A run continued with eval.every set (and more steps) starts its held-out curve where it resumes, with the
    figures the finished stage had; a stage stopped after its last point but before its manifest evaluates
    again on the rerun and writes no second point."""
    more = tmp_path / "more"
    shutil.copytree(reference_run, more)
    cmd = ("--run-dir", str(more), "--set", "eval.every=2", "--set", "stages.grpo.steps=8")
    p = run_cli(*cmd)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "stages.grpo.eval.every: 0 -> 2" in p.stderr
    points = [r for r in read_metrics(more) if "held_out/problems" in r]
    assert [(r["stage"], r["step"]) for r in points] == [("grpo", 6), ("grpo", 8)]
    summary = json.loads((reference_run / "summary.json").read_text())
    assert {k: points[0][f"held_out/{k}"] for k in FIGURES} == {k: summary["grpo"][k] for k in FIGURES}

    (more / "checkpoints" / "grpo" / "manifest.json").unlink()
    before = strip(read_metrics(more))
    p = run_cli(*cmd)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "stage grpo: resumed from step 8" in p.stderr
    assert strip(read_metrics(more)) == before


@pytest.mark.slow
def test_rerun_of_finished_run_skips_stages(reference_run):
    before = (reference_run / "metrics.jsonl").read_text()
    p = run_cli("--run-dir", str(reference_run))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "already complete" in p.stderr
    assert (reference_run / "metrics.jsonl").read_text() == before


def test_resume_of_missing_run_is_a_config_error(tmp_path):
    p = run_cli("--run-dir", str(tmp_path / "nothing"), "--resume")
    assert p.returncode == 2 and "--resume" in p.stderr


@pytest.mark.slow
def test_grpo_variants_run_end_to_end(tmp_path):
    """GSPO + KL reference + dynamic sampling + μ=2 epochs x 2 mini-batches x 2 micro-batches + overlong
    shaping and filtering + the batch-std advantage."""
    p = run_cli("--run-dir", str(tmp_path / "run"), "--set", "algorithm.loss=gspo", "--set", "algorithm.beta=0.05",
                "--set", "algorithm.kl_estimator=k3", "--set", "algorithm.dynamic_sampling=true",
                "--set", "algorithm.epochs=2", "--set", "algorithm.mini_batches=2", "--set",
                "algorithm.micro_batches=2", "--set", "algorithm.eps_low=3e-4", "--set", "algorithm.eps_high=4e-4",
                "--set", "algorithm.overlong.enabled=true", "--set", "algorithm.overlong.max_len=32",
                "--set", "algorithm.overlong.cache=8", "--set", "algorithm.overlong.filter=true",
                "--set", "algorithm.advantage=group-mean-batch-std",
                "--set", "stages.grpo.steps=3", "--set", "eval.greedy=false", "--set", "seed=3")
    assert p.returncode == 0, p.stderr[-3000:]
    grpo = [r for r in read_metrics(tmp_path / "run") if r["stage"] == "grpo"]
    assert len(grpo) == 3
    for r in grpo:
        assert "kl" in r and r["kl"] >= 0 and "groups_kept" in r and 1 <= r["sampling_rounds"] <= 4
        assert 0 <= r["truncated_frac"] <= 1 and 8 <= r["update_width"] <= 32


@pytest.mark.slow
def test_sft_stops_at_target_loss_and_the_next_stage_starts_there(tmp_path):
    d = tmp_path / "run"
    args = ["--run-dir", str(d), "--set", "stages.sft.steps=12", "--set", "stages.sft.stop_window=3",
            "--set", "stages.sft.stop_at_loss=100", "--set", "stages.grpo.steps=2"]
    p = run_cli(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    sft = [r for r in read_metrics(d) if r["stage"] == "sft"]
    assert [r["step"] for r in sft] == [1, 2, 3]  # the first full window already meets the target
    summary = json.loads((d / "summary.json").read_text())
    assert summary["sft"]["stopped_early"]["step"] == 3
    assert json.loads((d / "checkpoints" / "sft" / "manifest.json").read_text())["final_step"] == 3
    man = json.loads((d / "checkpoints" / "grpo" / "manifest.json").read_text())
    assert man["parent"]["stage"] == "sft" and man["parent"]["step"] == 3
    # a rerun keeps the finished stages; an unreachable target runs to the cap
    p = run_cli(*args)
    assert p.returncode == 0 and "already complete" in p.stderr
    d2 = tmp_path / "run2"
    p = run_cli("--run-dir", str(d2), "--set", "stages.sft.stop_at_loss=0.0", "--set", "stages.grpo.steps=1")
    assert p.returncode == 0, p.stderr[-3000:]
    assert max(r["step"] for r in read_metrics(d2) if r["stage"] == "sft") == 4
    assert "stopped_early" not in json.loads((d2 / "summary.json").read_text())["sft"]


@pytest.mark.slow
def test_code_task_runs_grpo_with_the_sandboxed_code_reward(tmp_path):
    d = tmp_path / "run"
    cfg = str(Path(__file__).parent / "configs" / "code_tiny.yaml")
    p = run_here("run", cfg, "--no-progress", "--run-dir", str(d))
    assert p.returncode == 0, p.stderr[-3000:]
    grpo = [r for r in read_metrics(d) if r["stage"] == "grpo"]
    assert len(grpo) == 3
    for r in grpo:
        assert "code" in r and 0.0 <= r["code"] <= 1.0 and r["reward_errors"] == 0
    summary = json.loads((d / "summary.json").read_text())
    assert 0.0 <= summary["grpo"]["pass@1"] <= 1.0


def test_code_task_solutions_pass_their_own_tests_and_wrong_programs_fail():
    from reasoning_rl.config import TaskConfig
    from reasoning_rl.data.tasks import make_task
    from reasoning_rl.rewards import registry

    code = registry.get("code")
    for terms in (2, 3):
        task = make_task(TaskConfig(name="code", digits=2, terms=terms, held_out_size=20))
        held = {e.key for e in task.held_out(20)}
        for i in range(3):
            ex = task.example("train", i)
            assert ex.key not in held
            assert code(ex.solution, ex.as_dict()) == 1.0
            wrong = ex.solution.replace("return ", "return 1+")
            assert code(wrong, ex.as_dict()) == 0.0


@pytest.mark.slow
def test_cpu_host_split_into_two_data_parallel_devices_gives_the_same_run(reference_run, tmp_path):
    """mesh.cpu_devices=2: the CLI exposes the host as two devices before JAX starts, the run is data-parallel
    over them (each device samples its own prompts in its own decode loop) and trains the same model."""
    # compiled as users' runs compile (XLA's default optimisation and fusion emitters), against the reference
    # run under the tests' fast-compiling flags: the suite's one training run under the default flags
    env = {**os.environ, "XLA_FLAGS": ""}
    p = subprocess.run([sys.executable, "-m", "reasoning_rl", "run", TINY, "--no-progress", "--run-dir",
                        str(tmp_path / "run"), "--set", "mesh.cpu_devices=2", "--set", "stages.grpo.steps=3"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    man = json.loads((tmp_path / "run" / "checkpoints" / "grpo" / "manifest.json").read_text())
    assert man["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1, "expert": 1}
    ref_man = json.loads((reference_run / "checkpoints" / "grpo" / "manifest.json").read_text())
    assert ref_man["mesh"]["data"] == 1
    ours = [r for r in read_metrics(tmp_path / "run") if r["stage"] == "grpo"]
    ref = [r for r in read_metrics(reference_run) if r["stage"] == "grpo"][:3]
    assert len(ours) == 3
    for a, b in zip(ours, ref):
        assert a["response_len"] == pytest.approx(b["response_len"]) and a["reward_mean"] == b["reward_mean"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3, abs=1e-5)
