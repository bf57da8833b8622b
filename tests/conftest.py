import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The two-host tests take a quarter of the suite's time, a minute or two each. Collected first, they start at
# once on one worker (make test: ``--dist worksteal``) while the other takes the rest, and the light tests that
# come last balance the two workers; collected in name order, one of them could be the last test left running
# beside an idle worker.
FIRST = ("test_multihost.py",)


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.path.name not in FIRST)  # stable: every file keeps its own order
