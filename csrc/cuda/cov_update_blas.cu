// The cuBLAS path of delve_fast::cov_update_ on CUDA, and the CUDA kernel of
// the private op _cov_update_chunked.
//
// The chunking, the shift and cast, the TF32 split and the sums are the
// device-generic ATen code of cov_update_chunked.cpp (tested on the CPU with
// emulated products); this file supplies the device's products and merge:
//   * float64: cublasDsyrk into the lower triangle of the column-major
//     accumulator (the upper one, row-major, which the merge reads), or
//     cublasDgemm for the whole product. On GPUs with float64 tensor cores
//     (A100, H100, H200) cuBLAS runs both on them;
//   * mixed: cublasGemmStridedBatchedEx with CUBLAS_COMPUTE_32F_FAST_TF32 on
//     the TF32-exact hi/lo parts, one product per group of samples;
//   * the merge: batch_vectors_kernel and merge_kernel of merge_kernels.cuh,
//     the fused kernel's own, with the accumulator as its single partial.
// Everything is ordered on the current stream, with torch's cuBLAS handle
// for this device (getCurrentCUDABlasHandle binds it to that stream), and no
// device value is read on the host.
//
// cuBLAS is the copy torch already loaded, found with dlopen by its soname
// rather than linked: the toolkit need not ship cuBLAS for the build, and the
// extension never pins a second copy.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <dlfcn.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <type_traits>

#include "cov_update_chunked.h"
#include "cuda/cov_update_blas.h"
#include "cuda/merge_kernels.cuh"
#include "delve_fast.h"

namespace delve_fast {

CudaUpdatePath cuda_update_path() {
  const char* raw = std::getenv("DELVE_FAST_CUDA_UPDATE");
  const std::string v = raw ? raw : "";
  if (v.empty() || v == "fused") return CudaUpdatePath::kFused;
  if (v == "syrk") return CudaUpdatePath::kSyrk;
  if (v == "gemm") return CudaUpdatePath::kGemm;
  TORCH_CHECK(false, "DELVE_FAST_CUDA_UPDATE='", v, "' is invalid; valid choices are fused, syrk, gemm");
}

namespace {

// The C entry point of cublasGemmStridedBatchedEx (the header adds a C++
// overload taking a cudaDataType compute type, so decltype cannot name it).
using GemmStridedBatchedExFn = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                                  const void*, const void*, cudaDataType, int, long long, const void*,
                                                  cudaDataType, int, long long, const void*, void*, cudaDataType, int,
                                                  long long, int, cublasComputeType_t, cublasGemmAlgo_t);
// Fails to compile if the header's C declaration ever differs from the type
// above (unevaluated: the symbol itself is never referenced, only dlsym'd).
static_assert(
    std::is_same_v<decltype(static_cast<GemmStridedBatchedExFn>(&cublasGemmStridedBatchedEx)), GemmStridedBatchedExFn>);

struct Cublas {
  decltype(&cublasDsyrk_v2) dsyrk = nullptr;
  decltype(&cublasDgemm_v2) dgemm = nullptr;
  GemmStridedBatchedExFn gemm_batched_ex = nullptr;
  decltype(&cublasSetPointerMode_v2) set_pointer_mode = nullptr;
  std::string error;  // why it is unavailable; empty when every symbol was found
};

template <typename Fn>
void load_symbol(void* lib, const char* name, Fn& fn, std::string& error) {
  fn = reinterpret_cast<Fn>(dlsym(lib, name));
  if (!fn && error.empty()) error = std::string("symbol ") + name + " not found";
}

const Cublas& cublas() {
  static const Cublas lib = [] {
    Cublas b;
    const std::string soname = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
    void* h = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* why = dlerror();
      b.error = "cannot open " + soname + (why ? std::string(": ") + why : std::string());
      return b;
    }
    load_symbol(h, "cublasDsyrk_v2", b.dsyrk, b.error);
    load_symbol(h, "cublasDgemm_v2", b.dgemm, b.error);
    load_symbol(h, "cublasGemmStridedBatchedEx", b.gemm_batched_ex, b.error);
    load_symbol(h, "cublasSetPointerMode_v2", b.set_pointer_mode, b.error);
    return b;  // the library stays open for the life of the process
  }();
  TORCH_CHECK(lib.error.empty(),
              "cov_update_: the cuBLAS path (DELVE_FAST_CUDA_UPDATE=syrk|gemm) is unavailable: ", lib.error,
              "; DELVE_FAST_CUDA_UPDATE=fused uses the fused kernel");
  return lib;
}

