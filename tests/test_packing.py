"""Packed SFT (``stages[].pack``) end to end: a file task whose worked solutions run from a few tokens to
several dozen, on a 2-device mesh. The packed stage runs fewer rows than sequences and takes the padded
stage's first loss (the same examples, the same init); the model-level equality of loss and gradient is
``test_steps.py::test_packed_sft_step_equals_the_padded_one``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reasoning_rl.metrics import read_metrics

pytestmark = pytest.mark.slow
TINY = str(Path(__file__).parent / "configs" / "tiny.yaml")


def test_packed_sft_runs_fewer_rows_with_the_same_loss(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(64):
        a, b = (int(x) for x in rng.integers(1, 99, 2))
        steps = " ".join(f"step {k} adds {a} and {b}" for k in range(int(rng.choice([0, 0, 1, 6]))))
        rows.append({"prompt": f"{a}+{b}=", "solution": f"{steps} <answer>{a + b}</answer>", "answer": str(a + b)})
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--set", f"task={{name: file, path: {data}, held_out_size: 8}}", "--set", "mesh.cpu_devices=2",
              "--set", "stages=[{name: sft, kind: sft, steps: 4, batch_size: 16}]", "--set", "eval.num_problems=4"]
    got = {}
    for name, extra in (("padded", []), ("packed", ["--set", "stages.sft.pack=true"])):
        d = tmp_path / name
        p = subprocess.run([sys.executable, "-m", "reasoning_rl", "run", TINY, "--no-progress", "--run-dir", str(d),
                            *common, *extra], capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        got[name] = [r for r in read_metrics(d) if r["stage"] == "sft" and "loss" in r]
        assert len(got[name]) == 4
    padded, packed = got["padded"], got["packed"]
    assert "rows" not in padded[0]
    assert all(r["rows"] in (16, 8, 4) and 0 < r["fill"] <= 1 for r in packed)
    assert min(r["rows"] for r in packed) < 16, packed  # several sequences a row
    assert [r["tokens"] for r in packed] == [r["tokens"] for r in padded]  # the same targets
    assert packed[0]["loss"] == pytest.approx(padded[0]["loss"], abs=1e-5)
