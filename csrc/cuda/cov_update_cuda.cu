// CUDA kernel of delve_fast::cov_update_ (built only with DELVE_FAST_CUDA).
//
// Same contract and the same arithmetic as cpu/cov_update_cpu.cpp, in four
// stream-ordered launches and no host sync. The sample count lives in the
// device tensor counts = [samples, skipped batches], which the kernels read
// and update themselves: the host never needs it, and a captured CUDA graph
// replays correctly.
//
//   1. shift_kernel: the per-feature shift, the running mean when counts[0] > 0,
//      else the mean of the first <= 256 samples.
//   2. syrk_tiles_kernel: x is read through its (N, C, S) strides, never
//      copied or permuted. Each block owns one upper-triangle 64x64 tile of the
//      Gram matrix and one split of the samples; it casts 32-sample slabs to
//      float64 in shared memory, subtracts the shift and accumulates the
//      shifted outer products with fp64 FMAs. Diagonal tiles also sum the
//      shifted features. Each split writes its own partial buffer (no atomics),
//      so the result is deterministic run to run.
//   3. batch_vectors_kernel (one block): d = shifted batch mean, delta = batch
//      mean - mean, and the decision: a NaN or an Inf anywhere in the batch
//      makes its feature's sum non-finite, so the block checks the C sums and
//      either counts the batch as skipped or sets the merge weights and
//      advances counts[0].
//   4. merge_kernel: unless the batch was skipped, m2 += sum of partials +
//      w delta delta^T - k d d^T on the upper triangle, mirrored to the lower
//      one through a shared-memory transpose; mean += delta * k / total. A
//      skipped batch leaves m2 and mean untouched (the kernel returns at once).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "cuda/cov_update_blas.h"
#include "cuda/merge_kernels.cuh"
#include "delve_fast.h"

