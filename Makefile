# One command to set up and run the demo workflow, one to set up and run the tests.
# Both self-install into .venv on a fresh machine (Python 3.11 + PyPI only).
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rvi-installed
CORES ?= 2

.PHONY: setup demo test test-slurm lint format clean

setup: $(STAMP)

# torch goes first and pinned: the CPU wheel on this machine's disk satisfies it, and no CUDA build
# is pulled in by a dependency asking for an unpinned torch. constraints.txt spares the resolver its backtracking.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --snakefile workflow/Snakefile --cores $(CORES) --configfile config/demo.yaml

# --dist loadscope keeps each test module on one worker, so a module's shared fixture (a Snakemake run, a
# trained model) is built once; pytest 9.2 ignores xdist_group marks (xdist 3.8 rewrites a node id it no longer reads).
test: $(STAMP)
	@# The report's browser test uses Chromium; as root with apt-get, install it quietly if missing (never fatal).
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		{ apt-get update -qq && apt-get install -y -qq chromium; } >/dev/null 2>&1 || true; fi
	$(BIN)/python -m pytest -n 2 --dist loadscope -q -rs --durations=25

# The demo through profiles/slurm on a one-node SLURM cluster started on this machine (needs root and
# `apt-get install -y slurm-wlm munge`; scripts/local_slurm.sh starts and always stops the daemons).
test-slurm: $(STAMP)
	RVI_SLURM_TEST=1 $(BIN)/pytest tests/workflow/test_slurm_local.py -q -rs

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/snakemake --snakefile workflow/Snakefile --lint --configfile config/demo.yaml

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf results .snakemake demo_out
