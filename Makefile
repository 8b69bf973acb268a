# Every target installs what it needs first, so `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The stamp changes whenever the dependency declarations change, so `make` reinstalls then.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements/constraints.txt | cksum | cut -d' ' -f1)
PIP    := $(BIN)/python -m pip
PYTEST_ARGS ?=

.PHONY: install test test-fast lint format demo bench-quality bench-perf clean

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
test: install
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

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
	$(BIN)/python -m benchmarks.quality --model models/shapes-v2 --out out/quality

# Issue 5's side-by-side performance benchmark; writes out/perf.json.
bench-perf: install
	$(BIN)/python -m benchmarks.perf --model models/shapes-v2 --out out/perf.json

clean:
	rm -rf $(VENV) out data .pytest_cache .ruff_cache
