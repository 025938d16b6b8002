// The last two launches of the CUDA covariance update, shared by its fused
// kernel (cov_update_cuda.cu) and its cuBLAS path (cov_update_blas.cu): the
// batch vectors with the non-finite decision, and the gated merge of the
// batch's shifted Gram product into the state. Included by .cu files only;
// everything here has internal linkage in each.
#pragma once

#include <cstdint>

namespace delve_fast {
namespace {

// Merge kernel tile.
constexpr int kMergeTile = 32;
constexpr int kMergeRows = 8;

// Merge scalars in the workspace, written by batch_vectors_kernel.
constexpr int kScalGo = 0;    // 1.0: merge the batch, 0.0: it was skipped
constexpr int kScalW = 1;     // count * k / (count + k)
constexpr int kScalStep = 2;  // k / (count + k), the mean's step
constexpr int kScalLen = 4;
constexpr int kVectorThreads = 256;

// One block. d = shifted batch mean, delta = batch mean - mean = (shift - mean)
// + d; both into vec (2 * C). Grouped this way, shift == mean (count > 0)
// gives delta = d exactly, so a large common offset never rounds the rank-1
// correction. Then the decision: any non-finite sum skips the batch (counts[1]
// += 1), otherwise the merge weights go to scal and counts[0] += k. Only
// thread 0 touches counts, after every thread has voted.
__global__ void __launch_bounds__(kVectorThreads)
    batch_vectors_kernel(const double* __restrict__ psums, int64_t nsplit, int64_t c, double k, const double* shift,
                         const double* mean, double* __restrict__ vec, double* __restrict__ counts,
                         double* __restrict__ scal) {
  int bad = 0;
  for (int64_t i = threadIdx.x; i < c; i += blockDim.x) {
    double sum = 0.0;
    for (int64_t p = 0; p < nsplit; ++p) sum += psums[p * c + i];
    bad |= !isfinite(sum);
    const double d = sum / k;
    vec[i] = d;
    vec[c + i] = (shift[i] - mean[i]) + d;
  }
  bad = __syncthreads_or(bad);
  if (threadIdx.x != 0) return;
  if (bad) {
    counts[1] += 1.0;
    scal[kScalGo] = 0.0;
    return;
  }
  const double count = counts[0];
  const double total = count + k;
  scal[kScalGo] = 1.0;
  scal[kScalW] = count * k / total;
  scal[kScalStep] = k / total;
  counts[0] = total;
}

__global__ void __launch_bounds__(kMergeTile* kMergeRows)
    merge_kernel(double* __restrict__ m2, double* __restrict__ mean, const double* __restrict__ part, int64_t nsplit,
                 const double* __restrict__ vec, int64_t c, double k, const double* __restrict__ scal) {
  const int64_t bi = blockIdx.y, bj = blockIdx.x;
  // A skipped batch (the same value for every thread) leaves the state bit-identical.
  if (bi > bj || scal[kScalGo] == 0.0) return;
  const double w = scal[kScalW], mean_step = scal[kScalStep];
  __shared__ double tile[kMergeTile][kMergeTile + 1];
  const double* d = vec;
  const double* delta = vec + c;
  const int64_t ri = bi * kMergeTile, rj = bj * kMergeTile;
  const int tx = threadIdx.x;
  const int64_t j = rj + tx;
  for (int r = threadIdx.y; r < kMergeTile; r += kMergeRows) {
    const int64_t i = ri + r;
    if (i < c && j < c && i <= j) {
      double v = m2[i * c + j];
      for (int64_t p = 0; p < nsplit; ++p) v += part[p * c * c + i * c + j];
      v += w * delta[i] * delta[j] - k * d[i] * d[j];
      m2[i * c + j] = v;
      tile[r][tx] = v;
    }
  }
  __syncthreads();
  // Mirror: m2[j][i] = m2[i][j] for i < j, written row-wise (coalesced).
  const int64_t i2 = ri + tx;
  for (int r = threadIdx.y; r < kMergeTile; r += kMergeRows) {
    const int64_t j2 = rj + r;
    if (i2 < c && j2 < c && i2 < j2) m2[j2 * c + i2] = tile[tx][r];
  }
  if (bi == bj && threadIdx.y == 0 && ri + tx < c) mean[ri + tx] += delta[ri + tx] * mean_step;
}

}  // namespace
}  // namespace delve_fast
