// CPU kernel of delve_fast::eigvalsh_desc: eigenvalues only, for many matrices at once.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <numeric>
#include <thread>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

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
  std::exception_ptr error;
  std::mutex error_mutex;
  const at::ThreadLocalState tls;
  bool single_threaded_solvers = false;
  auto work = [&]() {
    // Workers inherit the caller's thread-local state, then switch autograd
    // off: the eigenvalues are reported, never differentiated, and the op
    // declares no derivative.
    at::ThreadLocalStateGuard tls_guard(tls);
    at::NoGradGuard no_grad;
#ifdef _OPENMP
    // One solver per core: LAPACK inside each worker would otherwise start
    // its own full thread team and oversubscribe the cores.
    if (single_threaded_solvers) omp_set_num_threads(1);
#endif
    try {
      for (size_t i = next++; i < order.size(); i = next++) {
        // eigvalsh returns ascending values; flip and clamp round-off negatives.
        out[order[i]] = at::linalg_eigvalsh(mats[order[i]]).flip({0}).clamp_min_(0);
      }
    } catch (...) {
      // An exception must not escape a std::thread; hand it to the caller.
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next = order.size();
    }
  };
  // Plain threads, not at::parallel_for: LAPACK called from inside an OpenMP
  // parallel region returned wrong eigenvalues for larger matrices (its own
  // threading is not safe to nest there), while separate threads are.
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), static_cast<int64_t>(mats.size()));
  single_threaded_solvers = workers > 1;
  if (workers <= 1) {
    work();  // one matrix (or one thread): the solver may use every core itself
  } else {
    // Every worker is a fresh thread, so limiting its solver's threads leaves
    // the caller's OpenMP settings untouched.
    std::vector<std::thread> pool;
    for (int64_t w = 0; w < workers; ++w) pool.emplace_back(work);
    for (auto& t : pool) t.join();
  }
  if (error) std::rethrow_exception(error);
  return out;
}

}  // namespace
}  // namespace delve_fast

TORCH_LIBRARY_IMPL(delve_fast, CPU, m) { m.impl("eigvalsh_desc", &delve_fast::eigvalsh_desc_cpu); }
