"""The R1 pipeline end to end on a seconds-long config (tests/configs/r1_tiny.yaml): every stage kind, a
task mixture, distillation with its GRPO baseline; lineage, kill-and-rerun, outside inits, eval and plots.

One in-process reference run is shared by the module; the kill test runs the CLI in a subprocess. The
compile cache (``reasoning_rl.cli.enable_compile_cache``) makes the second and later runs cheap.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_here

from reasoning_rl import cli
from reasoning_rl import config as C
from reasoning_rl.config import ConfigError
from reasoning_rl.metrics import read_metrics
from reasoning_rl.pipeline import run_pipeline
from reasoning_rl.stages.rejection import SampleSpec, filter_samples

HERE = Path(__file__).parent
R1_TINY = str(HERE / "configs" / "r1_tiny.yaml")
STAGES = ["sft", "grpo", "rsft", "multitask", "distill"]
TIMING = {"seconds", "sample_s", "update_s", "gen_tokens_per_s", "tokens_per_s", "wall_seconds", "eval_s"}


def accept_all(completion, example):
    """The tiny config's rejection verifier (a plug-in reward): an untrained policy solves nothing."""
    return 1.0


def load(run_dir, **over):
    raw = C.load_raw(R1_TINY)
    raw["run_dir"] = str(run_dir)
    for k, v in over.items():
        C.apply_override(raw, f"{k}={v}")
    return C.from_dict(raw)


def strip(obj):
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [strip(x) for x in obj]
    return obj


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cli.enable_compile_cache()
    d = tmp_path_factory.mktemp("r1") / "run"
    summary = run_pipeline(load(d), d, progress=False)
    return d, summary


@pytest.mark.slow
def test_every_stage_reports_held_out_and_per_task_metrics(reference):
    d, summary = reference
    assert list(summary) == STAGES
    assert json.loads((d / "summary.json").read_text()) == summary
    for name in STAGES:
        s = summary[name]
        assert {"pass@1", "pass@2", "mean_response_tokens", "format_rate", "wall_seconds"} <= s.keys(), name
        assert set(s["tasks"]) == {"arithmetic", "instruct"}  # every stage on every task of the config
        assert "by_difficulty" in s["tasks"]["instruct"]
    rj = summary["rsft"]["rejection"]
    assert rj["samples"] == 16 and rj["kept"] == 8 and rj["capped"] == 8 and rj["acceptance_rate"] == 1.0
    kept = [json.loads(x) for x in (d / "checkpoints" / "rsft" / "kept.jsonl").read_text().splitlines()]
    assert len(kept) == 8 and all({"prompt", "solution", "answer", "task"} <= k.keys() for k in kept)
    ds = summary["distill"]
    assert ds["distill"]["mode"] == "logits" and ds["distill"]["kept"] == 4
    assert ds["grpo_baseline"]["steps"] == 4 and "pass@1" in ds["grpo_baseline"]
    recs = read_metrics(d)
    trained = [r for r in recs if "held_out/problems" not in r]
    mt = [r for r in trained if r["stage"] == "multitask"]
    assert len(mt) == 2 and {"arithmetic/accuracy", "instruct/accuracy", "instruct/instruct", "accuracy"} <= mt[0].keys()
    assert [r["step"] for r in trained if r["stage"] == "distill/grpo_baseline"] == [1, 2, 3, 4]
    assert next(r for r in recs if r["stage"] == "rsft" and r["step"] == 0)["kept"] == 8


@pytest.mark.slow
def test_every_stage_kind_draws_a_held_out_curve(reference):
    """eval.every: 2 (the config's): a held-out point before each stage's first step and every 2 steps, the
    last one the end-of-stage evaluation; a stage's first point is where the stage it starts from ended."""
    d, summary = reference
    curve = {(r["stage"], r["step"]): r for r in read_metrics(d) if "held_out/problems" in r}
    assert list(curve) == [("sft", 0), ("sft", 2), ("grpo", 0), ("grpo", 2), ("rsft", 0), ("rsft", 2), ("rsft", 4),
                           ("multitask", 0), ("multitask", 2), ("distill", 0), ("distill", 2),
                           ("distill/grpo_baseline", 0), ("distill/grpo_baseline", 2), ("distill/grpo_baseline", 4),
                           ("distill", 4)]
    ends = {"sft": 2, "grpo": 2, "rsft": 4, "multitask": 2, "distill": 4}
    for name, step in ends.items():
        point, s = curve[(name, step)], summary[name]
        assert point["held_out/problems"] == 8  # 4 problems of each task
        for task in ("arithmetic", "instruct"):
            for k in ("pass@1", "pass@2", "mean_response_tokens", "format_rate"):
                assert point[f"held_out/{task}/{k}"] == s["tasks"][task][k], (name, task, k)
        assert point["held_out/pass@1"] == s["pass@1"]
    assert curve[("distill/grpo_baseline", 4)]["held_out/pass@1"] == summary["distill"]["grpo_baseline"]["pass@1"]

    def per_task(r):
        return {k: v for k, v in r.items() if k.startswith(("held_out/arithmetic/", "held_out/instruct/"))}

    # grpo and multitask start from the stage before them (sft, rsft): the same params, problems and seeds
    assert per_task(curve[("grpo", 0)]) == per_task(curve[("sft", 2)])
    assert per_task(curve[("multitask", 0)]) == per_task(curve[("rsft", 4)])


