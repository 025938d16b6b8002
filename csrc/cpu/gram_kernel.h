// Triangular Gram micro-kernel over packed panels, and the packers that fill them.
//
// A panel holds kc samples of C features, packed in blocks of kBlock features:
// element (k, c) lives at panel[(c / kBlock) * kc * kBlock + k * kBlock + c % kBlock].
// Padding features (c >= C) are zero, so every block is full width. Panels are
// float64, or float32 in the opt-in mixed precision mode; the Gram accumulator
// is always float64.
#pragma once

#include <cstdint>

namespace delve_fast {

constexpr int64_t kBlock = 16;  // features per panel block (rows and columns of one block pair)

// A byte range of the batch that the packer will read.
struct Span {
  const char* begin;
  const char* end;
};

// Position in a list of spans whose cache lines are prefetched into L2 while
// the Gram runs, so that the next tile's reads from memory overlap this tile's
// flops instead of stalling the packer. Plain data: the stepping code lives in
// each ISA's translation unit (shared inline members would be an ODR hazard
// across the -m flags).
struct PrefetchCursor {
  const Span* next = nullptr;  // spans not started yet
  const Span* last = nullptr;  // one past the final span
  const char* line = nullptr;  // next line to prefetch; nullptr once done
  const char* end = nullptr;   // end of the current span
};

// Folds a finished batch into the running state as the last tile's Gram is
// written: entry (i, j), i <= j, becomes
//   g_ij + tile_ij + w * delta_i * delta_j - k * d_i * d_j
// and is mirrored to (j, i). Doing it here, on the thread that owns the
// block, saves a pass over the whole matrix that would pull every line across cores.
struct GramEpilogue {
  const double* delta;  // batch mean - old mean
  const double* d;      // batch mean - shift
  double w;             // count * k / (count + k)
  double k;             // samples in the batch
};

// Adds panel^T * panel over kc samples into g (row-major, leading dimension
// ldg, c x c valid entries) for the block tasks tasks[0..ntasks): task t,
// (bi, bj, n) = tasks[3t .. 3t + 2], covers the rows of feature block bi
// against the columns of blocks bj .. bj + n - 1 (all >= bi; n is 1 or 2).
// Only the upper triangle of g (and the lower half of diagonal blocks) is
// touched; callers mirror afterwards. Blocks of the panel are ldp samples
// apart (ldp >= kc), so a run of samples inside a longer panel can be passed.
// Lines of prefetch (may be null) are prefetched every few samples. With an
// epilogue (may be null), the touched entries are finished and mirrored.
template <typename P>
using GramFn = void (*)(const P* panel, int64_t kc, int64_t ldp, int64_t c, double* g, int64_t ldg,
                        const int32_t* tasks, int64_t ntasks, PrefetchCursor* prefetch, const GramEpilogue* epilogue);

// Packs samples [k0, k0 + kc) of a batch whose features are stored as runs of
// contiguous samples (NCHW: x[n, c, s] at base[n * sn + c * sc + s], s < s_len)
// into a panel (layout above), minus shift, adding the shifted values into
// sums (always float64). Eight samples of eight features are transposed in registers.
template <typename T, typename P>
using PackRunsFn = void (*)(const T* base, int64_t sn, int64_t sc, int64_t s_len, int64_t c, int64_t k0, int64_t kc,
                            const double* shift, P* panel, double* sums);

// Packs samples [k0, k0 + kc) of a batch whose features sit close together
// within a sample (channels_last, Linear rows, tokens: x[n, c, s] at
// base[n * sn + s * ss + c * sc]) the same way, sixteen features at a time when
// they are contiguous.
template <typename T, typename P>
using PackRowsFn = void (*)(const T* base, int64_t sn, int64_t ss, int64_t sc, int64_t s_len, int64_t c, int64_t k0,
                            int64_t kc, const double* shift, P* panel, double* sums);

// One namespace per instruction-set build, each defined in gram_kernel_<isa>.cpp
// (compiled with that ISA's -m flags): gram_pairs is a GramFn, pack_runs a
// PackRunsFn and pack_rows a PackRowsFn. isa_dispatch.cpp picks one build at run time.
namespace generic {
template <typename P>
void gram_pairs(const P* panel, int64_t kc, int64_t ldp, int64_t c, double* g, int64_t ldg, const int32_t* tasks,
                int64_t ntasks, PrefetchCursor* prefetch, const GramEpilogue* epilogue);
template <typename T, typename P>
void pack_runs(const T* base, int64_t sn, int64_t sc, int64_t s_len, int64_t c, int64_t k0, int64_t kc,
               const double* shift, P* panel, double* sums);
template <typename T, typename P>
void pack_rows(const T* base, int64_t sn, int64_t ss, int64_t sc, int64_t s_len, int64_t c, int64_t k0, int64_t kc,
               const double* shift, P* panel, double* sums);
}  // namespace generic

namespace avx2 {
template <typename P>
void gram_pairs(const P* panel, int64_t kc, int64_t ldp, int64_t c, double* g, int64_t ldg, const int32_t* tasks,
                int64_t ntasks, PrefetchCursor* prefetch, const GramEpilogue* epilogue);
template <typename T, typename P>
void pack_runs(const T* base, int64_t sn, int64_t sc, int64_t s_len, int64_t c, int64_t k0, int64_t kc,
               const double* shift, P* panel, double* sums);
template <typename T, typename P>
void pack_rows(const T* base, int64_t sn, int64_t ss, int64_t sc, int64_t s_len, int64_t c, int64_t k0, int64_t kc,
               const double* shift, P* panel, double* sums);
}  // namespace avx2

namespace avx512 {
template <typename P>
void gram_pairs(const P* panel, int64_t kc, int64_t ldp, int64_t c, double* g, int64_t ldg, const int32_t* tasks,
                int64_t ntasks, PrefetchCursor* prefetch, const GramEpilogue* epilogue);
template <typename T, typename P>
void pack_runs(const T* base, int64_t sn, int64_t sc, int64_t s_len, int64_t c, int64_t k0, int64_t kc,
               const double* shift, P* panel, double* sums);
template <typename T, typename P>
void pack_rows(const T* base, int64_t sn, int64_t ss, int64_t sc, int64_t s_len, int64_t c, int64_t k0, int64_t kc,
               const double* shift, P* panel, double* sums);
}  // namespace avx512

// The best builds this CPU can run, chosen once (isa_dispatch.cpp).
template <typename P>
GramFn<P> select_gram_kernel();
template <typename T, typename P>
PackRunsFn<T, P> select_pack_runs();
template <typename T, typename P>
PackRowsFn<T, P> select_pack_rows();
const char* gram_kernel_isa();

}  // namespace delve_fast
