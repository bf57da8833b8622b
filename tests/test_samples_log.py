"""What a user reads of the completions: ``eval``'s ``samples.jsonl``, ``run``'s ``rollouts.jsonl`` (and the
TensorBoard text of the same) and its end-of-stage ``held_out/<stage>/samples.jsonl``, whose ``correct`` fields must add up to the figures reported beside them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_here

from reasoning_rl.metrics import MetricsWriter, read_metrics

TINY = str(Path(__file__).parent / "configs" / "tiny.yaml")
FIELDS = {"prompt", "completion", "answer", "reference", "rewards", "correct", "tokens", "truncated"}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_rollouts_and_eval_samples_agree_with_the_aggregates(tmp_path):
    run = tmp_path / "run"
    rows = 16  # prompts_per_step x group_size: every rollout is kept
    p = run_here("run", TINY, "--no-progress", "--run-dir", str(run), "--set", "task.digits=1", "--set",
                 "stages.sft.steps=8", "--set", "stages.grpo.steps=3", "--set", f"log.rollouts_per_step={rows}")
    assert p.returncode == 0, p.stderr[-3000:]
    recs = _jsonl(run / "rollouts.jsonl")
    metrics = {r["step"]: r for r in read_metrics(run) if r["stage"] == "grpo"}
    assert sorted({r["step"] for r in recs}) == [1, 2, 3] and len(recs) == 3 * rows
    for step, m in metrics.items():
        mine = [r for r in recs if r["step"] == step]
        assert FIELDS <= set(mine[0]) and mine[0]["stage"] == "grpo"
        assert np.mean([r["correct"] for r in mine]) == pytest.approx(m["accuracy"], abs=1e-6)
        assert np.mean([r["reward"] for r in mine]) == pytest.approx(m["reward_mean"], abs=1e-5)
        assert np.mean([r["tokens"] for r in mine]) == pytest.approx(m["response_len"], abs=1e-5)
        assert all(r["tokens"] <= 32 and (not r["truncated"] or r["tokens"] == 32) for r in mine)
    events = b"".join(f.read_bytes() for f in (run / "tensorboard").iterdir())
    assert b"grpo/rollouts" in events  # the same rollouts as TensorBoard text
    summary = json.loads((run / "summary.json").read_text())
    for stage in ("sft", "grpo"):  # each stage's end-of-stage evaluation inside run keeps its completions too
        _check_samples(_jsonl(run / "held_out" / stage / "samples.jsonl"), summary[stage])
    run_samples = _jsonl(run / "held_out" / "grpo" / "samples.jsonl")

    p = run_here("eval", str(run))
    assert p.returncode == 0, p.stderr[-3000:]
    held = json.loads((run / "eval" / "grpo" / "eval.json").read_text())["held_out"]
    samples = _jsonl(run / "eval" / "grpo" / "samples.jsonl")
    _check_samples(samples, held)
    row = next(ln for ln in p.stdout.splitlines() if ln.startswith("grpo "))  # the printed table is eval.json's
    assert row.split()[1] == f"{held['pass@1']:.3f}" and row.split()[-3] == f"{held['greedy_accuracy']:.3f}"
    assert f"written: {run / 'eval' / 'grpo'}/ (eval.json, samples.jsonl)" in p.stdout
    assert any(s["correct"] for s in samples + recs + run_samples)  # the agreement above is not all zeros


def _check_samples(samples: list[dict], held: dict) -> None:
    """``samples.jsonl`` records against the held-out figures reported beside them."""
    sampled = [s for s in samples if not s["greedy"]]
    greedy = [s for s in samples if s["greedy"]]
    assert len(sampled) == held["num_problems"] * held["samples_per_problem"] and len(greedy) == held["num_problems"]
    assert FIELDS <= set(sampled[0]) and set(sampled[0]["rewards"]) == {"accuracy", "format"}
    assert np.mean([s["correct"] for s in sampled]) == pytest.approx(held["pass@1"], abs=1e-9)
    assert np.mean([s["correct"] for s in greedy]) == pytest.approx(held["greedy_accuracy"], abs=1e-9)
    assert np.mean([s["tokens"] for s in sampled]) == pytest.approx(held["mean_response_tokens"], abs=1e-9)
    assert all(s["correct"] == (s["rewards"]["accuracy"] >= 1.0) for s in samples)


def test_rollouts_rotate_by_size_and_resume_cuts_them_back(tmp_path):
    w = MetricsWriter(tmp_path, tensorboard=False)
    rec = {"prompt": "1+1=", "completion": "<answer>2</answer>" * 20, "correct": True}
    for step in range(1, 9):
        w.write_rollouts([{"stage": "grpo", "step": step, **rec}] * 2, max_bytes=1500, keep=2)
    w.close()
    files = sorted(tmp_path.glob("rollouts.jsonl*"))
    assert [f.name for f in files] == ["rollouts.jsonl", "rollouts.jsonl.1", "rollouts.jsonl.2"]
    assert all(f.stat().st_size < 1500 + 2 * 600 for f in files)
    steps = [r["step"] for f in reversed(files) for r in _jsonl(f)]
    assert steps == sorted(steps) and steps[-1] == 8 and steps[0] > 1  # the oldest were dropped
    w = MetricsWriter(tmp_path, tensorboard=False)
    w.truncate("grpo", 7)  # resumed from step 7: step 8 is rewritten by the resumed run
    w.close()
    assert max(r["step"] for r in _jsonl(tmp_path / "rollouts.jsonl")) == 7


TB_PROBE = r"""
import sys
from pathlib import Path
from reasoning_rl.metrics import MetricsWriter
w = MetricsWriter(sys.argv[1])
w.write({"stage": "grpo", "step": 1, "loss": 0.5})
w.write_rollouts([{"stage": "grpo", "step": 1, "prompt": "1+1=", "completion": "2", "correct": True}])
w.close()
assert "torch" not in sys.modules, "tensorboardX pulled in torch"
assert list(Path(sys.argv[1], "tensorboard").glob("events.out.tfevents.*"))
import torch  # hidden only while tensorboardX was imported
assert torch.ones(2).sum().item() == 2.0
print("ok")
"""


def test_tensorboard_events_are_written_without_importing_torch(tmp_path):
    """tensorboardX imports torch when it is installed (a second and hundreds of MB per run), only to accept
    torch tensors: the writer hides it for that import, and torch still imports afterwards."""
    pytest.importorskip("torch", reason="what is checked is that an installed torch is not imported")
    p = subprocess.run([sys.executable, "-c", TB_PROBE, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]


def _events(logdir: Path) -> list:
    """Every event of a run's TensorBoard files (TFRecord framing: length, its CRC, the Event proto, its CRC)."""
    import struct

    from tensorboardX.proto import event_pb2

    out = []
    for f in sorted(logdir.glob("events.out.tfevents.*")):
        b, i = f.read_bytes(), 0
        while i < len(b):
            (n,) = struct.unpack("<Q", b[i:i + 8])
            out.append(event_pb2.Event.FromString(b[i + 12:i + 12 + n]))
            i += 16 + n
    return out


