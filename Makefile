# Every target installs what it needs first, so `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The stamp changes whenever the dependency declarations change, so `make` reinstalls then.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements/constraints.txt | cksum | cut -d' ' -f1)
PIP    := $(BIN)/python -m pip
PYTEST_ARGS ?=

.PHONY: install test test-slow test-archs lint format demo bench-quality bench-perf bench-gpu clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU build of torch first (it lies on these machines' disk), then the package.
	$(PIP) install -q -c requirements/constraints.txt torch==2.13.0
	$(PIP) install -q -c requirements/constraints.txt -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# OpenMP threads that spin while waiting make torch on a busy 2-core machine dozens of times slower.
TEST_ENV := OMP_WAIT_POLICY=PASSIVE

# The default suite (~9 min on 2 cores): everything not marked slow.
test: install
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The slow tests (~22 min under load): a 2-node Ray cluster and the Jobs API, Airflow 2 and 3 in throwaway venvs,
# S3 fault injection, the wheel, 30 + 30 CLI processes. CI runs them after `make test`.
test-slow: install
	$(TEST_ENV) $(BIN)/python -m pytest -q -m slow --deselect tests/benchmarks/test_archs.py $(PYTEST_ARGS)

# SD 1.5, SD 2.1 and SDXL at full size with random weights, through the editor and the Ray job
# (~6 min; SDXL needs ~7.5 GB of RAM and ~7 GB of temporary disk).
test-archs: install
	$(TEST_ENV) $(BIN)/python -m pytest -q -m slow tests/benchmarks/test_archs.py $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The main job on the embedded default: bundled model, local Ray, local files.
demo: install
	$(BIN)/diffedit-batch prepare shapes --out data/shapes_manifest --rows 16
	$(BIN)/diffedit-batch run jobs/shapes_recolor.yaml
	$(BIN)/diffedit-batch preview out/shapes_recolor --out out/shapes_recolor_preview.png

# Issue 3's quality benchmark: >= 200 held-out edit tasks, every method, r in {0.5, 0.7, 0.9}.
bench-quality: install
	$(BIN)/python -m benchmarks.quality --model models/shapes-v3 --out out/quality

# Issue 5's side-by-side performance benchmark; writes out/perf.json.
bench-perf: install
	$(BIN)/python -m benchmarks.perf --model models/shapes-v3 --out out/perf.json

# Issue 19's GPU benchmark: per family, UNet evaluations/s and edits/s, bf16/fp16, eager/compiled, peak
# memory and utilisation against counted FLOPs, in at most 8 minutes on one CUDA GPU; writes out/gpu/.
# (python -m benchmarks.gpu --dry runs it on the tiny models on a CPU, in the default suite.)
bench-gpu: install
	$(BIN)/python -m benchmarks.gpu --out out/gpu

clean:
	rm -rf $(VENV) out data .pytest_cache .ruff_cache
