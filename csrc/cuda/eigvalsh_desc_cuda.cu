// CUDA kernel of delve_fast::eigvalsh_desc: eigenvalues only, many matrices at once.
//
// Matrices of one size and dtype are stacked and solved together. Two solvers:
//
//   * cuSOLVER's cusolverDnXsyevBatched (eigenvalues only), where the toolkit
//     has it: one call for the whole group at any size. torch.linalg.eigvalsh
//     batches (Jacobi) only up to 32 x 32 and loops one solver per matrix
//     above that, which is the slow case for trackers with many 64-512 wide
//     layers. Its per-matrix info is checked once, after every group.
//   * at::linalg_eigvalsh on the stack, the fallback; it checks its info on the
//     host, so it synchronises once per group.
//
// DELVE_FAST_CUDA_EIG picks: "auto" (default) the batched solver for groups of
// two or more matrices with 32 < n <= kBatchedMaxN, "batched" for every group,
// "torch" never. Without the batched solver in the build, all three use torch.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <dlfcn.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "delve_fast.h"

// cusolverDnXsyevBatched first shipped with cuSOLVER 11.7.1 (CUDA 12.6 update 2). The
// header (which ATen includes) gives its declaration; the library is opened at run time.
#if defined(CUSOLVER_VERSION) && CUSOLVER_VERSION >= 11701
#define DELVE_FAST_HAVE_SYEV_BATCHED 1
#endif