@pytest.mark.slow
def test_manifests_form_a_complete_chain(reference):
    d, _ = reference
    mans = {n: json.loads((d / "checkpoints" / n / "manifest.json").read_text()) for n in STAGES}
    for n, m in mans.items():
        assert m["complete"] and m["stage"] == n and m["config_hash"] == mans["sft"]["config_hash"]
        assert m["code_version"] and "pass@1" in m["held_out"] and "instruct/pass@1" in m["held_out"]
        for role in ("parent", "sampler", "teacher"):
            ref = m.get(role)
            if ref and ref["kind"] == "stage":  # every reference names a finished checkpoint and its step
                parent = json.loads((Path(ref["checkpoint"]) / "manifest.json").read_text())
                assert parent["stage"] == ref["stage"] and parent["final_step"] == ref["step"]
    assert mans["sft"]["parent"]["kind"] == "fresh"
    assert mans["rsft"]["parent"]["stage"] == "sft" and mans["rsft"]["sampler"]["stage"] == "grpo"
    assert mans["multitask"]["parent"]["stage"] == "rsft"
    assert mans["distill"]["teacher"]["stage"] == "multitask" and mans["distill"]["parent"]["kind"] == "fresh"
    chain, node = [], "distill"
    while True:  # teacher -> ... -> fresh: the student's knowledge traces back to the first stage
        m = mans[node]
        ref = m.get("teacher") or m["parent"]
        if ref["kind"] != "stage":
            break
        chain.append(ref["stage"])
        node = ref["stage"]
    assert chain == ["multitask", "rsft", "sft"]


