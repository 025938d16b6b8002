// Body of the Gram micro-kernel, compiled once per instruction set by the
// gram_kernel_<isa>.cpp files (each built with its own -m flags). Define
// DELVE_FAST_GRAM_FN, DELVE_FAST_SUB_ROWS and DELVE_FAST_SUB_COLS before including.
#include <algorithm>
#include <cstring>

#include "cpu/gram_kernel.h"

namespace delve_fast {
namespace {

constexpr int kRows = DELVE_FAST_SUB_ROWS;  // rows held in registers at once
constexpr int kCols = DELVE_FAST_SUB_COLS;  // columns held in registers at once
constexpr int kLanes = 8;                   // doubles per vector value below
typedef double vec_t __attribute__((vector_size(kLanes * sizeof(double))));
constexpr int kRowVecs = kRows / kLanes;
static_assert(kRows % kLanes == 0, "sub-tile rows must fill whole vectors");
static_assert(kBlock % kRows == 0 && kHalf % kCols == 0, "sub-tiles must tile a micro-tile");

inline vec_t load_vec(const double* p) {
  vec_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// acc[j][r] accumulates rows [r*8, r*8+8) of column j of the sub-tile.
inline void sub_tile(const double* __restrict a, const double* __restrict b, int64_t kc, double* __restrict out) {
  vec_t acc[kCols][kRowVecs];
  for (int j = 0; j < kCols; ++j)
    for (int r = 0; r < kRowVecs; ++r) acc[j][r] = vec_t{} * 0.0;
  for (int64_t k = 0; k < kc; ++k) {
    vec_t av[kRowVecs];
    for (int r = 0; r < kRowVecs; ++r) av[r] = load_vec(a + k * kBlock + r * kLanes);
    const double* bk = b + k * kBlock;
    for (int j = 0; j < kCols; ++j) {
      const double bj = bk[j];
      for (int r = 0; r < kRowVecs; ++r) acc[j][r] += av[r] * bj;
    }
  }
  // out is column-major kRows x kCols.
  for (int j = 0; j < kCols; ++j)
    for (int r = 0; r < kRowVecs; ++r) std::memcpy(out + j * kRows + r * kLanes, &acc[j][r], sizeof(vec_t));
}

}  // namespace

void DELVE_FAST_GRAM_FN(const double* panel, int64_t kc, int64_t nblk, int64_t c, double* g, int64_t ldg,
                        int64_t unit_begin, int64_t unit_end) {
  const int64_t stride_blk = kc * kBlock;
  // Walk units in order: for bi, for bj >= bi, for h in {0, 1}.
  int64_t unit = 0, bi = 0;
  while (bi < nblk && unit + 2 * (nblk - bi) <= unit_begin) unit += 2 * (nblk - bi++);
  double tile[kRows * kCols];
  for (; bi < nblk && unit < unit_end; ++bi) {
    for (int64_t bj = bi; bj < nblk && unit < unit_end; ++bj) {
      for (int64_t h = 0; h < 2; ++h, ++unit) {
        if (unit < unit_begin) continue;
        if (unit >= unit_end) break;
        const int64_t col0 = bj * kBlock + h * kHalf;
        if (col0 >= c) continue;  // all-padding columns
        const double* a_blk = panel + bi * stride_blk;
        const double* b_blk = panel + bj * stride_blk + h * kHalf;
        for (int64_t r0 = 0; r0 < kBlock; r0 += kRows) {
          const int64_t row0 = bi * kBlock + r0;
          if (row0 >= c) break;
          for (int64_t c0 = 0; c0 < kHalf; c0 += kCols) {
            const int64_t colj = col0 + c0;
            if (colj >= c) break;
            sub_tile(a_blk + r0, b_blk + c0, kc, tile);
            const int64_t nr = std::min<int64_t>(kRows, c - row0);
            const int64_t nc = std::min<int64_t>(kCols, c - colj);
            for (int64_t i = 0; i < nr; ++i) {
              double* grow = g + (row0 + i) * ldg + colj;
              for (int64_t j = 0; j < nc; ++j) grow[j] += tile[j * kRows + i];
            }
          }
        }
      }
    }
  }
}

}  // namespace delve_fast
