#!/usr/bin/env bash
# Builds the CUDA wheel (make cuda-build) where a CUDA toolkit is installed, and
# checks with cuobjdump that it holds machine code for sm_80 and sm_90
# (make cuda-archs). No GPU is needed: the kernels are compiled and linked, and
# the built extension is imported to check that its CUDA kernels register. The
# GPU tests (pytest -m gpu) need a device and skip without one; .ci/gpu_check.sh
# runs them where there is one.
#
# TORCH_CUDA_ARCH_LIST overrides the Makefile's list (8.0;8.6;8.9;9.0+PTX).
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
if [[ ! -x "$NVCC" ]]; then
  echo "cuda_build: SKIPPED, no CUDA compiler at $NVCC"
  exit 0
fi
args=(CUDA_HOME="$(dirname "$(dirname "$NVCC")")")
if [[ -n "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
  args+=(TORCH_CUDA_ARCH_LIST="$TORCH_CUDA_ARCH_LIST")
fi
start=$(date +%s)
make cuda-build "${args[@]}"
built=$(date +%s)
make cuda-archs "${args[@]}"
echo "cuda_build: OK, built in $((built - start)) s, architectures checked in $(($(date +%s) - built)) s"
