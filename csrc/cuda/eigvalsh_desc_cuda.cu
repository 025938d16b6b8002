// CUDA kernel of delve_fast::eigvalsh_desc: eigenvalues only, many matrices at once.
//
// Matrices of one size and dtype are stacked and solved together. Two solvers:
//
//   * cuSOLVER's cusolverDnXsyevBatched (eigenvalues only), where the toolkit
//     has it: one call for the whole group at any size. torch.linalg.eigvalsh
//     batches (Jacobi) only up to 32 x 32 and loops one solver per matrix
//     above that, which is the slow case for trackers with many 64-512 wide
//     layers. Its per-matrix info is checked once, after every group.
//   * at::linalg_eigvalsh on the stack, the fallback; it checks its info on the
//     host, so it synchronises once per group.
//
// DELVE_FAST_CUDA_EIG picks: "auto" (default) the batched solver for groups of
// two or more matrices with 32 < n <= kBatchedMaxN, "batched" for every group,
// "torch" never. Without the batched solver in the build, all three use torch.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "delve_fast.h"

#if defined(DELVE_FAST_WITH_CUSOLVER) && defined(CUSOLVER_VERSION) && CUSOLVER_VERSION >= 11701
// cusolverDnXsyevBatched first shipped with cuSOLVER 11.7.1 (CUDA 12.6 update 2).
#define DELVE_FAST_HAVE_SYEV_BATCHED 1
#endif

