// CPU kernel of delve_fast::eigvalsh_desc: eigenvalues only, for many matrices at once.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <vector>

#include "delve_fast.h"

namespace delve_fast {
namespace {

std::vector<at::Tensor> eigvalsh_desc_cpu(at::TensorList covs) {
  std::vector<at::Tensor> mats(covs.begin(), covs.end());
  check_eigvalsh_args(mats);
  std::vector<at::Tensor> out(mats.size());
  // Largest first, handed out one at a time: the cost grows as C^3, so a
  // static split of the list would leave threads idle.
  std::vector<size_t> order(mats.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return mats[a].size(0) > mats[b].size(0); });
  std::atomic<size_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), static_cast<int64_t>(mats.size()));
  at::parallel_for(0, std::max<int64_t>(workers, 1), 1, [&](int64_t w0, int64_t w1) {
    // Eigenvalues carry no gradient here. Grad mode is thread-local, so the
    // guard goes inside the worker: otherwise the ops below would attach an
    // autograd graph that the op itself does not declare.
    at::NoGradGuard no_grad;
    for (int64_t w = w0; w < w1; ++w) {
      for (size_t i = next++; i < order.size(); i = next++) {
        const auto& a = mats[order[i]];
        // eigvalsh returns ascending values; flip and clamp round-off negatives.
        out[order[i]] = at::linalg_eigvalsh(a).flip({0}).clamp_min_(0);
      }
    }
  });
  return out;
}

}  // namespace
}  // namespace delve_fast

TORCH_LIBRARY_IMPL(delve_fast, CPU, m) { m.impl("eigvalsh_desc", &delve_fast::eigvalsh_desc_cpu); }
