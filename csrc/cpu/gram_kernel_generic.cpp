// Portable build of the Gram micro-kernel and the packers (no -m flags: GCC
// vectorises for the baseline ISA).
#include "cpu/gram_kernel_impl.h"

namespace delve_fast::generic {
namespace {
struct Tiles {
  static constexpr int kF64Rows = 8, kF64Cols = 4;
  static constexpr int kF32Rows = 16, kF32Cols = 4;
  static constexpr int kF32PairRows = 0;  // no float32 tile over two column blocks
};
}  // namespace

template <typename P>
void gram_pairs(const P* panel, int64_t kc, int64_t ldp, int64_t c, double* g, int64_t ldg, const int32_t* tasks,
                int64_t ntasks, PrefetchCursor* prefetch, const GramEpilogue* epilogue) {
  gram_pairs_impl<Tiles>(panel, kc, ldp, c, g, ldg, tasks, ntasks, prefetch, epilogue);
}

template <typename T, typename P>
void pack_runs(const T* base, int64_t sn, int64_t sc, int64_t s_len, int64_t c, int64_t k0, int64_t kc,
               const double* shift, P* panel, double* sums) {
  pack_runs_impl(base, sn, sc, s_len, c, k0, kc, shift, panel, sums);
}

template <typename T, typename P>
void pack_rows(const T* base, int64_t sn, int64_t ss, int64_t sc, int64_t s_len, int64_t c, int64_t k0, int64_t kc,
               const double* shift, P* panel, double* sums) {
  pack_rows_impl(base, sn, ss, sc, s_len, c, k0, kc, shift, panel, sums);
}

DELVE_FAST_INSTANTIATE_GRAM_KERNELS

}  // namespace delve_fast::generic