namespace delve_fast {
namespace {

// torch's own batched path (syevj) covers n <= 32; above kBatchedMaxN one
// divide-and-conquer solve per matrix is expected to win again. The bound is a
// first guess to be tuned by the GPU benchmark (benchmarks/gpu_check.py).
constexpr int64_t kTorchBatchedMaxN = 32;
constexpr int64_t kBatchedMaxN = 512;

enum class EigSolver { kAuto, kBatched, kTorch };

EigSolver solver_from_env() {
  const char* raw = std::getenv("DELVE_FAST_CUDA_EIG");
  const std::string v = raw ? raw : "";
  if (v.empty() || v == "auto") return EigSolver::kAuto;
  if (v == "batched") return EigSolver::kBatched;
  if (v == "torch") return EigSolver::kTorch;
  TORCH_CHECK(false, "DELVE_FAST_CUDA_EIG='", v, "' is invalid; valid choices are auto, batched, torch");
}

#ifdef DELVE_FAST_HAVE_SYEV_BATCHED
struct SolverParams {
  cusolverDnParams_t p = nullptr;
  SolverParams() { TORCH_CUSOLVER_CHECK(cusolverDnCreateParams(&p)); }
  ~SolverParams() {
    if (p) cusolverDnDestroyParams(p);
  }
  SolverParams(const SolverParams&) = delete;
  SolverParams& operator=(const SolverParams&) = delete;
};

// Eigenvalues (ascending) of the (B, n, n) stack `a`, which is overwritten.
// cuSOLVER reads column-major, so its upper triangle is our (row-major) lower
// one: like torch.linalg.eigvalsh, only the lower triangle is read. info
// receives one status per matrix, on the device; nothing here waits for it.
at::Tensor syev_batched(at::Tensor a, const at::Tensor& info) {
  const int64_t batch = a.size(0), n = a.size(1);
  const cudaDataType type = a.scalar_type() == at::kDouble ? CUDA_R_64F : CUDA_R_32F;
  at::Tensor w = at::empty({batch, n}, a.options());
  cusolverDnHandle_t handle = at::cuda::getCurrentCUDASolverDnHandle();
  TORCH_CUSOLVER_CHECK(cusolverDnSetStream(handle, at::cuda::getCurrentCUDAStream()));
  const SolverParams params;
  size_t device_bytes = 0, host_bytes = 0;
  TORCH_CUSOLVER_CHECK(cusolverDnXsyevBatched_bufferSize(handle, params.p, CUSOLVER_EIG_MODE_NOVECTOR,
                                                         CUBLAS_FILL_MODE_UPPER, n, type, a.data_ptr(), n, type,
                                                         w.data_ptr(), type, &device_bytes, &host_bytes, batch));
  // Device workspace from the caching allocator (stream-ordered, reused across
  // calls); the host one is kept per thread and only grows, so repeated calls
  // allocate nothing on the host.
  at::Tensor work = at::empty({static_cast<int64_t>(device_bytes)}, a.options().dtype(at::kByte));
  thread_local std::vector<unsigned char> host_work;
  if (host_work.size() < host_bytes) host_work.resize(host_bytes);
  TORCH_CUSOLVER_CHECK(cusolverDnXsyevBatched(handle, params.p, CUSOLVER_EIG_MODE_NOVECTOR, CUBLAS_FILL_MODE_UPPER, n,
                                              type, a.data_ptr(), n, type, w.data_ptr(), type, work.data_ptr(),
                                              device_bytes, host_bytes ? host_work.data() : nullptr, host_bytes,
                                              info.data_ptr<int>(), batch));
  return w;
}
#endif

bool use_batched(EigSolver solver, int64_t n, size_t count) {
#ifdef DELVE_FAST_HAVE_SYEV_BATCHED
  if (solver == EigSolver::kBatched) return true;
  if (solver == EigSolver::kAuto) return count >= 2 && n > kTorchBatchedMaxN && n <= kBatchedMaxN;
#endif
  return false;
}

std::vector<at::Tensor> eigvalsh_desc_cuda(at::TensorList covs) {
  at::NoGradGuard no_grad;  // see eigvalsh_desc_cpu.cpp
  std::vector<at::Tensor> mats(covs.begin(), covs.end());
  check_eigvalsh_args(mats);
  std::vector<at::Tensor> out(mats.size());
  if (mats.empty()) return out;
  for (size_t i = 0; i < mats.size(); ++i)
    TORCH_CHECK(mats[i].device() == mats[0].device(), "eigvalsh_desc: matrix ", i, " is on ", mats[i].device(),
                " but matrix 0 is on ", mats[0].device());
  const EigSolver solver = solver_from_env();
  const c10::cuda::CUDAGuard guard(mats[0].device());
  // Group by (size, dtype): stacking mixed dtypes would promote float32 to
  // float64, and the contract keeps each input's dtype.
  std::map<std::pair<int64_t, int>, std::vector<size_t>> groups;
  for (size_t i = 0; i < mats.size(); ++i)
    groups[{mats[i].size(0), static_cast<int>(mats[i].scalar_type())}].push_back(i);
  // Batched groups' info, checked once at the end: (info, indices of its matrices).
  std::vector<std::pair<at::Tensor, const std::vector<size_t>*>> pending;
  for (auto& [key, idx] : groups) {
    const int64_t n = key.first;
    if (n == 0) {
      for (size_t i : idx) out[i] = at::empty({0}, mats[i].options());
      continue;
    }
    if (idx.size() == 1 && !use_batched(solver, n, 1)) {
      out[idx[0]] = at::linalg_eigvalsh(mats[idx[0]]).flip({-1}).clamp_min_(0);
      continue;
    }
    std::vector<at::Tensor> group;
    group.reserve(idx.size());
    for (size_t i : idx) group.push_back(mats[i]);
    at::Tensor stack = at::stack(group);  // a fresh copy: the batched solver overwrites it
    at::Tensor vals;
#ifdef DELVE_FAST_HAVE_SYEV_BATCHED
    if (use_batched(solver, n, idx.size())) {
      at::Tensor info = at::zeros({static_cast<int64_t>(idx.size())}, stack.options().dtype(at::kInt));
      vals = syev_batched(stack, info);
      pending.emplace_back(info, &idx);
    }
#endif
    if (!vals.defined()) vals = at::linalg_eigvalsh(stack);
    // Ascending -> descending; clamp round-off negatives.
    vals = vals.flip({-1}).clamp_min_(0);
    // Each output gets its own storage, as the CPU kernel and the fake give:
    // slices of vals would alias each other and keep the whole stack alive.
    for (size_t j = 0; j < idx.size(); ++j) out[idx[j]] = vals[j].clone();
  }
  if (!pending.empty()) {
    std::vector<at::Tensor> infos;
    for (const auto& pr : pending) infos.push_back(pr.first);
    // The op's one synchronisation on the batched path.
    if (at::cat(infos).ne(0).any().item<bool>()) {
      for (const auto& [info, idx] : pending) {
        const at::Tensor host = info.cpu();
        for (size_t j = 0; j < idx->size(); ++j) {
          const int v = host.data_ptr<int>()[j];
          TORCH_CHECK(v == 0, "eigvalsh_desc: the batched eigenvalue solver failed on matrix ", (*idx)[j], " (",
                      mats[(*idx)[j]].size(0), " x ", mats[(*idx)[j]].size(0), ", cuSOLVER info ", v,
                      "); it may hold NaN or Inf. DELVE_FAST_CUDA_EIG=torch selects torch.linalg.eigvalsh instead");
        }
      }
    }
  }
  return out;
}

}  // namespace
}  // namespace delve_fast

TORCH_LIBRARY_IMPL(delve_fast, CUDA, m) { m.impl("eigvalsh_desc", &delve_fast::eigvalsh_desc_cuda); }