#define DELVE_FAST_CUBLAS_CHECK(EXPR)                                                                       \
  do {                                                                                                      \
    const cublasStatus_t status_ = (EXPR);                                                                  \
    TORCH_CHECK(status_ == CUBLAS_STATUS_SUCCESS, "cov_update_: cuBLAS status ", static_cast<int>(status_), \
                " from " #EXPR, "; DELVE_FAST_CUDA_UPDATE=fused avoids cuBLAS");                            \
  } while (0)

int checked_int(int64_t v, const char* what) {
  TORCH_CHECK(v >= 0 && v <= INT32_MAX, "cov_update_: ", what, "=", v, " is too large for cuBLAS");
  return static_cast<int>(v);
}

// torch's handle on the current stream, in host pointer mode (alpha and beta
// below live on the host).
cublasHandle_t handle(const Cublas& lib) {
  cublasHandle_t h = at::cuda::getCurrentCUDABlasHandle();
  DELVE_FAST_CUBLAS_CHECK(lib.set_pointer_mode(h, CUBLAS_POINTER_MODE_HOST));
  return h;
}

// acc += w^T w. Row-major (rows, C) w is the column-major C x rows matrix W,
// and W W^T's lower triangle (column-major) is the row-major upper one.
void gram64(at::Tensor& acc, const at::Tensor& w, bool upper_only) {
  const Cublas& lib = cublas();
  TORCH_CHECK(w.stride(1) == 1 && acc.is_contiguous(), "cov_update_: internal layout error in the cuBLAS path");
  const int c = checked_int(acc.size(0), "C");
  const int rows = checked_int(w.size(0), "samples per chunk");
  const int ld = checked_int(w.stride(0), "chunk stride");
  const double one = 1.0;
  cublasHandle_t h = handle(lib);
  if (upper_only) {
    DELVE_FAST_CUBLAS_CHECK(lib.dsyrk(h, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, c, rows, &one, w.const_data_ptr<double>(),
                                      ld, &one, acc.data_ptr<double>(), c));
  } else {
    DELVE_FAST_CUBLAS_CHECK(lib.dgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, c, c, rows, &one, w.const_data_ptr<double>(), ld,
                                      w.const_data_ptr<double>(), ld, &one, acc.data_ptr<double>(), c));
  }
}

// out[g] = a[g]^T b[g] (+ out[g]). Column-major, out[g] is B A^T with A, B the
// C x rows matrices at a[g], b[g]; TF32 tensor cores, float32 accumulation.
void gram32(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  const Cublas& lib = cublas();
  TORCH_CHECK(a.stride(2) == 1 && b.stride(2) == 1 && out.is_contiguous(),
              "cov_update_: internal layout error in the cuBLAS path");
  const int c = checked_int(out.size(1), "C");
  const int rows = checked_int(a.size(1), "samples per group");
  const int groups = checked_int(out.size(0), "groups");
  const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  cublasHandle_t h = handle(lib);
  DELVE_FAST_CUBLAS_CHECK(lib.gemm_batched_ex(
      h, CUBLAS_OP_N, CUBLAS_OP_T, c, c, rows, &one, b.const_data_ptr<float>(), CUDA_R_32F,
      checked_int(b.stride(1), "group stride"), b.stride(0), a.const_data_ptr<float>(), CUDA_R_32F,
      checked_int(a.stride(1), "group stride"), a.stride(0), &beta, out.data_ptr<float>(), CUDA_R_32F, c,
      static_cast<long long>(c) * c, groups, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT));
}

// The fused kernel's decision and merge, with acc as the only partial.
void merge_cuda(at::Tensor& mean, at::Tensor& m2, at::Tensor& counts, const at::Tensor& acc, const at::Tensor& psum,
                const at::Tensor& shift, int64_t k) {
  const int64_t c = m2.size(0);
  TORCH_CHECK(acc.is_contiguous() && psum.is_contiguous() && shift.is_contiguous(),
              "cov_update_: internal layout error in the cuBLAS path");
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor ws = at::empty({2 * c + kScalLen}, m2.options());
  double* vec = ws.data_ptr<double>();
  double* scal = vec + 2 * c;
  const double kd = static_cast<double>(k);
  batch_vectors_kernel<<<1, kVectorThreads, 0, stream>>>(psum.const_data_ptr<double>(), 1, c, kd,
                                                         shift.const_data_ptr<double>(), mean.const_data_ptr<double>(),
                                                         vec, counts.data_ptr<double>(), scal);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto nt = static_cast<unsigned>((c + kMergeTile - 1) / kMergeTile);
  merge_kernel<<<dim3(nt, nt), dim3(kMergeTile, kMergeRows), 0, stream>>>(
      m2.data_ptr<double>(), mean.data_ptr<double>(), acc.const_data_ptr<double>(), 1, vec, c, kd, scal);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void cov_update_chunked_cuda(at::Tensor mean, at::Tensor m2, at::Tensor counts, const at::Tensor& x, bool mixed,
                             int64_t chunk, c10::string_view gram) {
  const std::string which(gram);
  TORCH_CHECK(which == "syrk" || which == "gemm", "_cov_update_chunked: gram='", which,
              "' is invalid; valid choices are syrk, gemm");
  cov_update_cuda_blas(mean, m2, counts, x, mixed, chunk, which == "syrk");
}

}  // namespace

void cov_update_cuda_blas(at::Tensor mean, at::Tensor m2, at::Tensor counts, const at::Tensor& x, bool mixed,
                          int64_t chunk, bool upper_only) {
  check_cov_update_args(mean, m2, counts, x);
  TORCH_CHECK(x.is_cuda(), "cov_update_: the CUDA kernel got x on ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  chunked::Backend backend;
  backend.gram64 = [upper_only](at::Tensor& acc, const at::Tensor& w) { gram64(acc, w, upper_only); };
  backend.gram32 = &gram32;
  backend.merge = &merge_cuda;
  chunked::cov_update_chunked(mean, m2, counts, x, mixed, chunk, backend);
}

}  // namespace delve_fast

TORCH_LIBRARY_IMPL(delve_fast, CUDA, m) { m.impl("_cov_update_chunked", &delve_fast::cov_update_chunked_cuda); }
