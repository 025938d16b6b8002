#!/usr/bin/env bash
# Builds the CUDA wheel (make cuda-build) where a CUDA toolkit is installed.
# No GPU is needed: the kernels are compiled and linked, and the built
# extension is imported to check that its CUDA kernels register. The GPU tests
# (tests/test_cuda_ops.py) need a device and skip without one.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
if [[ ! -x "$NVCC" ]]; then
  echo "cuda_build: SKIPPED, no CUDA compiler at $NVCC"
  exit 0
fi
start=$(date +%s)
make cuda-build CUDA_HOME="$(dirname "$(dirname "$NVCC")")"
echo "cuda_build: OK in $(( $(date +%s) - start )) s"
