// The chunked covariance update: the same contract as cov_update_, written
// once in device-generic ATen and parametrised by a device's matrix products.
//
// The CUDA build uses it as the cuBLAS path of cov_update_
// (DELVE_FAST_CUDA_UPDATE=syrk|gemm, cuda/cov_update_blas.cu); every build
// registers it as the private op _cov_update_chunked on the CPU too, with
// ATen products that emulate the GPU's arithmetic (cpu/cov_update_chunked_cpu.cpp),
// so the chunking, the shift, the TF32 split and the merge are tested on a
// machine without a GPU.
//
// Per batch (k = N * S samples of C features):
//   1. shift = running mean if counts[0] > 0, else the mean of the first
//      kShiftSamples samples (decided on the device with a where, no sync);
//   2. the samples are cut into chunks; each chunk is shifted and cast into a
//      reused (rows, C) float64 buffer (one pass over x, any strides), its
//      float64 column sums are added to the batch's shifted sums, and its Gram
//      product is added to a C x C float64 accumulator:
//        double: one float64 product per chunk (cuBLAS dsyrk or dgemm);
//        mixed:  3xTF32, in groups of at most kMixedGroup samples: each
//                shifted value v is rounded to float32, split into
//                hi = tf32(v) and lo = tf32(v - hi), and hi hi^T + hi lo^T +
//                lo hi^T is formed with float32 accumulation per group, then
//                added to the float64 accumulator;
//   3. the merge: any non-finite shifted sum skips the batch (mean and m2 keep
//      every bit, counts[1] += 1); otherwise m2 += acc + w delta delta^T -
//      k d d^T on the upper triangle, mirrored to the lower one, and the mean
//      and counts[0] advance. Only the upper triangle (row-major) of acc is
//      read, so a product that fills one triangle (syrk) is enough.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>

namespace delve_fast {
namespace chunked {

// Bytes of the float64 chunk buffer (a chunk holds at least kMinChunkRows
// samples whatever C is, so very wide layers may exceed it).
constexpr int64_t kChunkBytes = int64_t{64} << 20;
constexpr int64_t kMinChunkRows = 64;
// Longest run of samples one float32 product sums in mixed precision; the
// documented error bound is proportional to it (docs/precision.md).
constexpr int64_t kMixedGroup = 512;
// Bytes of the float32 per-group products of one chunk (at least one product).
constexpr int64_t kMixedProductBytes = int64_t{64} << 20;

// How the k samples are cut. Chunks hold whole rows of the (N, C, S) view
// (rows_per_chunk rows, i.e. rows_per_chunk * S samples) unless one row is
// longer than a chunk, in which case a chunk is a run of one row's samples.
struct ChunkPlan {
  int64_t samples;         // samples per full chunk
  int64_t rows_per_chunk;  // whole rows per chunk; 0 when a row is split
  int64_t group;           // mixed: samples per float32 product (0 for double)
  int64_t groups;          // mixed: products per full chunk (0 for double)
  int64_t buffer_rows;     // rows of the float64 chunk buffer (padded to whole groups)
};

// samples_per_chunk > 0 overrides the byte-based size (tests use small chunks
// to cross chunk and group edges on small data).
ChunkPlan plan_chunks(int64_t c, int64_t s, bool mixed, int64_t samples_per_chunk);

// The device's part: matrix products and the merge.
struct Backend {
  // acc (C, C) float64 += w^T w for the (rows, C) row-contiguous float64 chunk
  // w; at least the upper triangle (i <= j, row-major) must be right.
  std::function<void(at::Tensor& acc, const at::Tensor& w)> gram64;
  // out[g] (C, C) float32 = a[g]^T b[g] (+ out[g] when accumulate) for the
  // (groups, rows, C) float32 views a and b (unit stride along C), whose
  // values are exact in TF32: the products are exact, the sums float32.
  std::function<void(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate)> gram32;
  // The merge of step 3, given the shift, the batch's shifted sums and acc.
  std::function<void(at::Tensor& mean, at::Tensor& m2, at::Tensor& counts, const at::Tensor& acc,
                     const at::Tensor& psum, const at::Tensor& shift, int64_t k)>
      merge;
};

// Rounds every float32 of t (contiguous) to the nearest TF32 value (10
// explicit mantissa bits; ties away from zero), in place, with integer ATen
// ops, so that it runs on any device and the GPU's TF32 inputs are exact.
void round_to_tf32_(at::Tensor& t);

// The update. Checks the arguments as cov_update_ does.
void cov_update_chunked(at::Tensor mean, at::Tensor m2, at::Tensor counts, const at::Tensor& x, bool mixed,
                        int64_t samples_per_chunk, const Backend& backend);

// The device-generic merge (ATen ops; the CPU's, and a reference for the CUDA kernel).
void merge_aten(at::Tensor& mean, at::Tensor& m2, at::Tensor& counts, const at::Tensor& acc, const at::Tensor& psum,
                const at::Tensor& shift, int64_t k);

}  // namespace chunked
}  // namespace delve_fast
