// Every delve_fast op schema, in one place. Kernels register per device in
// cpu/*_cpu.cpp and cuda/*_cuda.cu.
#include <torch/library.h>

TORCH_LIBRARY(delve_fast, m) {
  // Folds x, viewed as (N, C, S), into the float64 state (count, mean, m2),
  // where m2 is the centred sum of outer products. count is the number of
  // samples already in the state; the caller tracks it so no device sync is needed.
  m.def("cov_update_(Tensor(a!) mean, Tensor(b!) m2, Tensor x, int count) -> ()");
  // Eigenvalues of each symmetric matrix, descending, negatives clamped to 0.
  m.def("eigvalsh_desc(Tensor[] covs) -> Tensor[]");
}
