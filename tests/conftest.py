import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before JAX is imported (helpers imports it)

from helpers import FAST_COMPILE

# Tests, and the runs they start (the CLI in a subprocess), compile under fast-compiling flags (helpers.FAST_COMPILE:
# LLVM's optimisation passes off, the older fusion emitter) and through a persistent compilation cache shared by
# the whole session (the workers and every run they start; removed at the end, so the suite leaves nothing in the
# user's own cache): compiling is most of what a test does, and many tests compile the same programs. Set here,
# before JAX's backend starts: it reads XLA_FLAGS once. What a test compares is computed under the same flags on
# both sides. The exception is a claim about the code as users' runs compile it, bit for bit (two formulations of
# one step give the same bits): such a test is marked ``optimized`` and runs in a pytest process of its own under
# the flags the suite was started with.
OPTIMIZED = "REASONING_RL_TEST_OPTIMIZED"
START = "REASONING_RL_TEST_START_XLA_FLAGS"  # the flags the suite was started with, for the ``optimized`` tests
START_FLAGS = os.environ.setdefault(START, os.environ.get("XLA_FLAGS", ""))
# one per session: the controller's, which its workers inherit (it imports this before it starts them)
SESSION = os.environ.setdefault("REASONING_RL_TEST_SESSION", uuid.uuid4().hex)
CACHE = Path(tempfile.gettempdir()) / f"reasoning_rl_tests_xla_{SESSION}"
os.environ["REASONING_RL_COMPILE_CACHE"] = str(CACHE)  # the runs' cache (reasoning_rl.cli)
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # every program: a test's are small
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
if os.environ.get(OPTIMIZED) == "1" or "xla_backend_optimization_level" in START_FLAGS:  # (the caller's flags)
    os.environ["XLA_FLAGS"] = START_FLAGS
else:
    os.environ["XLA_FLAGS"] = f"{START_FLAGS} {FAST_COMPILE}".strip()
# (so a run a test starts compiles as this process does: a test comparing its numbers bit for bit with this
# process's needs nothing more)
import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", str(CACHE))  # (JAX read the environment when helpers imported it)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# The two-host tests take a quarter of the suite's time, a minute or two each. Collected first, they start at
# once on one worker (make test: ``--dist worksteal``) while the other takes the rest, and the light tests that
# come last balance the two workers; collected in name order, one of them could be the last test left running
# beside an idle worker.
FIRST = ("test_multihost.py",)


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.path.name not in FIRST)  # stable: every file keeps its own order


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if pyfuncitem.get_closest_marker("optimized") is None or os.environ.get(OPTIMIZED) == "1":
        return None
    env = {**os.environ, OPTIMIZED: "1", "XLA_FLAGS": START_FLAGS}
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", pyfuncitem.nodeid],
                       cwd=pyfuncitem.config.rootpath, env=env, capture_output=True, text=True, timeout=1200,
                       check=False)
    last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    if p.returncode == 0 and "skipped" in last and "passed" not in last:
        pytest.skip(f"skipped in its own process: {last}")
    if p.returncode != 0 or "1 passed" not in last:
        pytest.fail(f"{pyfuncitem.nodeid} under the runs' XLA flags (own process, exit {p.returncode}):\n"
                    f"{p.stdout[-6000:]}{p.stderr[-2000:]}", pytrace=False)
    return True


def pytest_sessionfinish(session, exitstatus):
    if "PYTEST_XDIST_WORKER" not in os.environ:  # the controller (or the only process): after every worker
        shutil.rmtree(CACHE, ignore_errors=True)
