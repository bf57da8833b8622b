"""Preemption across hosts: every process stops at the same step; the grace period bounds the exit."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

WORKER = str(Path(__file__).parent / "preemption_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(n: int, signalled: int, signal_at: int, grace: float = 0.0, hang: bool = False):
    port = free_port()
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    return [subprocess.Popen([sys.executable, WORKER, str(port), str(n), str(i), str(signalled), str(signal_at),
                              str(grace), "1" if hang else "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, **env}) for i in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("signalled", [0, 1])
def test_hosts_agree_on_the_step_to_stop_at(signalled):
    procs = launch(2, signalled, signal_at=5)
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 75, err[-2000:]
    stopped = [int(out.split("STOPPED")[1].split()[0]) for out, _ in outs]
    assert stopped == [5, 5]  # the SIGTERMed host's step, on both hosts
    other = outs[1 - signalled][1]
    assert "another host was preempted" in other


def test_grace_period_bounds_the_exit():
    (p,) = launch(1, 0, signal_at=3, grace=1.0, hang=True)
    t0 = time.time()
    out, err = p.communicate(timeout=60)
    assert p.returncode == 75
    assert time.time() - t0 < 30  # not the 60 s the stuck write would take
    assert "grace period of 1 s ran out" in err and "STOPPED" not in out
