// The cuBLAS path of the CUDA cov_update_ (cov_update_blas.cu) and the switch
// that selects it.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace delve_fast {

// DELVE_FAST_CUDA_UPDATE: "fused" (default, or unset) the fused tile kernel;
// "syrk" the chunked path with cublasDsyrk (one triangle); "gemm" the chunked
// path with cublasDgemm (the whole product). Read on every call, so a test or
// a benchmark can switch it between calls.
enum class CudaUpdatePath { kFused, kSyrk, kGemm };
CudaUpdatePath cuda_update_path();

// The chunked update (cov_update_chunked.h) with cuBLAS products on the
// tensors' device and current stream: float64 (dsyrk when upper_only, else
// dgemm) or, when mixed, 3xTF32 (cublasGemmStridedBatchedEx with TF32 tensor
// cores). chunk > 0 sets the samples per chunk.
void cov_update_cuda_blas(at::Tensor mean, at::Tensor m2, at::Tensor counts, const at::Tensor& x, bool mixed,
                          int64_t chunk, bool upper_only);

}  // namespace delve_fast
