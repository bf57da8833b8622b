# Two entry points; each creates .venv on first use.
#   make quickstart   cold-start SFT then GRPO on the built-in task (configs/quickstart.yaml)
#   make test         the test suite (pytest -n 2), with the parity extra (torch CPU + transformers)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
ARGS ?=

$(VENV)/.core: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

# torch==2.13.0 first: it is a CPU wheel on these machines; an unpinned torch would pull a CUDA build.
$(VENV)/.test: $(VENV)/.core
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,test]'
	touch $@

.PHONY: quickstart test bench sandbox-deps
quickstart: $(VENV)/.core
	$(VENV)/bin/reasoning-rl run configs/quickstart.yaml $(ARGS)

# The code sandbox needs bubblewrap: installed here when missing and this is root with apt; otherwise the
# isolation tests skip, naming the fix (they never run candidates unisolated instead).
sandbox-deps:
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null) ; } || \
	  echo "note: bubblewrap is not installed (apt-get install bubblewrap): the code-sandbox tests will skip"

test: $(VENV)/.test sandbox-deps
	$(VENV)/bin/pytest -n 2 --dist worksteal -q $(ARGS)

bench: $(VENV)/.core
	$(PY) tools/bench.py $(ARGS)
