// CUDA kernel of delve_fast::eigvalsh_desc: eigenvalues only, many matrices at once.
//
// Matrices of one size and dtype are stacked and solved in one batched
// at::linalg_eigvalsh call (cuSOLVER's batched syevj for small sizes, one syevd
// per matrix otherwise), so a tracker with many equal layers pays one launch
// sequence per distinct shape instead of one per layer. The solver checks its
// info on the host, so this op synchronises once per group.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <map>
#include <utility>
#include <vector>

#include "delve_fast.h"

namespace delve_fast {
namespace {

std::vector<at::Tensor> eigvalsh_desc_cuda(at::TensorList covs) {
  at::NoGradGuard no_grad;  // see eigvalsh_desc_cpu.cpp
  std::vector<at::Tensor> mats(covs.begin(), covs.end());
  check_eigvalsh_args(mats);
  std::vector<at::Tensor> out(mats.size());
  if (mats.empty()) return out;
  for (size_t i = 0; i < mats.size(); ++i)
    TORCH_CHECK(mats[i].device() == mats[0].device(), "eigvalsh_desc: matrix ", i, " is on ", mats[i].device(),
                " but matrix 0 is on ", mats[0].device());
  const c10::cuda::CUDAGuard guard(mats[0].device());
  // Group by (size, dtype): stacking mixed dtypes would promote float32 to
  // float64, and the contract keeps each input's dtype.
  std::map<std::pair<int64_t, int>, std::vector<size_t>> groups;
  for (size_t i = 0; i < mats.size(); ++i)
    groups[{mats[i].size(0), static_cast<int>(mats[i].scalar_type())}].push_back(i);
  for (auto& [key, idx] : groups) {
    if (idx.size() == 1) {
      out[idx[0]] = at::linalg_eigvalsh(mats[idx[0]]).flip({-1}).clamp_min_(0);
      continue;
    }
    std::vector<at::Tensor> group;
    group.reserve(idx.size());
    for (size_t i : idx) group.push_back(mats[i]);
    // eigvalsh returns ascending values; flip and clamp round-off negatives.
    at::Tensor vals = at::linalg_eigvalsh(at::stack(group)).flip({-1}).clamp_min_(0);
    // Each output gets its own storage, as the CPU kernel and the fake give:
    // slices of vals would alias each other and keep the whole stack alive.
    for (size_t j = 0; j < idx.size(); ++j) out[idx[j]] = vals[j].clone();
  }
  return out;
}

}  // namespace
}  // namespace delve_fast

TORCH_LIBRARY_IMPL(delve_fast, CUDA, m) { m.impl("eigvalsh_desc", &delve_fast::eigvalsh_desc_cuda); }
