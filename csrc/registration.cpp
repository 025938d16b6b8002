// Every delve_fast op schema, in one place. Kernels register per device in
// cpu/*_cpu.cpp and cuda/*_cuda.cu.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

TORCH_LIBRARY(delve_fast, m) {
  // Folds x, viewed as (N, C, S), into the float64 state (mean, m2, counts),
  // where m2 is the centred sum of outer products and counts is the float64
  // pair [samples folded in, batches skipped]. The kernel reads and updates
  // counts itself, on the state's device, so no host sync is ever needed. A
  // batch holding a NaN or an Inf is left out: mean and m2 keep every bit and
  // counts[1] grows by one. mixed=True forms each tile's product in float32
  // (on shifted data) and accumulates the tiles in float64.
  m.def("cov_update_(Tensor(a!) mean, Tensor(b!) m2, Tensor(c!) counts, Tensor x, bool mixed=False) -> ()");
  // Private: the chunked (cuBLAS on CUDA) path of cov_update_, callable on
  // the CPU too, where it emulates the GPU's arithmetic for tests
  // (cov_update_chunked.h). chunk > 0 sets the samples per chunk; gram is
  // "syrk" (one triangle of each product) or "gemm" (the whole product).
  m.def(
      "_cov_update_chunked(Tensor(a!) mean, Tensor(b!) m2, Tensor(c!) counts, Tensor x, bool mixed=False, "
      "int chunk=0, str gram='syrk') -> ()");
  // Eigenvalues of each symmetric matrix, descending, negatives clamped to 0.
  m.def("eigvalsh_desc(Tensor[] covs) -> Tensor[]");
}

// The eigenvalues are reported, never differentiated: autograd passes straight
// through to the device kernel, which runs under NoGradGuard.
TORCH_LIBRARY_IMPL(delve_fast, Autograd, m) { m.impl("eigvalsh_desc", torch::CppFunction::makeFallthrough()); }

// An empty list has no tensor to dispatch on; this device-independent kernel
// answers it (device kernels take precedence whenever a tensor is present).
TORCH_LIBRARY_IMPL(delve_fast, CompositeExplicitAutograd, m) {
  m.impl("eigvalsh_desc", [](at::TensorList covs) -> std::vector<at::Tensor> {
    TORCH_CHECK(covs.empty(), "eigvalsh_desc: no kernel for device ", covs[0].device());
    return {};
  });
}
