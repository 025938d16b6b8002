// Body of the Gram micro-kernel, compiled once per instruction set by the
// gram_kernel_<isa>.cpp files (each built with its own -m flags). Define
// DELVE_FAST_GRAM_FN, DELVE_FAST_SUB_ROWS, DELVE_FAST_SUB_COLS and
// DELVE_FAST_PACK_FN before including.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

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

void DELVE_FAST_GRAM_FN(const double* panel, int64_t kc, int64_t c, double* g, int64_t ldg, const int32_t* pairs,
                        int64_t npairs) {
  const int64_t stride_blk = kc * kBlock;
  double tile[kRows * kCols];
  for (int64_t p = 0; p < npairs; ++p) {
    const int64_t bi = pairs[2 * p], bj = pairs[2 * p + 1];
    const double* a_blk = panel + bi * stride_blk;
    const int64_t col_end = std::min<int64_t>(c, (bj + 1) * kBlock);
    for (int64_t col0 = bj * kBlock; col0 < col_end; col0 += kCols) {
      const double* b_sub = panel + bj * stride_blk + (col0 - bj * kBlock);
      const int64_t nc = std::min<int64_t>(kCols, c - col0);
      for (int64_t r0 = 0; r0 < kBlock; r0 += kRows) {
        const int64_t row0 = bi * kBlock + r0;
        if (row0 >= c) break;
        sub_tile(a_blk + r0, b_sub, kc, tile);
        const int64_t nr = std::min<int64_t>(kRows, c - row0);
        for (int64_t i = 0; i < nr; ++i) {
          double* grow = g + (row0 + i) * ldg + col0;
          for (int64_t j = 0; j < nc; ++j) grow[j] += tile[j * kRows + i];
        }
      }
    }
  }
}

namespace {

typedef int64_t ivec_t __attribute__((vector_size(8 * sizeof(int64_t))));

template <typename T>
inline vec_t load8_as_double(const T* p) {
  if constexpr (std::is_same_v<T, double>) {
    return load_vec(p);
  } else if constexpr (std::is_same_v<T, float>) {
    typedef float fvec_t __attribute__((vector_size(8 * sizeof(float))));
    fvec_t f;
    std::memcpy(&f, p, sizeof(f));
    return __builtin_convertvector(f, vec_t);
  } else {
    double tmp[8];
    for (int i = 0; i < 8; ++i) tmp[i] = static_cast<double>(static_cast<float>(p[i]));
    return load_vec(tmp);
  }
}

// rows[i][j] = feature i, sample j  ->  rows[j][i] = sample j, feature i.
inline void transpose8(vec_t r[8]) {
  const ivec_t lo1{0, 8, 2, 10, 4, 12, 6, 14}, hi1{1, 9, 3, 11, 5, 13, 7, 15};
  const ivec_t lo2{0, 1, 8, 9, 4, 5, 12, 13}, hi2{2, 3, 10, 11, 6, 7, 14, 15};
  const ivec_t lo4{0, 1, 2, 3, 8, 9, 10, 11}, hi4{4, 5, 6, 7, 12, 13, 14, 15};
  vec_t t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shuffle(r[i], r[i + 1], lo1);
    t[i + 1] = __builtin_shuffle(r[i], r[i + 1], hi1);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = __builtin_shuffle(t[i], t[i + 2], lo2);
    u[i + 2] = __builtin_shuffle(t[i], t[i + 2], hi2);
    u[i + 1] = __builtin_shuffle(t[i + 1], t[i + 3], lo2);
    u[i + 3] = __builtin_shuffle(t[i + 1], t[i + 3], hi2);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = __builtin_shuffle(u[i], u[i + 4], lo4);
    r[i + 4] = __builtin_shuffle(u[i], u[i + 4], hi4);
  }
}

}  // namespace

template <typename T>
void DELVE_FAST_PACK_FN(const T* base, int64_t sn, int64_t sc, int64_t s_len, int64_t c, int64_t k0, int64_t kc,
                        const double* shift, double* panel, double* sums) {
  const int64_t stride_blk = kc * kBlock;
  const int64_t ngroups = (c + 7) / 8;  // groups of 8 features; two per block
  for (int64_t grp = 0; grp < ngroups; ++grp) {
    const int64_t ch0 = grp * 8;
    const int64_t nch = std::min<int64_t>(8, c - ch0);
    double* dst = panel + (ch0 / kBlock) * stride_blk + (ch0 % kBlock);
    vec_t sh, acc = vec_t{} * 0.0;
    for (int i = 0; i < 8; ++i) sh[i] = i < nch ? shift[ch0 + i] : 0.0;
    int64_t n = k0 / s_len, s = k0 - n * s_len;
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8) {
      vec_t r[8];
      if (s + 8 <= s_len) {
        const T* src = base + n * sn + ch0 * sc + s;
        for (int i = 0; i < 8; ++i) r[i] = i < nch ? load8_as_double(src + i * sc) : vec_t{} * 0.0;
        s += 8;
      } else {
        // The eight samples straddle images: gather them one by one.
        double tmp[8][8];
        for (int j = 0; j < 8; ++j) {
          for (int i = 0; i < 8; ++i)
            tmp[i][j] = i < nch ? static_cast<double>(base[n * sn + (ch0 + i) * sc + s]) : 0.0;
          if (++s == s_len) {
            s = 0;
            ++n;
          }
        }
        for (int i = 0; i < 8; ++i) r[i] = load_vec(tmp[i]);
      }
      if (s == s_len) {
        s = 0;
        ++n;
      }
      transpose8(r);
      for (int j = 0; j < 8; ++j) {
        const vec_t v = r[j] - sh;
        acc += v;
        std::memcpy(dst + (k + j) * kBlock, &v, sizeof(v));
      }
    }
    for (; k < kc; ++k) {
      double row[8];
      for (int i = 0; i < 8; ++i)
        row[i] = i < nch ? static_cast<double>(base[n * sn + (ch0 + i) * sc + s]) - sh[i] : 0.0;
      if (++s == s_len) {
        s = 0;
        ++n;
      }
      vec_t v = load_vec(row);
      acc += v;
      std::memcpy(dst + k * kBlock, &v, sizeof(v));
    }
    for (int i = 0; i < nch; ++i) sums[ch0 + i] += acc[i];
  }
  if (ngroups % 2 == 1) {
    // The last block's upper half holds no features: keep it zero.
    double* pad = panel + (ngroups / 2) * stride_blk + 8;
    for (int64_t k = 0; k < kc; ++k) std::memset(pad + k * kBlock, 0, 8 * sizeof(double));
  }
}

template void DELVE_FAST_PACK_FN<float>(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                        const double*, double*, double*);
template void DELVE_FAST_PACK_FN<double>(const double*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                         const double*, double*, double*);
template void DELVE_FAST_PACK_FN<c10::Half>(const c10::Half*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                            const double*, double*, double*);
template void DELVE_FAST_PACK_FN<c10::BFloat16>(const c10::BFloat16*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                                int64_t, const double*, double*, double*);

}  // namespace delve_fast
