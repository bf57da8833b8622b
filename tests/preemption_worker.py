"""Worker for test_preemption.py: a step loop under PreemptionGuard, in one of several JAX processes."""

import os
import signal
import sys
import time

import jax

from reasoning_rl.stages.common import PreemptionGuard

if __name__ == "__main__":
    port, n, pid, signalled, signal_at, grace, hang = sys.argv[1:]
    n, pid = int(n), int(pid)
    if n > 1:
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=n, process_id=pid)
    with PreemptionGuard(float(grace)) as guard:
        for step in range(1, 200):
            time.sleep(0.02 * (1 + pid))  # hosts run at different speeds; the check is what lines them up
            if pid == int(signalled) and step == int(signal_at):
                os.kill(os.getpid(), signal.SIGTERM)
            if guard.should_stop(step):
                if hang == "1":  # a checkpoint write that never completes
                    time.sleep(60)
                print(f"STOPPED {step}", flush=True)
                guard.done()
                sys.exit(75)
    print("FINISHED", flush=True)
