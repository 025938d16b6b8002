// CPU kernel of the private op delve_fast::_cov_update_chunked: the chunked
// update of cov_update_chunked.h with ATen products on the CPU.
//
// It exists to test, without a GPU, the arithmetic that the CUDA cuBLAS path
// (cuda/cov_update_blas.cu) runs: the same device-generic chunking, shift,
// TF32 split and merge, with products that mimic the GPU's:
//   * gram "syrk" fills only the upper triangle of the accumulator (the strict
//     lower one is set to NaN after every chunk), as cublasDsyrk does, which
//     proves the merge never reads it; "gemm" fills the whole matrix;
//   * the mixed products are float32 matrix products of TF32-exact inputs:
//     every product is exact and the sums are float32, as on TF32 tensor
//     cores (whose accumulation order and rounding may differ: the CPU result
//     is an emulation of the GPU's error, not its bits).
// cov_update_ on the CPU keeps its own tiled kernel (cov_update_cpu.cpp).
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <string>

#include "cov_update_chunked.h"
#include "delve_fast.h"

namespace delve_fast {
namespace {

void cov_update_chunked_cpu(at::Tensor mean, at::Tensor m2, at::Tensor counts, const at::Tensor& x, bool mixed,
                            int64_t chunk, c10::string_view gram) {
  const std::string which(gram);
  TORCH_CHECK(which == "syrk" || which == "gemm", "_cov_update_chunked: gram='", which,
              "' is invalid; valid choices are syrk, gemm");
  check_cov_update_args(mean, m2, counts, x);
  const double cnt = counts[0].item<double>();  // host memory: no device to wait for
  TORCH_CHECK(cnt >= 0.0 && cnt == std::floor(cnt) && cnt <= 9007199254740992.0,
              "cov_update_: counts[0] (samples) must be a whole number in [0, 2^53], got ", cnt);
  const bool upper_only = which == "syrk";
  chunked::Backend backend;
  backend.gram64 = [upper_only](at::Tensor& acc, const at::Tensor& w) {
    acc.addmm_(w.t(), w);
    if (upper_only) {
      const int64_t c = acc.size(0);
      acc.masked_fill_(at::ones({c, c}, acc.options().dtype(at::kBool)).tril(-1),
                       std::numeric_limits<double>::quiet_NaN());
    }
  };
  backend.gram32 = [](at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
    if (accumulate) {
      out.baddbmm_(a.transpose(1, 2), b);
    } else {
      at::bmm_out(out, a.transpose(1, 2), b);
    }
  };
  backend.merge = &chunked::merge_aten;
  chunked::cov_update_chunked(mean, m2, counts, x, mixed, chunk, backend);
}

}  // namespace
}  // namespace delve_fast

TORCH_LIBRARY_IMPL(delve_fast, CPU, m) { m.impl("_cov_update_chunked", &delve_fast::cov_update_chunked_cpu); }