namespace delve_fast {
namespace {

// Gram tile: kTile x kTile features, kTileK samples per shared-memory slab.
constexpr int kTile = 64;
constexpr int kTileK = 32;
constexpr int kThreads = 256;  // 16 x 16 threads, 4 x 4 outputs each
constexpr int kMicro = 4;
constexpr int kThreadsSide = kTile / kMicro;  // 16
// Cap on the split-K partial buffers, in bytes.
constexpr int64_t kPartialBytes = int64_t{256} << 20;
// Smallest number of samples one split is worth.
constexpr int64_t kMinSplitSamples = 512;

struct Geometry {
  int64_t c;           // features
  int64_t s;           // samples per n
  int64_t k;           // n * s samples
  int64_t sn, sc, ss;  // element strides of x viewed as (N, C, S)
};

__device__ __forceinline__ int64_t sample_offset(const Geometry& g, int64_t sample) {
  const int64_t n = sample / g.s;
  return n * g.sn + (sample - n * g.s) * g.ss;
}

template <typename scalar_t>
__global__ void shift_kernel(const scalar_t* __restrict__ x, Geometry g, int64_t m, const double* __restrict__ mean,
                             const double* __restrict__ counts, double* __restrict__ shift) {
  const int64_t ch = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (ch >= g.c) return;
  if (counts[0] > 0.0) {
    // With a running mean the batch is already close to centred: shift by it
    // (an exact copy, so delta below equals d exactly).
    shift[ch] = mean[ch];
    return;
  }
  double acc = 0.0;
  for (int64_t i = 0; i < m; ++i) acc += static_cast<double>(x[sample_offset(g, i) + ch * g.sc]);
  shift[ch] = acc / static_cast<double>(m);
}

// Upper-triangle tile t (row-major over the triangle of ntile x ntile tiles).
__device__ __forceinline__ void upper_tile(int64_t t, int64_t ntile, int64_t& bi, int64_t& bj) {
  bi = 0;
  while (t >= ntile - bi) {
    t -= ntile - bi;
    ++bi;
  }
  bj = bi + t;
}

// kSamplesFast: consecutive threads read consecutive samples of one feature
// (NCHW, S > 1 with unit sample stride); otherwise consecutive threads read
// consecutive features of one sample (Linear rows, tokens, channels_last).
template <typename scalar_t, bool kSamplesFast>
__device__ __forceinline__ void load_slab(const scalar_t* __restrict__ x, const Geometry& g, const int64_t* soff,
                                          int64_t c0, const double* sh, double (*dst)[kTile + 1]) {
  constexpr int kPerThread = kTileK * kTile / kThreads;  // 8
#pragma unroll
  for (int r = 0; r < kPerThread; ++r) {
    const int e = threadIdx.x + kThreads * r;
    const int kk = kSamplesFast ? (e % kTileK) : (e / kTile);
    const int cc = kSamplesFast ? (e / kTileK) : (e % kTile);
    const int64_t off = soff[kk];
    const int64_t ch = c0 + cc;
    double v = 0.0;  // padding (past C or past the split) stays exactly 0 after the shift
    if (off >= 0 && ch < g.c) v = static_cast<double>(x[off + ch * g.sc]) - sh[cc];
    dst[kk][cc] = v;
  }
}

template <typename scalar_t, bool kSamplesFast>
__global__ void __launch_bounds__(kThreads)
    syrk_tiles_kernel(const scalar_t* __restrict__ x, Geometry g, const double* __restrict__ shift, int64_t ntile,
                      int64_t chunk, double* __restrict__ part, double* __restrict__ psums) {
  __shared__ double as[kTileK][kTile + 1];
  __shared__ double bs[kTileK][kTile + 1];
  __shared__ double sha[kTile], shb[kTile];
  __shared__ int64_t soff[kTileK];

  int64_t bi, bj;
  upper_tile(blockIdx.x, ntile, bi, bj);
  const bool diag = bi == bj;
  const int64_t ci = bi * kTile, cj = bj * kTile;
  const int64_t p = blockIdx.y;
  const int64_t kbeg = p * chunk, kend = kbeg + chunk < g.k ? kbeg + chunk : g.k;
  const int tid = threadIdx.x;
  const int tx = tid % kThreadsSide, ty = tid / kThreadsSide;

  if (tid < kTile) {
    sha[tid] = ci + tid < g.c ? shift[ci + tid] : 0.0;
    shb[tid] = cj + tid < g.c ? shift[cj + tid] : 0.0;
  }
  double acc[kMicro][kMicro];
#pragma unroll
  for (int a = 0; a < kMicro; ++a)
#pragma unroll
    for (int b = 0; b < kMicro; ++b) acc[a][b] = 0.0;
  double colsum = 0.0;  // diagonal tiles: shifted sum of feature ci + tid

  double (*bsrc)[kTile + 1] = diag ? as : bs;
  for (int64_t k0 = kbeg; k0 < kend; k0 += kTileK) {
    if (tid < kTileK) soff[tid] = k0 + tid < kend ? sample_offset(g, k0 + tid) : int64_t{-1};
    __syncthreads();  // soff and shifts ready; previous slab fully consumed
    load_slab<scalar_t, kSamplesFast>(x, g, soff, ci, sha, as);
    if (!diag) load_slab<scalar_t, kSamplesFast>(x, g, soff, cj, shb, bs);
    __syncthreads();
    if (diag && tid < kTile) {
#pragma unroll 8
      for (int kk = 0; kk < kTileK; ++kk) colsum += as[kk][tid];
    }
#pragma unroll 4
    for (int kk = 0; kk < kTileK; ++kk) {
      double av[kMicro], bv[kMicro];
#pragma unroll
      for (int a = 0; a < kMicro; ++a) av[a] = as[kk][ty + kThreadsSide * a];
#pragma unroll
      for (int b = 0; b < kMicro; ++b) bv[b] = bsrc[kk][tx + kThreadsSide * b];
#pragma unroll
      for (int a = 0; a < kMicro; ++a)
#pragma unroll
        for (int b = 0; b < kMicro; ++b) acc[a][b] = fma(av[a], bv[b], acc[a][b]);
    }
  }

  // Partial p: rows ci.., columns cj... Diagonal tiles also write their strict
  // lower half; the merge kernel reads the upper triangle only.
  double* out = part + p * g.c * g.c;
#pragma unroll
  for (int a = 0; a < kMicro; ++a) {
    const int64_t i = ci + ty + kThreadsSide * a;
    if (i >= g.c) continue;
#pragma unroll
    for (int b = 0; b < kMicro; ++b) {
      const int64_t j = cj + tx + kThreadsSide * b;
      if (j < g.c) out[i * g.c + j] = acc[a][b];
    }
  }
  if (diag && tid < kTile && ci + tid < g.c) psums[p * g.c + ci + tid] = colsum;
}

struct SplitPlan {
  int64_t ntile;   // tiles per side of the Gram matrix
  int64_t ntiles;  // upper-triangle tiles: grid.x of syrk_tiles_kernel
  int64_t nsplit;  // sample splits: grid.y, and partial buffers
  int64_t chunk;   // samples per split, a multiple of kTileK
};

// Splits the samples until there are a few blocks per SM, within the memory cap
// on partial buffers; every split is non-empty.
inline SplitPlan plan_splits(int64_t c, int64_t k, int64_t sms) {
  SplitPlan p{};
  p.ntile = (c + kTile - 1) / kTile;
  p.ntiles = p.ntile * (p.ntile + 1) / 2;
  int64_t nsplit = std::max<int64_t>(1, (4 * sms + p.ntiles - 1) / p.ntiles);
  nsplit = std::min(nsplit, std::max<int64_t>(1, k / kMinSplitSamples));
  nsplit = std::min(nsplit, std::max<int64_t>(1, kPartialBytes / (c * c * static_cast<int64_t>(sizeof(double)))));
  nsplit = std::min<int64_t>(nsplit, 65535);
  const int64_t slabs = (k + kTileK - 1) / kTileK;
  p.chunk = (slabs + nsplit - 1) / nsplit * kTileK;
  p.nsplit = (k + p.chunk - 1) / p.chunk;
  return p;
}

// DELVE_FAST_CUDA_UPDATE picks the path: the fused kernel below (default) or
// the cuBLAS chunked path (cov_update_blas.cu). On the fused path mixed is
// accepted for schema parity and the tiles stay float64 (docs/precision.md),
// so the result is the float64 one; the cuBLAS path forms mixed products
// with 3xTF32.
void cov_update_cuda(at::Tensor mean, at::Tensor m2, at::Tensor counts, const at::Tensor& x, bool mixed) {
  const CudaUpdatePath path = cuda_update_path();
  if (path != CudaUpdatePath::kFused) {
    cov_update_cuda_blas(mean, m2, counts, x, mixed, 0, path == CudaUpdatePath::kSyrk);
    return;
  }
  const int64_t c = check_cov_update_args(mean, m2, counts, x);
  TORCH_CHECK(x.is_cuda(), "cov_update_: the CUDA kernel got x on ", x.device());
  const int64_t k = x.size(0) * x.size(2);
  if (k == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  if (c == 0) {
    counts.select(0, 0).add_(static_cast<double>(k));  // samples of no feature: nothing can be non-finite
    return;
  }
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  Geometry g{c, x.size(2), k, x.stride(0), x.stride(1), x.stride(2)};
  // Unit stride along samples and a sample run longer than one: read samples
  // fastest; otherwise features are the better (or only) contiguous axis.
  const bool samples_fast = g.ss == 1 && g.s > 1 && g.sc != 1;

  const SplitPlan plan = plan_splits(c, k, at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  TORCH_CHECK(plan.ntiles <= INT32_MAX, "cov_update_: C=", c, " is too large for the CUDA kernel");
  const int64_t nsplit = plan.nsplit;

  // One workspace: shift (C) | psums (nsplit * C) | d, delta (2C) | scalars | partials (nsplit * C * C).
  at::Tensor ws = at::empty({c + nsplit * c + 2 * c + kScalLen + nsplit * c * c}, m2.options());
  double* shift = ws.data_ptr<double>();
  double* psums = shift + c;
  double* vec = psums + nsplit * c;
  double* scal = vec + 2 * c;
  double* part = scal + kScalLen;
  double* mu = mean.data_ptr<double>();
  double* gram = m2.data_ptr<double>();
  double* cnt = counts.data_ptr<double>();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cov_update_cuda", [&] {
    const scalar_t* base = x.const_data_ptr<scalar_t>();
    {
      const int threads = 128;
      const auto blocks = static_cast<unsigned>((c + threads - 1) / threads);
      shift_kernel<scalar_t><<<blocks, threads, 0, stream>>>(base, g, std::min(k, kShiftSamples), mu, cnt, shift);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const dim3 grid(static_cast<unsigned>(plan.ntiles), static_cast<unsigned>(nsplit));
    if (samples_fast) {
      syrk_tiles_kernel<scalar_t, true>
          <<<grid, kThreads, 0, stream>>>(base, g, shift, plan.ntile, plan.chunk, part, psums);
    } else {
      syrk_tiles_kernel<scalar_t, false>
          <<<grid, kThreads, 0, stream>>>(base, g, shift, plan.ntile, plan.chunk, part, psums);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });

  const double kd = static_cast<double>(k);
  batch_vectors_kernel<<<1, kVectorThreads, 0, stream>>>(psums, nsplit, c, kd, shift, mu, vec, cnt, scal);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  {
    const auto nt = static_cast<unsigned>((c + kMergeTile - 1) / kMergeTile);
    merge_kernel<<<dim3(nt, nt), dim3(kMergeTile, kMergeRows), 0, stream>>>(gram, mu, part, nsplit, vec, c, kd, scal);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace
}  // namespace delve_fast

TORCH_LIBRARY_IMPL(delve_fast, CUDA, m) { m.impl("cov_update_", &delve_fast::cov_update_cuda); }
