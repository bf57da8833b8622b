"""End to end: a reward that cannot score is counted per step and stops the stage past the allowed rate; a
code reward with no isolating sandbox refuses to start; the explicit unsafe setting runs and says so."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import run_here

from reasoning_rl.metrics import read_metrics

HERE = Path(__file__).parent
TINY = yaml.safe_load((HERE / "configs" / "tiny.yaml").read_text())
CODE = yaml.safe_load((HERE / "configs" / "code_tiny.yaml").read_text())


def _run(tmp_path, cfg, *sets, env=None):
    """The run of ``cfg`` in this process (helpers.run_here; this directory is on the path, for the rewards
    named ``module:function``), or in a subprocess when it needs other environment variables (``env``)."""
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    args = ["run", str(path), "--no-progress", "--no-plots", "--run-dir", str(tmp_path / "run"),
            *[a for s in sets for a in ("--set", s)]]
    if not env:
        return run_here(*args)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.run([sys.executable, "-m", "reasoning_rl", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def _flaky(cfg):
    cfg = json.loads(json.dumps(cfg))
    cfg["rewards"] = [{"name": "accuracy", "weight": 1.0}, {"name": "reward_plugins:half_fail", "weight": 0.1}]
    cfg["stages"] = [{"name": "sft", "kind": "sft", "steps": 2, "batch_size": 8},
                     {"name": "grpo", "kind": "grpo", "steps": 2, "init": "sft"}]
    return cfg


@pytest.mark.slow
def test_a_reward_failing_on_half_the_samples_stops_the_stage(tmp_path):
    p = _run(tmp_path, _flaky(TINY))
    assert p.returncode == 1, p.stderr[-3000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: stage grpo: reward 'reward_plugins:half_fail' could not score"), last
    assert "first error: RuntimeError: grader backend unreachable" in last
    assert "algorithm.max_reward_error_rate" in last


@pytest.mark.slow
def test_reward_errors_below_the_rate_are_counted_per_reward(tmp_path):
    p = _run(tmp_path, _flaky(TINY), "algorithm.max_reward_error_rate=1.0")
    assert p.returncode == 0, p.stderr[-3000:]
    grpo = [r for r in read_metrics(tmp_path / "run") if r["stage"] == "grpo"]
    assert len(grpo) == 2
    for r in grpo:
        n = r["reward_errors/reward_plugins:half_fail"]
        assert 0 < n < 16 and r["reward_errors/accuracy"] == 0 and r["reward_errors"] == n
    assert "could not score a sample" in p.stderr  # the first failure is shown, not swallowed


def _code(kwargs):
    cfg = json.loads(json.dumps(CODE))
    cfg["rewards"] = [{"name": "code", "weight": 1.0, "kwargs": kwargs}, {"name": "format", "weight": 0.1}]
    cfg["stages"] = [{"name": "sft", "kind": "sft", "steps": 1, "batch_size": 8},
                     {"name": "grpo", "kind": "grpo", "steps": 1, "init": "sft"}]
    return cfg


def test_no_isolating_sandbox_refuses_before_any_compute(tmp_path):
    p = _run(tmp_path, _code({"sandbox": "bwrap"}), env={"PATH": "/nonexistent"})
    assert p.returncode == 2, p.stderr[-3000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("config error: stages[0].rewards[0] (code): code rewards need an isolating sandbox")
    assert "apt-get install bubblewrap" in lines[0] and "none-unsafe" in lines[0]
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.slow
def test_the_explicit_unsafe_sandbox_runs_and_warns_at_every_stage(tmp_path):
    p = _run(tmp_path, _code({"sandbox": "none-unsafe"}))
    assert p.returncode == 0, p.stderr[-3000:]
    warned = [ln for ln in p.stderr.splitlines() if "UNISOLATED" in ln]
    stages = [ln.split("WARNING reasoning_rl: ", 1)[1].split(":", 1)[0] for ln in warned
              if "WARNING reasoning_rl: stage " in ln]
    assert stages == ["stage sft", "stage grpo"], p.stderr[-3000:]
    grpo = [r for r in read_metrics(tmp_path / "run") if r["stage"] == "grpo"]
    assert grpo and grpo[0]["reward_errors/code"] == 0