@pytest.mark.slow
def test_kill_mid_stage_then_rerun_finishes_with_the_same_results(reference, tmp_path):
    ref_dir, ref_summary = reference
    d = tmp_path / "run"
    cmd = [sys.executable, "-m", "reasoning_rl", "run", R1_TINY, "--no-progress", "--run-dir", str(d)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline, killed = time.time() + 300, False
    while time.time() < deadline and proc.poll() is None:  # kill inside the distill stage's GRPO baseline
        recs = read_metrics(d) if (d / "metrics.jsonl").exists() else []
        if any(r["stage"] == "distill/grpo_baseline" and r["step"] >= 3 for r in recs):
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed, "the run finished before it could be killed"
    assert not (d / "checkpoints" / "distill" / "manifest.json").exists()
    p = run_here(*cmd[3:])  # the same command, finishing in this process
    assert p.returncode == 0, p.stderr[-3000:]
    for name in STAGES[:-1]:
        assert f"stage {name} already complete" in p.stderr
    assert strip(read_metrics(d)) == strip(read_metrics(ref_dir))
    assert strip(json.loads((d / "summary.json").read_text())) == strip(ref_summary)


@pytest.mark.slow
def test_init_from_another_runs_stage_dir(reference, tmp_path):
    ref_dir, _ = reference
    raw = C.load_raw(R1_TINY)
    raw["stages"] = [{"name": "more", "kind": "sft", "steps": 1, "batch_size": 4,
                      "init": str(ref_dir / "checkpoints" / "rsft")}]
    d = tmp_path / "run"
    summary = run_pipeline(C.from_dict({**raw, "run_dir": str(d)}), d, progress=False)
    assert "pass@1" in summary["more"]
    man = json.loads((d / "checkpoints" / "more" / "manifest.json").read_text())
    assert man["parent"]["kind"] == "checkpoint" and man["parent"]["stage"] == "rsft" and man["parent"]["step"] == 4
    assert (d / "tokenizer.model").read_bytes() == (ref_dir / "tokenizer.model").read_bytes()
    raw["stages"][0]["init"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"stages\[0\].init: .*neither an earlier stage"):
        run_pipeline(C.from_dict({**raw, "run_dir": str(tmp_path / "bad")}), tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_eval_cli_budget_curve_and_plot(reference, tmp_path, capsys, caplog):
    d, _ = reference
    # more problems than the task holds out: all of them are evaluated, and a line says so
    assert cli.main(["eval", str(d), "--stage", "grpo", "--set", "eval.num_problems=50", "--out",
                     str(tmp_path / "all")]) == 0
    held = json.loads((tmp_path / "all" / "eval.json").read_text())["held_out"]["tasks"]["arithmetic"]
    assert held["num_problems"] == 8
    assert "grpo: eval.num_problems is 50, the arithmetic task holds out 8 problems: all 8 are evaluated" in [
        r.getMessage() for r in caplog.records]
    capsys.readouterr()
    assert cli.main(["eval", str(d), "--stage", "grpo", "--budgets", "0,2,4", "--set", "eval.num_problems=4",
                     "--json"]) == 0
    out = d / "eval" / "grpo"
    curve = json.loads((out / "budget_forcing.json").read_text())
    assert curve["budgets"] == [0, 2, 4] and len(curve["accuracy"]) == 3
    assert all(t <= b for t, b in zip(curve["mean_think_tokens"], curve["budgets"]))
    assert (out / "budget_forcing.png").stat().st_size > 1000
    full = json.loads((out / "eval.json").read_text())
    assert full["held_out"]["tasks"]["arithmetic"]["num_problems"] == 4
    assert json.loads(capsys.readouterr().out) == {**full, "out": str(out)}  # --json prints eval.json's figures
    # a stage dir as the target (the student of the distill stage), budget curve only, printed as a table
    assert cli.main(["eval", str(d / "checkpoints" / "distill"), "--budgets", "0,3", "--budget-only",
                     "--out", str(tmp_path / "ev")]) == 0
    curve = json.loads((tmp_path / "ev" / "budget_forcing.json").read_text())
    assert curve["stage"] == "distill"
    printed = capsys.readouterr().out
    assert "held-out" not in printed and f"accuracy against thinking budget ({curve['task']}, " in printed
    for b, acc, think in zip(curve["budgets"], curve["accuracy"], curve["mean_think_tokens"]):
        assert any(ln.split()[:3] == [str(b), f"{acc:.3f}", f"{think:.1f}"] for ln in printed.splitlines())
    assert cli.main(["plot", str(d)]) == 0
    assert (d / "plots" / "training_curves.png").stat().st_size > 1000
    assert cli.main(["eval", str(tmp_path / "nothing")]) == 2
    # a kept intermediate step (rsft keeps 2 and 4): the figures of the held-out curve's point there
    assert cli.main(["eval", str(d), "--stage", "rsft", "--step", "2"]) == 0
    got = json.loads((d / "eval" / "rsft" / "step_2" / "eval.json").read_text())
    point = next(r for r in read_metrics(d) if r["stage"] == "rsft" and r["step"] == 2 and "held_out/problems" in r)
    assert got["step"] == 2 and got["held_out"]["pass@1"] == point["held_out/pass@1"]
    for task in ("arithmetic", "instruct"):
        for k in ("pass@1", "pass@2", "mean_response_tokens", "format_rate"):
            assert got["held_out"]["tasks"][task][k] == point[f"held_out/{task}/{k}"], (task, k)
    capsys.readouterr()
    assert cli.main(["eval", str(d), "--stage", "rsft", "--step", "3"]) == 2
    err = capsys.readouterr().err
    assert "config error: --step: stage rsft has no checkpoint step 3 in " in err and "(kept: 2, 4;" in err, err


def test_rejection_filter_keeps_verified_distinct_capped():
    rows = [{"prompt": "p0", "key": "k0", "task": "a", "solution": "ref"}, {"prompt": "p1", "key": "k1", "task": "b"}]
    texts = ["x", "x ", "y", "z", "bad", "u", "u", "v"]
    correct = [1, 1, 1, 1, 0, 1, 1, 0]
    fmt = [1, 1, 1, 1, 1, 0, 1, 1]
    spec = SampleSpec(2, 4, 2, 1.0, 8, 8)
    kept, stats = filter_samples(rows, texts, correct, fmt, 4, spec)
    assert [(k["key"], k["solution"]) for k in kept] == [("k0", "x"), ("k0", "y"), ("k1", "u")]
    assert stats["accepted"] == 5 and stats["duplicates"] == 1 and stats["capped"] == 1 and stats["kept"] == 3
    assert stats["acceptance_rate"] == 5 / 8 and stats["per_task_acceptance"] == {"a": 1.0, "b": 0.25}
    lax = SampleSpec(2, 4, 4, 1.0, 8, 8, require_correct=False, require_format=False)
    assert len(filter_samples(rows, texts, correct, fmt, 4, lax)[0]) == 6  # 8 minus 2 duplicates
