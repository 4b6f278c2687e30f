# Two commands: `make demo` (install + run the tiny DAG + report) and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
CORES  ?= 2
STAMP  := $(VENV)/.installed

.PHONY: demo test install lint report clean help

help:
	@echo "make demo   - create $(VENV), install, run the tiny DAG on $(CORES) cores, write results/report.html"
	@echo "make test   - create/update $(VENV), run the test suite"
	@echo "make lint   - ruff + snakemake --lint"
	@echo "make clean  - remove results/, logs/, benchmarks/, .snakemake/"

install: $(STAMP)

# Reinstall whenever the dependency pins change. pip takes torch==2.13.0 (CPU) from local disk
# where it lies there, otherwise from the registry; never a CUDA build.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH, or run: make PYTHON=python3 ..."; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --cores $(CORES) --report results/report.html

test: $(STAMP)
	scripts/install-chromium.sh
	$(BIN)/python -m pytest -ra

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/snakemake --lint

clean:
	rm -rf results logs benchmarks .snakemake