namespace delve_fast {
namespace {

// torch's own batched path (syevj) covers n <= 32; above kBatchedMaxN one
// divide-and-conquer solve per matrix is expected to win again. The bound is a
// first guess to be tuned by the GPU benchmark (benchmarks/gpu_check.py).
constexpr int64_t kTorchBatchedMaxN = 32;
constexpr int64_t kBatchedMaxN = 512;

enum class EigSolver { kAuto, kBatched, kTorch };

EigSolver solver_from_env() {
  const char* raw = std::getenv("DELVE_FAST_CUDA_EIG");
  const std::string v = raw ? raw : "";
  if (v.empty() || v == "auto") return EigSolver::kAuto;
  if (v == "batched") return EigSolver::kBatched;
  if (v == "torch") return EigSolver::kTorch;
  TORCH_CHECK(false, "DELVE_FAST_CUDA_EIG='", v, "' is invalid; valid choices are auto, batched, torch");
}

#ifdef DELVE_FAST_HAVE_SYEV_BATCHED
// cuSOLVER, opened with dlopen on first use rather than linked: torch keeps
// its own cuSOLVER handle in a lazily loaded library whose symbols an
// extension cannot rely on, importing delve_fast should not load cuSOLVER, and
// a cuSOLVER that lacks the batched solver must mean a fallback, not an
// import error. The soname is the one of the header we were compiled with; a
// copy that torch already loaded is found by that name.
struct Cusolver {
  decltype(&cusolverDnCreate) create = nullptr;
  decltype(&cusolverDnSetStream) set_stream = nullptr;
  decltype(&cusolverDnCreateParams) create_params = nullptr;
  decltype(&cusolverDnDestroyParams) destroy_params = nullptr;
  decltype(&cusolverDnXsyevBatched_bufferSize) buffer_size = nullptr;
  decltype(&cusolverDnXsyevBatched) syev_batched = nullptr;
  std::string error;  // why it is unavailable; empty when every symbol was found
};

// Our own status check: ATen's TORCH_CUSOLVER_CHECK names helpers whose home
// library has moved between torch releases.
#define DELVE_FAST_CUSOLVER_CHECK(EXPR)                                                                           \
  do {                                                                                                            \
    const cusolverStatus_t status_ = (EXPR);                                                                      \
    TORCH_CHECK(status_ == CUSOLVER_STATUS_SUCCESS, "eigvalsh_desc: cuSOLVER status ", static_cast<int>(status_), \
                " from " #EXPR, "; DELVE_FAST_CUDA_EIG=torch avoids this solver");                                \
  } while (0)

template <typename Fn>
bool load_symbol(void* lib, const char* name, Fn& fn, std::string& error) {
  fn = reinterpret_cast<Fn>(dlsym(lib, name));
  if (!fn && error.empty()) error = std::string("symbol ") + name + " not found";
  return fn != nullptr;
}

const Cusolver& cusolver() {
  static const Cusolver lib = [] {
    Cusolver c;
    const std::string soname = "libcusolver.so." + std::to_string(CUSOLVER_VER_MAJOR);
    void* h = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* why = dlerror();
      c.error = "cannot open " + soname + (why ? std::string(": ") + why : std::string());
      return c;
    }
    load_symbol(h, "cusolverDnCreate", c.create, c.error);
    load_symbol(h, "cusolverDnSetStream", c.set_stream, c.error);
    load_symbol(h, "cusolverDnCreateParams", c.create_params, c.error);
    load_symbol(h, "cusolverDnDestroyParams", c.destroy_params, c.error);
    load_symbol(h, "cusolverDnXsyevBatched_bufferSize", c.buffer_size, c.error);
    load_symbol(h, "cusolverDnXsyevBatched", c.syev_batched, c.error);
    return c;  // the library stays open for the life of the process
  }();
  return lib;
}

// One handle per (thread, device), made on first use. Handles are never
// destroyed: destroying them at thread or process exit can run after the CUDA
// context is gone; there is one per thread that solves eigenvalues.
cusolverDnHandle_t solver_handle(const Cusolver& lib, int device) {
  thread_local std::unordered_map<int, cusolverDnHandle_t> handles;
  auto it = handles.find(device);
  if (it != handles.end()) return it->second;
  cusolverDnHandle_t h = nullptr;
  DELVE_FAST_CUSOLVER_CHECK(lib.create(&h));
  handles.emplace(device, h);
  return h;
}

struct SolverParams {
  const Cusolver& lib;
  cusolverDnParams_t p = nullptr;
  explicit SolverParams(const Cusolver& l) : lib(l) { DELVE_FAST_CUSOLVER_CHECK(lib.create_params(&p)); }
  ~SolverParams() {
    if (p) lib.destroy_params(p);
  }
  SolverParams(const SolverParams&) = delete;
  SolverParams& operator=(const SolverParams&) = delete;
};

// The solver's current limit: n * lda * batch <= INT32_MAX per call.
constexpr int64_t kSyevBatchedMaxElems = INT32_MAX;

// Whether one n x n matrix fits the solver's size limit at all.
bool syev_batched_fits(int64_t n) { return n * n <= kSyevBatchedMaxElems; }

// Eigenvalues (ascending) of the (B, n, n) stack `a`, which is overwritten.
// cuSOLVER reads column-major, so its upper triangle is our (row-major) lower
// one: like torch.linalg.eigvalsh, only the lower triangle is read. info
// receives one status per matrix, on the device; nothing here waits for it.
void syev_batched_call(const Cusolver& lib, cusolverDnHandle_t handle, at::Tensor a, at::Tensor w, at::Tensor info) {
  const int64_t batch = a.size(0), n = a.size(1);
  const cudaDataType type = a.scalar_type() == at::kDouble ? CUDA_R_64F : CUDA_R_32F;
  const SolverParams params(lib);
  size_t device_bytes = 0, host_bytes = 0;
  DELVE_FAST_CUSOLVER_CHECK(lib.buffer_size(handle, params.p, CUSOLVER_EIG_MODE_NOVECTOR, CUBLAS_FILL_MODE_UPPER, n,
                                            type, a.data_ptr(), n, type, w.data_ptr(), type, &device_bytes, &host_bytes,
                                            batch));
  // Device workspace from the caching allocator (stream-ordered, reused across
  // calls); the host one is kept per thread and only grows, so repeated calls
  // allocate nothing on the host.
  at::Tensor work = at::empty({static_cast<int64_t>(device_bytes)}, a.options().dtype(at::kByte));
  thread_local std::vector<unsigned char> host_work;
  if (host_work.size() < host_bytes) host_work.resize(host_bytes);
  DELVE_FAST_CUSOLVER_CHECK(lib.syev_batched(handle, params.p, CUSOLVER_EIG_MODE_NOVECTOR, CUBLAS_FILL_MODE_UPPER, n,
                                             type, a.data_ptr(), n, type, w.data_ptr(), type, work.data_ptr(),
                                             device_bytes, host_bytes ? host_work.data() : nullptr, host_bytes,
                                             info.data_ptr<int>(), batch));
}

// syev_batched_call over the whole stack, at most INT32_MAX / n^2 matrices per call.
at::Tensor syev_batched(const Cusolver& lib, const at::Tensor& a, const at::Tensor& info) {
  const int64_t batch = a.size(0), n = a.size(1);
  at::Tensor w = at::empty({batch, n}, a.options());
  cusolverDnHandle_t handle = solver_handle(lib, a.get_device());
  DELVE_FAST_CUSOLVER_CHECK(lib.set_stream(handle, at::cuda::getCurrentCUDAStream()));
  const int64_t run = std::max<int64_t>(1, kSyevBatchedMaxElems / (n * n));
  for (int64_t b0 = 0; b0 < batch; b0 += run) {
    const int64_t len = std::min(run, batch - b0);
    syev_batched_call(lib, handle, a.narrow(0, b0, len), w.narrow(0, b0, len), info.narrow(0, b0, len));
  }
  return w;
}
#endif

// Whether the batched solver can run here; `why` says why not.
bool batched_available(std::string& why) {
#ifdef DELVE_FAST_HAVE_SYEV_BATCHED
  why = cusolver().error;
  return why.empty();
#else
  why = "this build's cuSOLVER headers predate cusolverDnXsyevBatched (cuSOLVER 11.7.1)";
  return false;
#endif
}

// auto falls back to torch's solver where the batched one is unavailable;
// an explicit DELVE_FAST_CUDA_EIG=batched makes that an error instead.
bool use_batched(EigSolver solver, int64_t n, size_t count) {
  if (solver == EigSolver::kTorch) return false;
#ifdef DELVE_FAST_HAVE_SYEV_BATCHED
  if (!syev_batched_fits(n)) return false;  // above 46340 x 46340: torch's solver, under any choice
#endif
  if (solver == EigSolver::kAuto && !(count >= 2 && n > kTorchBatchedMaxN && n <= kBatchedMaxN)) return false;
  std::string why;
  if (batched_available(why)) return true;
  TORCH_CHECK(solver == EigSolver::kAuto, "eigvalsh_desc: DELVE_FAST_CUDA_EIG=batched, but the batched solver is ",
              "unavailable: ", why, "; use auto or torch");
  return false;
}

std::vector<at::Tensor> eigvalsh_desc_cuda(at::TensorList covs) {
  at::NoGradGuard no_grad;  // see eigvalsh_desc_cpu.cpp
  std::vector<at::Tensor> mats(covs.begin(), covs.end());
  check_eigvalsh_args(mats);
  std::vector<at::Tensor> out(mats.size());
  if (mats.empty()) return out;
  for (size_t i = 0; i < mats.size(); ++i)
    TORCH_CHECK(mats[i].device() == mats[0].device(), "eigvalsh_desc: matrix ", i, " is on ", mats[i].device(),
                " but matrix 0 is on ", mats[0].device());
  const EigSolver solver = solver_from_env();
  const c10::cuda::CUDAGuard guard(mats[0].device());
  // Group by (size, dtype): stacking mixed dtypes would promote float32 to
  // float64, and the contract keeps each input's dtype.
  std::map<std::pair<int64_t, int>, std::vector<size_t>> groups;
  for (size_t i = 0; i < mats.size(); ++i)
    groups[{mats[i].size(0), static_cast<int>(mats[i].scalar_type())}].push_back(i);
  // Batched groups' info, checked once at the end: (info, indices of its matrices).
  std::vector<std::pair<at::Tensor, const std::vector<size_t>*>> pending;
  for (auto& [key, idx] : groups) {
    const int64_t n = key.first;
    if (n == 0) {
      for (size_t i : idx) out[i] = at::empty({0}, mats[i].options());
      continue;
    }
    if (idx.size() == 1 && !use_batched(solver, n, 1)) {
      out[idx[0]] = at::linalg_eigvalsh(mats[idx[0]]).flip({-1}).clamp_min_(0);
      continue;
    }
    std::vector<at::Tensor> group;
    group.reserve(idx.size());
    for (size_t i : idx) group.push_back(mats[i]);
    at::Tensor stack = at::stack(group);  // a fresh copy: the batched solver overwrites it
    at::Tensor vals;
#ifdef DELVE_FAST_HAVE_SYEV_BATCHED
    if (use_batched(solver, n, idx.size())) {
      at::Tensor info = at::zeros({static_cast<int64_t>(idx.size())}, stack.options().dtype(at::kInt));
      vals = syev_batched(cusolver(), stack, info);
      pending.emplace_back(info, &idx);
    }
#endif
    if (!vals.defined()) vals = at::linalg_eigvalsh(stack);
    // Ascending -> descending; clamp round-off negatives.
    vals = vals.flip({-1}).clamp_min_(0);
    // Each output gets its own storage, as the CPU kernel and the fake give:
    // slices of vals would alias each other and keep the whole stack alive.
    for (size_t j = 0; j < idx.size(); ++j) out[idx[j]] = vals[j].clone();
  }
  if (!pending.empty()) {
    std::vector<at::Tensor> infos;
    for (const auto& pr : pending) infos.push_back(pr.first);
    // The op's one synchronisation on the batched path.
    if (at::cat(infos).ne(0).any().item<bool>()) {
      for (const auto& [info, idx] : pending) {
        const at::Tensor host = info.cpu();
        for (size_t j = 0; j < idx->size(); ++j) {
          const int v = host.data_ptr<int>()[j];
          TORCH_CHECK(v == 0, "eigvalsh_desc: the batched eigenvalue solver failed on matrix ", (*idx)[j], " (",
                      mats[(*idx)[j]].size(0), " x ", mats[(*idx)[j]].size(0), ", cuSOLVER info ", v,
                      "); it may hold NaN or Inf. DELVE_FAST_CUDA_EIG=torch selects torch.linalg.eigvalsh instead");
        }
      }
    }
  }
  return out;
}

}  // namespace
}  // namespace delve_fast

TORCH_LIBRARY_IMPL(delve_fast, CUDA, m) { m.impl("eigvalsh_desc", &delve_fast::eigvalsh_desc_cuda); }
