"""Packed SFT (``stages[].pack``) end to end, on two hosts: a file task whose worked solutions run from a few
tokens to several dozen. Two ``jax.distributed`` processes (2 CPU devices each), each packing the sequences it
loads, run fewer rows than sequences and take the padded one-process stage's losses and targets (the same
examples, the same init). The model-level equality of loss and gradient is
``test_steps.py::test_packed_sft_step_equals_the_padded_one``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import compared_env

from reasoning_rl.metrics import read_metrics

pytestmark = pytest.mark.slow
TINY = str(Path(__file__).parent / "configs" / "tiny.yaml")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_packed_sft_on_two_hosts_runs_fewer_rows_with_the_padded_losses(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(64):
        a, b = (int(x) for x in rng.integers(1, 99, 2))
        steps = " ".join(f"step {k} adds {a} and {b}" for k in range(int(rng.choice([0, 0, 1, 6]))))
        rows.append({"prompt": f"{a}+{b}=", "solution": f"{steps} <answer>{a + b}</answer>", "answer": str(a + b)})
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def cmd(d: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "reasoning_rl", "run", TINY, "--no-progress", "--run-dir", str(d),
                "--set", f"task={{name: file, path: {data}, held_out_size: 8}}", "--set", "mesh.data=4",
                "--set", "stages=[{name: sft, kind: sft, steps: 4, batch_size: 16}]", "--set", "eval.num_problems=4",
                *extra]

    port = _port()
    hosts = [subprocess.Popen(cmd(tmp_path / "packed", "--set", "stages.sft.pack=true"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True,
                              env=compared_env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                               JAX_PROCESS_ID=str(i)))
             for i in range(2)]
    one = subprocess.run(cmd(tmp_path / "padded"), capture_output=True, text=True, timeout=600, env=compared_env(4))
    errs = [h.communicate(timeout=600)[1] for h in hosts]
    assert one.returncode == 0, one.stderr[-3000:]
    assert [h.returncode for h in hosts] == [0, 0], [e[-3000:] for e in errs]
    padded, packed = ([r for r in read_metrics(tmp_path / n) if r["stage"] == "sft" and "loss" in r]
                      for n in ("padded", "packed"))
    assert len(padded) == len(packed) == 4 and "rows" not in padded[0]
    assert all(r["rows"] in (16, 8, 4) and 0 < r["fill"] <= 1 for r in packed)
    assert min(r["rows"] for r in packed) < 16, packed  # several sequences a row
    assert [r["tokens"] for r in packed] == [r["tokens"] for r in padded]  # the same targets
    for a, b in zip(packed, padded):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a["step"], a["loss"], b["loss"])
