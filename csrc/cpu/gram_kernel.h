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

// One unit of work: rows of block bi times the columns of half h of block bj, bj >= bi.
inline int64_t gram_unit_count(int64_t nblk) { return nblk * (nblk + 1); }

// Adds panel^T * panel into g (row-major, leading dimension ldg, c x c valid
// entries) for work units [unit_begin, unit_end). Only the upper triangle of g
// (and the lower part of diagonal blocks) is touched; callers mirror afterwards.
using GramFn = void (*)(const double* panel, int64_t kc, int64_t nblk, int64_t c, double* g, int64_t ldg,
                        int64_t unit_begin, int64_t unit_end);

void gram_units_generic(const double*, int64_t, int64_t, int64_t, double*, int64_t, int64_t, int64_t);
void gram_units_avx2(const double*, int64_t, int64_t, int64_t, double*, int64_t, int64_t, int64_t);
void gram_units_avx512(const double*, int64_t, int64_t, int64_t, double*, int64_t, int64_t, int64_t);

// The best variant this CPU can run, chosen once.
GramFn select_gram_kernel();
const char* gram_kernel_isa();

}  // namespace delve_fast
