// Contract constants and argument checks shared by every device's kernels of the delve_fast ops.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace delve_fast {

// cov_update_ on an empty state (count == 0) shifts every sample by the mean of
// the batch's first kShiftSamples samples (or all of them, if fewer) before
// forming products; with count > 0 the running mean is the shift. Both kernels
// use the same window, so they round alike (docs/ops.md).
constexpr int64_t kShiftSamples = 256;

// Length of the counts tensor of cov_update_: [samples, skipped batches].
// Both are whole numbers held in float64, exact up to 2^53.
constexpr int64_t kCountsLen = 2;

// Validates the state and batch of cov_update_ and returns C. counts is the
// float64 pair [samples folded in, batches skipped as non-finite] on the
// state's device; it is read by the kernels themselves, so the caller never
// has to know it (no device sync per batch).
inline int64_t check_cov_update_args(const at::Tensor& mean, const at::Tensor& m2, const at::Tensor& counts,
                                     const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 3, "cov_update_: x must be viewed as (N, C, S); got ", x.dim(), " dims ", x.sizes());
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              "cov_update_: x must be float16, bfloat16, float32 or float64; got ", st);
  const int64_t c = x.size(1);
  TORCH_CHECK(mean.scalar_type() == at::kDouble && m2.scalar_type() == at::kDouble,
              "cov_update_: state must be float64; got mean ", mean.scalar_type(), ", m2 ", m2.scalar_type());
  TORCH_CHECK(mean.dim() == 1 && mean.size(0) == c, "cov_update_: mean must have shape (", c, "), got ", mean.sizes());
  TORCH_CHECK(m2.dim() == 2 && m2.size(0) == c && m2.size(1) == c, "cov_update_: m2 must have shape (", c, ", ", c,
              "), got ", m2.sizes());
  TORCH_CHECK(counts.scalar_type() == at::kDouble && counts.dim() == 1 && counts.size(0) == kCountsLen,
              "cov_update_: counts must be a float64 tensor of shape (", kCountsLen,
              ") [samples, skipped batches], got ", counts.scalar_type(), " ", counts.sizes());
  TORCH_CHECK(mean.is_contiguous() && m2.is_contiguous() && counts.is_contiguous(),
              "cov_update_: state tensors must be contiguous");
  TORCH_CHECK(mean.device() == x.device() && m2.device() == x.device() && counts.device() == x.device(),
              "cov_update_: state on ", m2.device(), " (counts on ", counts.device(), ") but x on ", x.device());
  return c;
}

inline void check_eigvalsh_args(const std::vector<at::Tensor>& covs) {
  for (size_t i = 0; i < covs.size(); ++i) {
    const auto& a = covs[i];
    TORCH_CHECK(a.dim() == 2 && a.size(0) == a.size(1), "eigvalsh_desc: matrix ", i, " must be square, got ",
                a.sizes());
    TORCH_CHECK(a.scalar_type() == at::kDouble || a.scalar_type() == at::kFloat, "eigvalsh_desc: matrix ", i,
                " must be float32 or float64, got ", a.scalar_type());
  }
}

}  // namespace delve_fast
