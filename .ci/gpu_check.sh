#!/usr/bin/env bash
# The device check (make gpu-check): on a machine with one CUDA GPU, build the
# CUDA extension against the CUDA torch there, run every GPU test and a short
# GPU benchmark, and write a markdown report. Budget: 8 minutes in all.
#
# Works offline: it installs nothing from a registry. It needs a Python whose
# torch is a CUDA build, with the build tools (scikit-build-core, pybind11,
# ninja, cmake) and the test deps (numpy pandas matplotlib pytest hypothesis
# scipy) already installed, and nvcc.
#
# Environment (all optional):
#   GPU_CHECK_PYTHON      the Python to use (default: .venv-cuda/bin/python when it
#                         holds a CUDA torch, else python3)
#   TORCH_CUDA_ARCH_LIST  architectures to build (default 9.0: the check builds only
#                         what it runs; set e.g. "8.0" on an A100)
#   CUDA_HOME             toolkit (default: the one of nvcc on PATH, else /usr/local/cuda)
#   GPU_CHECK_OUT         report folder (default: $OUT when set, else runs/gpu-check)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
T0=$(date +%s)
OUTDIR=${GPU_CHECK_OUT:-${OUT:-runs/gpu-check}}
mkdir -p "$OUTDIR"
REPORT=$OUTDIR/report.md
BUILD_DIR=build/gpu-check
export PYTHONUNBUFFERED=1
# Stage limits (seconds); together (475 s) inside 8 minutes.
BUILD_LIMIT=${GPU_CHECK_BUILD_LIMIT:-210}
TEST_LIMIT=${GPU_CHECK_TEST_LIMIT:-110}
SUITE_LIMIT=${GPU_CHECK_SUITE_LIMIT:-75}
BENCH_LIMIT=${GPU_CHECK_BENCH_LIMIT:-80}

say() { echo "gpu_check: $*" >&2; }
elapsed() { echo $(($(date +%s) - T0)); }

pick_python() {
  if [[ -n "${GPU_CHECK_PYTHON:-}" ]]; then
    echo "$GPU_CHECK_PYTHON"
    return
  fi
  for py in .venv-cuda/bin/python python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
      echo "$py"
      return
    fi
  done
  echo ""
}

PY=$(pick_python)
{
  echo "# delve_fast GPU check"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
} >"$REPORT"
if [[ -z "$PY" ]]; then
  say "no Python with a CUDA torch (set GPU_CHECK_PYTHON, or run make cuda-build first)"
  echo "- RESULT: FAILED, no Python with a CUDA torch found" >>"$REPORT"
  exit 2
fi
NVCC=$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")
export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$NVCC")")}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
{
  echo "- python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"
  echo "- torch: $("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')"
  echo "- nvcc: $("$NVCC" --version | tail -1)"
  echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi unavailable')"
  echo "- TORCH_CUDA_ARCH_LIST: $TORCH_CUDA_ARCH_LIST"
} >>"$REPORT"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  say "torch sees no GPU"
  echo "- RESULT: FAILED, torch.cuda.is_available() is False on this machine" >>"$REPORT"
  exit 2
fi

# --- build: editable, CUDA on, its own build folder --------------------------
say "building (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
b0=$(date +%s)
DELVE_FAST_CUDA=ON CUDACXX="$NVCC" timeout "$BUILD_LIMIT" "$PY" -m pip install --no-build-isolation --no-deps \
  --no-index -e . -Cbuild-dir="$BUILD_DIR" -Ccmake.define.CMAKE_CUDA_COMPILER="$NVCC" \
  >"$OUTDIR/build.log" 2>&1
build_rc=$?
build_s=$(($(date +%s) - b0))
echo "- build: rc=$build_rc in ${build_s} s (log: build.log)" >>"$REPORT"
if [[ $build_rc -ne 0 ]]; then
  say "build failed; see $OUTDIR/build.log"
  tail -40 "$OUTDIR/build.log" >&2
  { echo; echo '```'; tail -40 "$OUTDIR/build.log"; echo '```'; echo; echo "RESULT: FAILED (build)"; } >>"$REPORT"
  exit 1
fi
grep -E "delve_fast: (CUDA code built for|cuSOLVER)" "$OUTDIR/build.log" | sed 's/^/  - /' >>"$REPORT"
"$PY" - >>"$REPORT" 2>&1 <<'EOF'
import delve_fast
from delve_fast import _loader, ops
info = delve_fast.backend_info()
print(f"- backend: {info['backend']} ({info['reason']})")
print(f"- build_info: {_loader.extension().build_info() if _loader.extension() else None}")
print(f"- CUDA kernels registered: {ops.has_compiled_kernel('cuda')}")
EOF

# --- tests: every GPU test, then the rest of the default suite on this build ---
say "GPU tests"
t0=$(date +%s)
timeout "$TEST_LIMIT" "$PY" -m pytest -q -p no:cacheprovider -m gpu -rfEs tests >"$OUTDIR/tests-gpu.log" 2>&1
test_rc=$?
gpu_s=$(($(date +%s) - t0))
say "rest of the suite"
t0=$(date +%s)
timeout "$SUITE_LIMIT" "$PY" -m pytest -q -p no:cacheprovider -m "not gpu and not slow" -x tests \
  >"$OUTDIR/tests-rest.log" 2>&1
suite_rc=$?
{
  echo "- GPU tests (pytest -m gpu): rc=$test_rc in ${gpu_s} s: $(tail -1 "$OUTDIR/tests-gpu.log")"
  echo "- rest of the suite (-m 'not gpu and not slow'): rc=$suite_rc in $(($(date +%s) - t0)) s: $(tail -1 "$OUTDIR/tests-rest.log")"
  echo
  echo "## GPU tests"
  echo
  echo '```'
  grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed|[0-9]+ (skipped|deselected)" "$OUTDIR/tests-gpu.log" | tail -60
  echo '```'
  if [[ $suite_rc -ne 0 ]]; then
    echo
    echo "## Rest of the suite: failures"
    echo
    echo '```'
    grep -E "^(FAILED|ERROR)|Error|passed|failed" "$OUTDIR/tests-rest.log" | tail -30
    echo '```'
  fi
} >>"$REPORT"

# --- benchmark ----------------------------------------------------------------
say "benchmark"
t0=$(date +%s)
{ echo; echo "## Benchmark"; echo; } >>"$REPORT"
timeout "$BENCH_LIMIT" "$PY" -m benchmarks.gpu_check --json "$OUTDIR/bench.json" >>"$REPORT" 2>"$OUTDIR/bench.log"
bench_rc=$?
echo "- benchmark: rc=$bench_rc in $(($(date +%s) - t0)) s" >>"$REPORT"

total=$(elapsed)
if [[ $test_rc -eq 0 && $suite_rc -eq 0 && $bench_rc -eq 0 ]]; then result=PASSED; else result=FAILED; fi
{
  echo
  echo "RESULT: $result (build $build_rc, GPU tests $test_rc, rest $suite_rc, benchmark $bench_rc) in ${total} s"
} >>"$REPORT"
say "$result in ${total} s; report: $ROOT/$REPORT"
cat "$REPORT"
[[ $result == PASSED ]]