def test_tensorboard_events_hold_each_record_and_a_failed_write_is_one_warning(tmp_path, caplog):
    w = MetricsWriter(tmp_path)
    w.write({"stage": "grpo", "step": 1, "loss": 0.5, "reward_mean": 1, "flag": True, "note": "x"})
    w.write({"stage": "grpo", "step": 2, "loss": 0.25, "reward_mean": 0})
    w.write_rollouts([{"stage": "grpo", "step": 2, "prompt": "1+1=", "completion": "2", "correct": True}])
    w.close()
    got = [(e.step, [(v.tag, v.simple_value) for v in e.summary.value]) for e in _events(tmp_path / "tensorboard")]
    assert got[1:] == [(1, [("grpo/loss", 0.5), ("grpo/reward_mean", 1.0)]),
                       (2, [("grpo/loss", 0.25), ("grpo/reward_mean", 0.0)]),
                       (2, [("grpo/rollouts/text_summary", 0.0)])]  # after the file-version event
    d = tmp_path / "again"
    w = MetricsWriter(d)
    w.write({"stage": "sft", "step": 1, "loss": 1.0})

    def full(*a):
        raise OSError(28, "No space left on device")

    w._tb._w.write_event = full  # the disk fills up under the event file
    for step in (2, 3):
        w.write({"stage": "sft", "step": step, "loss": 1.0})
    w.close()
    warned = [r.getMessage() for r in caplog.records if "tensorboard" in r.getMessage()]
    assert len(warned) == 1 and "no space left on device" in warned[0] and "no more TensorBoard events" in warned[0]
    assert [r["step"] for r in read_metrics(d)] == [1, 2, 3]  # metrics.jsonl, the run's record, has every step


@pytest.mark.slow
def test_cpu_example_config_runs_on_a_random_model_of_its_family(tmp_path):
    """configs/examples/smollm2-135m_gsm8k_cpu.yaml as shipped (chat template, GSM8K preset, two CPU devices,
    remat, chunked log-probs), on a toy Llama directory written by tools/random_hf_model.py."""
    root = Path(__file__).parent.parent
    model, data, run = tmp_path / "model", tmp_path / "gsm8k", tmp_path / "run"
    p = subprocess.run([sys.executable, str(root / "tools" / "random_hf_model.py"), "tiny-llama", str(model),
                        "--gsm8k", str(data), "--rows", "64"], capture_output=True, text=True, timeout=300,
                       check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    p = run_here("run", str(root / "configs" / "examples" / "smollm2-135m_gsm8k_cpu.yaml"), "--no-progress",
                 "--run-dir", str(run), "--set", f"model.path={model}", "--set", f"task.path={data}/train.jsonl",
                 "--set", f"task.held_out_path={data}/test.jsonl", "--set", "stages.grpo.steps=1",
                 "--set", "rollout.max_new_tokens=24", "--set", "eval.num_problems=2")
    assert p.returncode == 0, p.stderr[-3000:]
    (rec,) = [r for r in read_metrics(run) if r["stage"] == "grpo"]
    assert rec["step"] == 1 and np.isfinite(rec["loss"])
    rollouts = _jsonl(run / "rollouts.jsonl")
    assert len(rollouts) == 4 and rollouts[0]["prompt"].startswith("<|im_start|>system\nThink step by step")
    assert all(r["reference"].endswith(tuple("0123456789")) for r in rollouts)
