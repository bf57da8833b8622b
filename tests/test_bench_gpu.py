"""The GPU check's gap part runs on any backend (``--tiny``): the JSON it writes on a device is what the
README's account of the bf16 gap reads, so its shape is tested here."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gap_only_reports_gap_and_gemm_invariance():
    """The gap part as gpu_check.sh runs it, here with XLA's excess precision off (its flags are recorded;
    the default flags run the same code)."""
    flags = "--xla_allow_excess_precision=false"
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, str(ROOT / "tools/bench_gpu.py"), "--gap-only", "--tiny"], env=env,
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["xla_flags"] == flags
    gap = res["logprob_gap_bf16"]
    assert gap["tokens"] > 0 and 0 <= gap["median"] <= gap["p99"] <= gap["max"] < 1.0
    exact = res["logprob_gap_bf16_batch_invariant"]  # model.batch_invariant: none left (on this CPU)
    assert exact["tokens"] > 0 and exact["max"] == 0.0 and exact["sample_s"] > 0
    inv = res["gemm_invariance"]
    assert {r["proj"] for r in inv} == {"q", "kv", "o", "gate_up", "down", "head"}
    assert {r["m"] for r in inv} == {1, 8}
    for r in inv:
        assert 0.0 <= r["differing_frac"] <= r["rows_differing_frac"] <= 1.0 and r["max_rel"] >= 0.0


def test_gemma4_e2b_shape_decode_and_train_report_their_rooflines():
    """``--shape gemma4-e2b`` (gpu_check.sh's e2b part) on the toy E2B: the roofline counts the cached layers'
    keys/values (a sliding layer's window only: less than every slot) and the step's model FLOPs."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, str(ROOT / "tools/bench_gpu.py"), "--tiny", "--shape", "gemma4-e2b",
                          "--batches", "4", "--no-gap"], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["shape"] == "gemma4-e2b"
    (dec,) = res["decode"]
    assert 0 < dec["kv_bytes_per_step"] < dec["kv_bytes_all_slots"] and dec["tokens_per_s"] > 0
    assert res["train"]["model_tflops_per_s"] > 0 and res["train"]["loss"] > 0
