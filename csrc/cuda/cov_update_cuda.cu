// CUDA kernel of delve_fast::cov_update_ (built only with DELVE_FAST_CUDA).
// Placeholder until the CUDA issue lands: it routes through ATen on the device,
// so the op exists for CUDA tensors and passes the first-use self-check.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "delve_fast.h"

namespace delve_fast {
namespace {

void cov_update_cuda(at::Tensor mean, at::Tensor m2, const at::Tensor& x, int64_t count) {
  const int64_t c = check_cov_update_args(mean, m2, x, count);
  const int64_t k = x.size(0) * x.size(2);
  if (k == 0 || c == 0) return;
  // (C, K) float64: one cast copy per batch on the device.
  at::Tensor a = x.permute({1, 0, 2}).reshape({c, k}).to(at::kDouble);
  at::Tensor batch_mean = a.mean(1);
  a.sub_(batch_mean.unsqueeze(1));
  const double total = static_cast<double>(count + k);
  at::Tensor delta = batch_mean - mean;
  m2.addmm_(a, a.t());
  m2.add_(at::outer(delta, delta), static_cast<double>(count) * static_cast<double>(k) / total);
  mean.add_(delta, static_cast<double>(k) / total);
}

}  // namespace
}  // namespace delve_fast

TORCH_LIBRARY_IMPL(delve_fast, CUDA, m) { m.impl("cov_update_", &delve_fast::cov_update_cuda); }
