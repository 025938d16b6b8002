// Triangular Gram micro-kernel over packed float64 panels.
//
// A panel holds kc samples of C features, packed in blocks of kBlock features:
// element (k, c) lives at panel[(c / kBlock) * kc * kBlock + k * kBlock + c % kBlock].
// Padding features (c >= C) are zero, so every block is full width.
#pragma once

#include <cstdint>

namespace delve_fast {

constexpr int64_t kBlock = 16;  // rows of one micro-tile; a panel block is this wide
constexpr int64_t kHalf = 8;    // columns of one micro-tile (half a block)

// Adds panel^T * panel into g (row-major, leading dimension ldg, c x c valid
// entries) for the block pairs pairs[0..npairs): pair p covers rows of block
// pairs[2p] and columns of block pairs[2p + 1] (>= the row block). Only the
// upper triangle of g (and the lower half of diagonal blocks) is touched;
// callers mirror afterwards.
using GramFn = void (*)(const double* panel, int64_t kc, int64_t c, double* g, int64_t ldg, const int32_t* pairs,
                        int64_t npairs);

void gram_pairs_generic(const double*, int64_t, int64_t, double*, int64_t, const int32_t*, int64_t);
void gram_pairs_avx2(const double*, int64_t, int64_t, double*, int64_t, const int32_t*, int64_t);
void gram_pairs_avx512(const double*, int64_t, int64_t, double*, int64_t, const int32_t*, int64_t);

// Packs samples [k0, k0 + kc) of a batch whose features are stored as runs of
// contiguous samples (NCHW: x[n, c, s] at base[n * sn + c * sc + s], s < s_len)
// into a row-major panel (layout above), minus shift, adding the shifted values
// into sums. Eight samples of eight features are transposed in registers.
template <typename T>
using PackRunsFn = void (*)(const T* base, int64_t sn, int64_t sc, int64_t s_len, int64_t c, int64_t k0, int64_t kc,
                            const double* shift, double* panel, double* sums);
template <typename T>
void pack_runs_generic(const T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const double*, double*, double*);
template <typename T>
void pack_runs_avx2(const T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const double*, double*, double*);
template <typename T>
void pack_runs_avx512(const T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const double*, double*, double*);
template <typename T>
PackRunsFn<T> select_pack_runs();

// The best variants this CPU can run, chosen once.
GramFn select_gram_kernel();
const char* gram_kernel_isa();

}  // namespace delve_fast
