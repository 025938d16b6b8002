// Device-generic body of the chunked covariance update (see cov_update_chunked.h).
//
// Everything here is ATen, so it runs on the tensors' device and never reads a
// device value on the host: the count, the shift choice and the non-finite
// decision stay tensors (where / masked arithmetic), and a CUDA caller is
// never synchronised. Buffers come from the caching allocator, so after the
// first batch of a shape no new device memory is taken.
#include "cov_update_chunked.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>

#include "delve_fast.h"

namespace delve_fast {
namespace chunked {

ChunkPlan plan_chunks(int64_t c, int64_t s, bool mixed, int64_t samples_per_chunk) {
  c = std::max<int64_t>(c, 1);
  s = std::max<int64_t>(s, 1);
  ChunkPlan p{};
  int64_t samples = samples_per_chunk > 0
                        ? samples_per_chunk
                        : std::max<int64_t>(kMinChunkRows, kChunkBytes / (c * static_cast<int64_t>(sizeof(double))));
  if (mixed) {
    p.group = std::min(kMixedGroup, samples);
    // Cap the chunk so that its float32 products (one C x C per group) stay
    // within kMixedProductBytes, keeping at least one group.
    const int64_t max_groups = std::max<int64_t>(1, kMixedProductBytes / (c * c * static_cast<int64_t>(sizeof(float))));
    samples = std::max(p.group, std::min(samples, max_groups * p.group) / p.group * p.group);
  }
  if (s <= samples) {
    p.rows_per_chunk = samples / s;
    samples = p.rows_per_chunk * s;
  }
  p.samples = samples;
  if (mixed) {
    p.groups = (samples + p.group - 1) / p.group;
    p.buffer_rows = p.groups * p.group;  // padding rows are zero: they add nothing
  } else {
    p.buffer_rows = samples;
  }
  return p;
}

void round_to_tf32_(at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, "round_to_tf32_: expected float32, got ", t.scalar_type());
  // Adding half a unit of the 11th mantissa bit to the bit pattern and
  // clearing the 13 bits below rounds the magnitude to nearest (a carry into
  // the exponent is the correct rounding up); Inf stays Inf.
  at::Tensor bits = t.view(at::kInt);
  bits.add_(0x1000).bitwise_and_(static_cast<int64_t>(static_cast<int32_t>(0xFFFFE000u)));
}

namespace {

// Mean of the first min(k, kShiftSamples) samples in float64: whole rows of
// the (N, C, S) view, then a partial row; never touches the rest of x.
at::Tensor head_mean(const at::Tensor& x, int64_t k) {
  const int64_t s = x.size(2);
  const int64_t m = std::min(k, kShiftSamples);
  const int64_t q = m / s, r = m % s;
  at::Tensor sum = at::zeros({x.size(1)}, x.options().dtype(at::kDouble));
  if (q > 0) sum.add_(at::sum(x.narrow(0, 0, q), {0, 2}, false, at::kDouble));
  if (r > 0) sum.add_(at::sum(x.select(0, q).narrow(1, 0, r), {1}, false, at::kDouble));
  return sum.div_(static_cast<double>(m));
}

}  // namespace

void merge_aten(at::Tensor& mean, at::Tensor& m2, at::Tensor& counts, const at::Tensor& acc, const at::Tensor& psum,
                const at::Tensor& shift, int64_t k) {
  const double kd = static_cast<double>(k);
  // A NaN or an Inf anywhere in the batch makes its feature's shifted sum non-finite.
  const at::Tensor ok = at::isfinite(psum).all();
  const at::Tensor d = psum / kd;
  // Grouped as the CUDA kernel does: with shift == mean (count > 0) delta == d exactly.
  const at::Tensor delta = (shift - mean) + d;
  const at::Tensor count = counts.select(0, 0);
  const at::Tensor total = count + kd;
  const at::Tensor w = count * kd / total;
  at::Tensor v = m2 + acc;
  v.addr_(delta * w, delta);
  v.addr_(d, d, 1.0, -kd);
  // Only the upper triangle of acc is meaningful: keep it and mirror it.
  v.triu_();
  v.add_(v.t().tril(-1));
  // where keeps the old bits of a skipped batch (adding a masked zero would
  // turn -0.0 into +0.0).
  m2.copy_(at::where(ok, v, m2));
  mean.copy_(at::where(ok, mean + delta * (kd / total), mean));
  const at::Tensor okf = ok.to(at::kDouble);
  counts.add_(at::stack({okf * kd, at::rsub(okf, 1.0)}));
}

void cov_update_chunked(at::Tensor mean, at::Tensor m2, at::Tensor counts, const at::Tensor& x, bool mixed,
                        int64_t samples_per_chunk, const Backend& backend) {
  const int64_t c = check_cov_update_args(mean, m2, counts, x);
  TORCH_CHECK(samples_per_chunk >= 0, "cov_update_: samples per chunk must be >= 0 (0: automatic), got ",
              samples_per_chunk);
  const int64_t n = x.size(0), s = x.size(2), k = n * s;
  if (k == 0) return;
  // The state may have been made under torch.inference_mode(); every tensor
  // made here is scratch, so inference mode costs nothing and allows both.
  const c10::InferenceMode inference;
  if (c == 0) {
    counts.select(0, 0).add_(static_cast<double>(k));  // samples of no feature: nothing can be non-finite
    return;
  }
  const auto f64 = m2.options();
  const at::Tensor shift = at::where(counts.select(0, 0) > 0, mean, head_mean(x, k));

  const ChunkPlan plan = plan_chunks(c, s, mixed, samples_per_chunk);
  at::Tensor buf = at::empty({plan.buffer_rows, c}, f64);
  at::Tensor acc = at::zeros({c, c}, f64);
  at::Tensor psum = at::zeros({c}, f64);
  at::Tensor z, prod;
  if (mixed) {
    // Per group: rows [hi | lo | hi], so that [hi; lo]^T [lo; hi] = hi lo^T + lo hi^T
    // is one product of two overlapping views.
    z = at::empty({plan.groups, 3 * plan.group, c}, f64.dtype(at::kFloat));
    prod = at::empty({plan.groups, c, c}, f64.dtype(at::kFloat));
  }

  // Folds the first `len` rows of buf (already shifted) into psum and acc.
  auto fold = [&](int64_t len) {
    const at::Tensor w = buf.narrow(0, 0, len);
    psum.add_(w.sum(0));
    if (!mixed) {
      backend.gram64(acc, w);
      return;
    }
    const int64_t g = (len + plan.group - 1) / plan.group;
    const int64_t rows = g * plan.group;
    if (rows > len) buf.narrow(0, len, rows - len).zero_();
    const at::Tensor wg = buf.narrow(0, 0, rows).view({g, plan.group, c});
    const at::Tensor zg = z.narrow(0, 0, g);
    at::Tensor hi = zg.narrow(1, 0, plan.group);
    at::Tensor lo = zg.narrow(1, plan.group, plan.group);
    hi.copy_(wg);
    round_to_tf32_(hi);
    lo.copy_(wg).sub_(hi);  // exact: hi is within 2^-11 of the float32 value
    round_to_tf32_(lo);
    zg.narrow(1, 2 * plan.group, plan.group).copy_(hi);
    at::Tensor pg = prod.narrow(0, 0, g);
    // The small cross terms first, then the large hi hi^T on top of them.
    backend.gram32(pg, zg.narrow(1, 0, 2 * plan.group), zg.narrow(1, plan.group, 2 * plan.group), false);
    backend.gram32(pg, hi, hi, true);
    if (g == 1) {
      acc.add_(pg.select(0, 0));
    } else {
      acc.add_(at::sum(pg, {0}, false, at::kDouble));
    }
  };

  if (plan.rows_per_chunk > 0) {
    for (int64_t n0 = 0; n0 < n; n0 += plan.rows_per_chunk) {
      const int64_t rows = std::min(plan.rows_per_chunk, n - n0);
      at::Tensor out = buf.narrow(0, 0, rows * s).view({rows, s, c});
      at::sub_out(out, x.narrow(0, n0, rows).permute({0, 2, 1}), shift);
      fold(rows * s);
    }
  } else {
    for (int64_t row = 0; row < n; ++row) {
      for (int64_t s0 = 0; s0 < s; s0 += plan.samples) {
        const int64_t len = std::min(plan.samples, s - s0);
        at::Tensor out = buf.narrow(0, 0, len);
        at::sub_out(out, x.select(0, row).narrow(1, s0, len).t(), shift);
        fold(len);
      }
    }
  }
  backend.merge(mean, m2, counts, acc, psum, shift, k);
}

}  // namespace chunked
}  // namespace delve_fast
