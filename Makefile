# Set-up and entry points. `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
# The torch to build against; on this machine the CPU wheel comes from local disk.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
BUILD_DEPS := "scikit-build-core>=0.10" "pybind11>=2.12" ninja "cmake>=3.26"
PYTEST_ARGS ?=
CSRC := $(shell find csrc build_backend -type f) CMakeLists.txt pyproject.toml
# Python code that ruff checks and formats.
PY_SRC := delve_fast tests benchmarks build_backend
DIST ?= dist

.PHONY: install test demo bench format lint clean cuda-build cuda-wheel cuda-archs gpu-check wheel

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
	@# The demo extra too: tests/test_demo.py runs the demo.
	$(PIP) install --quiet --no-build-isolation -e ".[test,demo]"
	@# The real delve, for the parity tests only; they skip with a reason if it cannot be installed.
	$(PIP) install --quiet "delve==0.1.50" tensorboardX || echo "delve 0.1.50 could not be installed: parity tests will skip"
	$(PY) -c "import delve_fast; info = delve_fast.backend_info(); print('delve_fast backend:', info['backend'], '-', info['reason'])"
	touch $@

# Lightning, the Hugging Face Trainer and W&B, for the integration tests. torch is named on the
# same command line so that pip keeps the installed build instead of pulling another one.
INTEGRATION_DEPS := "lightning>=2.2" "transformers>=4.40" "accelerate>=0.26" "wandb>=0.16"

$(VENV)/.integrations_installed: $(VENV)/.delve_fast_installed
	$(PIP) install --quiet "$(TORCH_SPEC)" $(INTEGRATION_DEPS)
	$(PY) -c "import torch, lightning, transformers, accelerate, wandb; print('integrations: torch', torch.__version__, '| lightning', lightning.__version__, '| transformers', transformers.__version__, '| wandb', wandb.__version__)"
	touch $@

test: install $(VENV)/.integrations_installed
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) -m delve_fast demo --output runs/demo

bench: install
	$(PIP) install --quiet "pytest-benchmark>=4" "psutil>=5" "delve==0.1.50" tensorboardX
	$(PY) -m pytest benchmarks --benchmark-only -p no:cacheprovider $(PYTEST_ARGS)
	$(PY) -m benchmarks.render

$(VENV)/.dev_tools_installed: $(VENV)/bin/python
	$(PIP) install --quiet "ruff>=0.5" "clang-format>=17"
	touch $@

format: $(VENV)/.dev_tools_installed
	$(PY) -m ruff format $(PY_SRC)
	$(PY) -m ruff check --fix $(PY_SRC)
	$(VENV)/bin/clang-format -i $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu')

lint: $(VENV)/.dev_tools_installed
	$(PY) -m ruff check $(PY_SRC)
	$(PY) -m ruff format --check $(PY_SRC)
	$(VENV)/bin/clang-format --dry-run -Werror $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu')

clean:
	rm -rf build dist *.egg-info runs .pytest_cache

# CPU wheel in $(DIST), built against the torch in $(VENV) (see docs/building-wheels.md). It
# records that torch's version and works with that torch only; under another it warns and
# uses the pure-torch backend. Its own build folder keeps the editable build untouched.
wheel: $(VENV)/.torch_installed
	$(PIP) install --quiet $(BUILD_DEPS)
	rm -f $(DIST)/delve_fast-*.whl
	DELVE_FAST_CUDA=OFF $(PIP) wheel --no-build-isolation --no-deps -w $(DIST) -Cbuild-dir=build/wheel-cpu .
	@whl=$$(ls $(DIST)/delve_fast-*.whl) && $(PY) -m zipfile -l $$whl | grep -E '_C.*\.so|_build_config|LICENSE' \
	  && echo "wheel: $$whl (built against $$($(PY) -c 'import torch; print("torch", torch.__version__)'))"

