// Every delve_fast op schema, in one place. Kernels register per device in
// cpu/*_cpu.cpp and cuda/*_cuda.cu.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

TORCH_LIBRARY(delve_fast, m) {
  // Folds x, viewed as (N, C, S), into the float64 state (count, mean, m2),
  // where m2 is the centred sum of outer products. count is the number of
  // samples already in the state; the caller tracks it so no device sync is needed.
  // mixed=True forms each tile's product in float32 (on shifted data) and
  // accumulates the tiles in float64.
  m.def("cov_update_(Tensor(a!) mean, Tensor(b!) m2, Tensor x, int count, bool mixed=False) -> ()");
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
