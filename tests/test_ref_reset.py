"""ProRL's reference resets (``algorithm.ref_reset``): after every N-th step the KL reference is the policy
and Adam's moments start over; a stage stopped between resets and continued equals the uninterrupted one."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import run_here

from reasoning_rl.metrics import read_metrics

pytestmark = pytest.mark.slow
TINY = str(Path(__file__).parent / "configs" / "tiny.yaml")
RESET = ("--set", "stages.grpo.algorithm.beta=0.05", "--set", "stages.grpo.algorithm.ref_reset.every=2",
         "--set", "stages.grpo.optimizer.lr=0.01", "--set", "checkpoint.every=4",
         # GRPO alone, from random weights: what the resets do does not need a cold start
         "--set", "stages.sft.steps=0", "--set", "stages.sft.allow_empty=true",
         "--set", "stages.grpo.allow_random_init=true")
TIMING = {"seconds", "sample_s", "update_s", "gen_tokens_per_s", "tokens_per_s", "wall_seconds"}


def run(d: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_here("run", TINY, "--no-progress", "--run-dir", str(d), *RESET, *extra)


def grpo(d: Path) -> dict[int, dict]:
    return {r["step"]: {k: v for k, v in r.items() if k not in TIMING}
            for r in read_metrics(d) if r["stage"] == "grpo"}


def test_reference_resets_and_a_resumed_stage_continues_with_the_saved_reference(tmp_path):
    whole = tmp_path / "whole"
    p = run(whole)
    assert p.returncode == 0, p.stderr[-3000:]
    got = grpo(whole)
    assert sorted(got) == list(range(1, 7))
    assert [s for s in got if got[s].get("ref_reset")] == [2, 4, 6]
    assert "after step 2 the KL reference is the policy and the optimizer's moments start over" in p.stderr
    # the first step after a reset measures the KL to the params it samples with: none; the others do not
    for s in (1, 3, 5):
        assert abs(got[s]["kl"]) < 1e-9, (s, got[s]["kl"])
    for s in (2, 4, 6):
        assert got[s]["kl"] > 1e-7, (s, got[s]["kl"])

    # stopped after step 3 (its checkpoint holds the reference reset at step 2), continued to 6 (checkpoints
    # only at 3 and 4 on the way: the step-4 reset is redone, not read)
    part = tmp_path / "part"
    p = run(part, "--set", "stages.grpo.steps=3")
    assert p.returncode == 0, p.stderr[-3000:]
    assert (part / "checkpoints" / "grpo" / "3" / "reference").is_dir()
    p = run(part, "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "stage grpo goes on from its step-3" in p.stderr
    assert grpo(part) == got