# ---------------------------------------------------------------------------
# CUDA wheel, built (never run: no GPU here) in its own venv and build folder so
# it never disturbs the CPU build in $(VENV) and build/{wheel_tag}.
CUDA_VENV ?= .venv-cuda
CUDA_TORCH_SPEC ?= torch==2.14.1
CUDA_HOME ?= /usr/local/cuda
# Machine code for sm_80 (A100), sm_86 (A10, RTX 30xx), sm_89 (L4, L40, RTX 40xx) and
# sm_90 (H100/H200), plus sm_90 PTX that newer GPUs JIT-compile at load time.
TORCH_CUDA_ARCH_LIST ?= 8.0;8.6;8.9;9.0+PTX
CUDA_BUILD_DIR ?= build/cuda
CUDA_DIST ?= dist/cuda
CUDA_PY := $(CUDA_VENV)/bin/python
# Where pip puts torch's CUDA 13 runtime packages (nvrtc, headers) inside $(CUDA_VENV).
CUDA_SITE = $$($(CUDA_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

$(CUDA_VENV)/.deps_installed:
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_PY) -m pip install --quiet --upgrade pip
	$(CUDA_PY) -m pip install --quiet "$(CUDA_TORCH_SPEC)" "scikit-build-core>=0.10" "pybind11>=2.12" ninja "cmake>=4" numpy
	$(CUDA_PY) -c "import torch; assert torch.version.cuda, 'torch in $(CUDA_VENV) is a CPU build'; print('cuda-build: torch', torch.__version__, 'CUDA', torch.version.cuda)"
	touch $@

# The CUDA wheel (same as cuda-wheel) in $(CUDA_DIST); see docs/building-wheels.md.
cuda-wheel: cuda-build

cuda-build: $(CUDA_VENV)/.deps_installed
	rm -f $(CUDA_DIST)/delve_fast-*.whl
	site=$(CUDA_SITE); \
	DELVE_FAST_CUDA=ON CUDACXX=$(CUDA_HOME)/bin/nvcc CUDA_HOME=$(CUDA_HOME) \
	TORCH_CUDA_ARCH_LIST="$(TORCH_CUDA_ARCH_LIST)" PATH="$(CURDIR)/$(CUDA_VENV)/bin:$$PATH" \
	$(CUDA_PY) -m pip wheel --no-build-isolation --no-deps -w $(CUDA_DIST) \
	  -Cbuild-dir=$(CUDA_BUILD_DIR) \
	  -Ccmake.define.CUDA_TOOLKIT_ROOT_DIR=$(CUDA_HOME) \
	  -Ccmake.define.CMAKE_CUDA_COMPILER=$(CUDA_HOME)/bin/nvcc \
	  -Ccmake.define.CUDA_nvrtc_LIBRARY=$$site/nvidia/cu13/lib/libnvrtc.so.13 \
	  -Ccmake.define.DELVE_FAST_CUDA_EXTRA_INCLUDE=$$site/nvidia/cu13/include \
	  .
	@whl=$$(ls $(CUDA_DIST)/delve_fast-*.whl) && chk=$(CUDA_BUILD_DIR)/wheel-check && site=$(CUDA_SITE) \
	  && rm -rf $$chk && $(CUDA_PY) -m zipfile -e $$whl $$chk \
	  && so=$$(ls $$chk/delve_fast/_C*.so) && echo "cuda-build: $$whl contains $${so#$$chk/}" \
	  && nm -D --defined-only $$so | grep -q PyInit__C \
	  && nm -D --undefined-only $$so | grep -q cudaLaunchKernel \
	  && LD_LIBRARY_PATH=$$site/torch/lib$$(for d in $$site/nvidia/*/lib; do printf ':%s' $$d; done) ldd $$so > $$chk/ldd.txt \
	  && grep -E 'libcudart|libc10_cuda|libtorch_cuda' $$chk/ldd.txt \
	  && ! grep 'not found' $$chk/ldd.txt \
	  && echo "cuda-build: _C exports PyInit__C, calls cudaLaunchKernel, and every library it needs resolves" \
	  && readelf -d $$so | grep -E 'RUNPATH|RPATH'
	@# (ldd is given the folders that the RUNPATH above reaches once the wheel is installed.)
	@# Import the built extension itself (the package's Python deps are not in $(CUDA_VENV)).
	@# A CUDA torch imports without a GPU or driver; kernels are registered at load time.
	cd $(CUDA_BUILD_DIR)/wheel-check && $(CURDIR)/$(CUDA_PY) -c "import glob, importlib.util, torch; \
	spec = importlib.util.spec_from_file_location('delve_fast._C', glob.glob('delve_fast/_C*.so')[0]); \
	C = importlib.util.module_from_spec(spec); spec.loader.exec_module(C); \
	info = C.build_info(); print('cuda-build: build_info', info); \
	assert info['cuda'] is True, info; \
	assert all(torch._C._dispatch_has_kernel_for_dispatch_key('delve_fast::' + op, 'CUDA') for op in ('cov_update_', 'eigvalsh_desc')), 'no CUDA kernel registered'; \
	print('cuda-build: OK, CUDA kernels registered; torch.cuda.is_available() =', torch.cuda.is_available())"

# Which GPU architectures the built CUDA extension holds code for: cuobjdump --list-elf
# (NVIDIA's nvidia-cuda-cuobjdump package; the toolkit here has none) must list every
# sm_XX in CUDA_REQUIRED_ARCHS.
CUDA_REQUIRED_ARCHS ?= sm_80 sm_90
cuda-archs: $(CUDA_VENV)/.deps_installed
	$(CUDA_PY) -m pip install --quiet "nvidia-cuda-cuobjdump>=13,<14"
	@site=$(CUDA_SITE); objdump=$$(find $$site/nvidia -type f -name cuobjdump | head -1); \
	so=$$(ls $(CUDA_BUILD_DIR)/wheel-check/delve_fast/_C*.so); \
	test -x "$$objdump" || { echo "cuda-archs: no cuobjdump in $$site/nvidia"; exit 1; }; \
	$$objdump --list-elf $$so | tee $(CUDA_BUILD_DIR)/wheel-check/elf.txt; \
	$$objdump --list-ptx $$so | tee $(CUDA_BUILD_DIR)/wheel-check/ptx.txt || true; \
	for arch in $(CUDA_REQUIRED_ARCHS); do \
	  grep -q "\.$$arch\." $(CUDA_BUILD_DIR)/wheel-check/elf.txt || { echo "cuda-archs: no $$arch code in $$so"; exit 1; }; \
	done; echo "cuda-archs: $$so holds machine code for $(CUDA_REQUIRED_ARCHS)"

# The device check: build against the CUDA torch of this machine, run every GPU test,
# the rest of the suite and a short GPU benchmark; report in runs/gpu-check/ (or $$OUT).
gpu-check:
	bash .ci/gpu_check.sh
