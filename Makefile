# Set-up and entry points. `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
# The torch to build against; on this machine the CPU wheel comes from local disk.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
BUILD_DEPS := "scikit-build-core>=0.10" "pybind11>=2.12" ninja "cmake>=3.26"
PYTEST_ARGS ?=
CSRC := $(shell find csrc -type f) CMakeLists.txt pyproject.toml

.PHONY: install test demo bench format lint clean

install: $(VENV)/.delve_fast_installed

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.torch_installed: $(VENV)/bin/python
	$(PIP) install --quiet "$(TORCH_SPEC)"
	touch $@

# Editable install: Python edits are live, the extension is rebuilt when csrc/ changes.
$(VENV)/.delve_fast_installed: $(VENV)/.torch_installed $(CSRC)
	$(PIP) install --quiet $(BUILD_DEPS)
	$(PIP) install --quiet --no-build-isolation -e ".[test]"
	$(PY) -c "import delve_fast; info = delve_fast.backend_info(); print('delve_fast backend:', info['backend'], '-', info['reason'])"
	touch $@

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) -m delve_fast demo --output runs/demo

bench: install
	$(PIP) install --quiet ".[bench]" "delve==0.1.50" tensorboardX
	$(PY) -m pytest benchmarks --benchmark-only -p no:cacheprovider $(PYTEST_ARGS)
	$(PY) -m benchmarks.report

format:
	$(PY) -m ruff format delve_fast tests benchmarks
	$(PY) -m ruff check --fix delve_fast tests benchmarks
	$(VENV)/bin/clang-format -i $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu')

lint:
	$(PY) -m ruff check delve_fast tests benchmarks
	$(PY) -m ruff format --check delve_fast tests benchmarks

clean:
	rm -rf build dist *.egg-info runs .pytest_cache
