// CUDA kernel of delve_fast::eigvalsh_desc: batches same-sized matrices into one solver call.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <map>
#include <vector>

#include "delve_fast.h"

namespace delve_fast {
namespace {

std::vector<at::Tensor> eigvalsh_desc_cuda(at::TensorList covs) {
  std::vector<at::Tensor> mats(covs.begin(), covs.end());
  check_eigvalsh_args(mats);
  std::vector<at::Tensor> out(mats.size());
  std::map<int64_t, std::vector<size_t>> by_size;
  for (size_t i = 0; i < mats.size(); ++i) by_size[mats[i].size(0)].push_back(i);
  for (auto& [size, idx] : by_size) {
    std::vector<at::Tensor> group;
    for (size_t i : idx) group.push_back(mats[i]);
    at::Tensor vals = at::linalg_eigvalsh(at::stack(group)).flip({-1}).clamp_min_(0);
    for (size_t j = 0; j < idx.size(); ++j) out[idx[j]] = vals[j];
  }
  return out;
}

}  // namespace
}  // namespace delve_fast

TORCH_LIBRARY_IMPL(delve_fast, CUDA, m) { m.impl("eigvalsh_desc", &delve_fast::eigvalsh_desc_cuda); }
