// Bodies of the Gram micro-kernel and the two packers, compiled once per
// instruction set: each gram_kernel_<isa>.cpp includes this header under its
// own -m flags and defines delve_fast::<isa>::gram_pairs / pack_runs /
// pack_rows on top of gram_pairs_impl, pack_runs_impl and pack_rows_impl.
//
// Everything here has internal linkage (an anonymous namespace), so every ISA's
// translation unit keeps its own copy: shared inline functions compiled with
// different -m flags would be an ODR hazard (the linker could keep the AVX-512
// copy for a CPU without AVX-512).
//
// The register sub-tile of each panel precision comes from a Tiles type:
//   kF64Rows, kF64Cols   float64 sub-tile: ROWS is the extent held in vectors,
//   kF32Rows, kF32Cols   float32 sub-tile  COLS the extent that is broadcast
//   kF32PairRows         rows of the float32 tile over two column blocks (0: none)
// (The kernel lays its vectors along the columns of g, so ROWS counts columns of g.)
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/gram_kernel.h"

namespace delve_fast {
namespace {

// 64-byte vectors; GCC splits them into whatever registers the target has.
template <typename P>
struct Vec;
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(64)));
  static constexpr int kLanes = 8;
};
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(64)));
  static constexpr int kLanes = 16;
};

template <typename P>
inline typename Vec<P>::type load_vec(const P* p) {
  typename Vec<P>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Samples between two prefetches: one line per few samples keeps the misses
// trickling out instead of filling every line-fill buffer at once.
constexpr int64_t kSamplesPerPrefetch = 4;

// Prefetches the cursor's next line into L2 and moves past it.
inline void prefetch_step(PrefetchCursor& cur) {
  __builtin_prefetch(cur.line, 0, 2);
  cur.line += 64;
  if (cur.line >= cur.end) {
    if (cur.next < cur.last) {
      cur.line = cur.next->begin;
      cur.end = cur.next->end;
      ++cur.next;
    } else {
      cur.line = nullptr;
    }
  }
}

using dvec = Vec<double>::type;
typedef int64_t ivec __attribute__((vector_size(64)));
typedef float fvec8 __attribute__((vector_size(32)));

template <typename T>
inline dvec load8_as_double(const T* p) {
  if constexpr (std::is_same_v<T, double>) {
    return load_vec(p);
  } else if constexpr (std::is_same_v<T, float>) {
#ifdef __AVX512F__
    // GCC lowers __builtin_convertvector to two 4-wide conversions plus an
    // insert; the intrinsic is one vcvtps2pd.
    dvec v;
    const __m512d d = _mm512_cvtps_pd(_mm256_loadu_ps(p));
    std::memcpy(&v, &d, sizeof(v));
    return v;
#else
    fvec8 f;
    std::memcpy(&f, p, sizeof(f));
    return __builtin_convertvector(f, dvec);
#endif
  } else {
    double tmp[8];
    for (int i = 0; i < 8; ++i) tmp[i] = static_cast<double>(static_cast<float>(p[i]));
    return load_vec(tmp);
  }
}

template <typename P>
inline void store8(P* dst, const dvec& v) {
  if constexpr (std::is_same_v<P, double>) {
    std::memcpy(dst, &v, sizeof(v));
  } else {
#ifdef __AVX512F__
    __m512d d;
    std::memcpy(&d, &v, sizeof(d));
    _mm256_storeu_ps(dst, _mm512_cvtpd_ps(d));
#else
    const fvec8 f = __builtin_convertvector(v, fvec8);
    std::memcpy(dst, &f, sizeof(f));
#endif
  }
}

// rows[i][j] = feature i, sample j  ->  rows[j][i] = sample j, feature i.
inline void transpose8(dvec r[8]) {
  const ivec lo1{0, 8, 2, 10, 4, 12, 6, 14}, hi1{1, 9, 3, 11, 5, 13, 7, 15};
  const ivec lo2{0, 1, 8, 9, 4, 5, 12, 13}, hi2{2, 3, 10, 11, 6, 7, 14, 15};
  const ivec lo4{0, 1, 2, 3, 8, 9, 10, 11}, hi4{4, 5, 6, 7, 12, 13, 14, 15};
  dvec t[8], u[8];
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

// Gram accumulators up to this size are assumed to stay in L2 between tiles.
constexpr int64_t kCachedGramBytes = 256 << 10;

// Prefetches the lines holding p[0..n) into L2.
inline void prefetch_span(const double* p, int64_t n) {
  const char* first = reinterpret_cast<const char*>(p);
  const char* last = reinterpret_cast<const char*>(p + n - 1);
  for (const char* q = first; q <= last; q += 64) __builtin_prefetch(q, 1, 2);
  if ((reinterpret_cast<uintptr_t>(first) & 63) > (reinterpret_cast<uintptr_t>(last) & 63))
    __builtin_prefetch(last, 1, 2);
}

// out (column-major kTileRows x kTileCols) = a^T b over kc samples, where a
// and b point into panel blocks (stride kBlock per sample). Row vector r of a
// sample is read at a + r * rstride: the next lanes of the same block, or the
// same lanes of the next block. acc[j][r] holds rows [r * lanes, (r + 1) *
// lanes) of column j. With kPrefetch, pf is stepped every kSamplesPerPrefetch
// samples until it runs out.
template <typename P, int kTileRows, int kTileCols, bool kPrefetch>
inline void sub_tile(const P* __restrict a, int64_t rstride, const P* __restrict b, int64_t kc, P* __restrict out,
                     PrefetchCursor* pf) {
  using V = Vec<P>;
  using vec = typename V::type;
  constexpr int kRowVecs = kTileRows / V::kLanes;
  static_assert(kTileRows % V::kLanes == 0, "sub-tile rows must fill whole vectors");
  vec acc[kTileCols][kRowVecs];
  for (int j = 0; j < kTileCols; ++j)
    for (int r = 0; r < kRowVecs; ++r) acc[j][r] = vec{} * P(0);
  auto sample = [&](int64_t k) __attribute__((always_inline)) {
    vec av[kRowVecs];
    for (int r = 0; r < kRowVecs; ++r) av[r] = load_vec(a + k * kBlock + r * rstride);
    const P* bk = b + k * kBlock;
    for (int j = 0; j < kTileCols; ++j) {
      const P bj = bk[j];
      for (int r = 0; r < kRowVecs; ++r) acc[j][r] += av[r] * bj;
    }
  };
  int64_t k = 0;
  if constexpr (kPrefetch) {
    for (; k + kSamplesPerPrefetch <= kc; k += kSamplesPerPrefetch) {
      for (int64_t u = 0; u < kSamplesPerPrefetch; ++u) sample(k + u);
      if (pf->line != nullptr) prefetch_step(*pf);
    }
  }
  for (; k < kc; ++k) sample(k);
  for (int j = 0; j < kTileCols; ++j)
    for (int r = 0; r < kRowVecs; ++r) std::memcpy(out + j * kTileRows + r * V::kLanes, &acc[j][r], sizeof(vec));
}

// sub_tile with prefetching while the cursor still has lines, without it after.
template <typename P, int kTileRows, int kTileCols>
inline void run_sub_tile(const P* a, int64_t rstride, const P* b, int64_t kc, P* out, PrefetchCursor* pf) {
  if (pf != nullptr && pf->line != nullptr) {
    sub_tile<P, kTileRows, kTileCols, true>(a, rstride, b, kc, out, pf);
  } else {
    sub_tile<P, kTileRows, kTileCols, false>(a, rstride, b, kc, out, pf);
  }
}

// The vector form of store_row_tile's epilogue for a sub-tile of 8 whole rows
// lying strictly above the diagonal (row0 + 8 <= col0) with nc a multiple of
// 8: each 8 x 8 piece is finished row by row, transposed in registers and
// written to the mirror as 8 runs, instead of 64 scalar stores into 8
// different lines.
template <typename P>
inline void finish_and_mirror_rows8(const P* tile, int64_t ld, int64_t nc, int64_t row0, int64_t col0, double* g,
                                    int64_t ldg, const GramEpilogue& e) {
  dvec wi, ki;
  for (int i = 0; i < 8; ++i) {
    wi[i] = e.w * e.delta[row0 + i];
    ki[i] = e.k * e.d[row0 + i];
  }
  for (int64_t j0 = 0; j0 < nc; j0 += 8) {
    const dvec dlj = load_vec(e.delta + col0 + j0), ddj = load_vec(e.d + col0 + j0);
    dvec r[8];
    for (int i = 0; i < 8; ++i) {
      double* grow = g + (row0 + i) * ldg + col0 + j0;
      r[i] = (load_vec(grow) + load8_as_double(tile + i * ld + j0)) + (dlj * wi[i] - ddj * ki[i]);
      std::memcpy(grow, &r[i], sizeof(dvec));
    }
    transpose8(r);
    for (int j = 0; j < 8; ++j) std::memcpy(g + (col0 + j0 + j) * ldg + row0, &r[j], sizeof(dvec));
  }
}

// Adds a finished row-major sub-tile (tile[i * ld + j] is entry (row0 + i,
// col0 + j)) of nr x nc entries into g, or, with an epilogue, finishes those
// entries on or above the diagonal and mirrors them (entries below it are left
// to the mirror). Rows of the tile are rows of g, so the plain case is
// whole-vector adds; a float tile is widened here, each tile's sum going into
// the float64 state.
template <typename P>
inline void store_row_tile(const P* tile, int64_t ld, int64_t nr, int64_t nc, int64_t row0, int64_t col0, double* g,
                           int64_t ldg, const GramEpilogue* epilogue) {
  if (epilogue == nullptr) {
    for (int64_t i = 0; i < nr; ++i) {
      double* __restrict grow = g + (row0 + i) * ldg + col0;
      const P* __restrict t = tile + i * ld;
      for (int64_t j = 0; j < nc; ++j) grow[j] += static_cast<double>(t[j]);
    }
    return;
  }
  if (nr == 8 && nc % 8 == 0 && row0 + 8 <= col0) {
    finish_and_mirror_rows8(tile, ld, nc, row0, col0, g, ldg, *epilogue);
    return;
  }
  const double* __restrict dl = epilogue->delta;
  const double* __restrict dd = epilogue->d;
  for (int64_t i = 0; i < nr; ++i) {
    const int64_t gi = row0 + i;
    double* grow = g + gi * ldg + col0;
    const double wi = epilogue->w * dl[gi], ki = epilogue->k * dd[gi];
    for (int64_t j = std::max<int64_t>(0, gi - col0); j < nc; ++j) {
      const int64_t gj = col0 + j;
      const double val = grow[j] + static_cast<double>(tile[i * ld + j]) + (wi * dl[gj] - ki * dd[gj]);
      grow[j] = val;
      g[gj * ldg + gi] = val;
    }
  }
}

// Asks for the accumulator lines a sub-tile will update (and, when finishing,
// the rows of its mirror) before computing it: after a cold start they come
// from memory, which the sub-tile's few thousand FMAs can hide.
inline void prefetch_sub_tile(double* g, int64_t ldg, int64_t row0, int64_t nr, int64_t col0, int64_t nc, bool mirror) {
  for (int64_t i = 0; i < nr; ++i) prefetch_span(g + (row0 + i) * ldg + col0, nc);
  if (mirror)
    for (int64_t j = 0; j < nc; ++j) prefetch_span(g + (col0 + j) * ldg + row0, nr);
}

// Adds panel^T * panel for the block tasks (see GramFn in gram_kernel.h), with Tiles' register sub-tiles.
template <typename Tiles, typename P>
void gram_pairs_impl(const P* panel, int64_t kc, int64_t ldp, int64_t c, double* g, int64_t ldg, const int32_t* tasks,
                     int64_t ntasks, PrefetchCursor* prefetch, const GramEpilogue* epilogue) {
  constexpr bool kF64 = std::is_same_v<P, double>;
  constexpr int kRows = kF64 ? Tiles::kF64Rows : Tiles::kF32Rows;
  constexpr int kCols = kF64 ? Tiles::kF64Cols : Tiles::kF32Cols;
  constexpr int kHalfRows = kRows / 2;
  static_assert(kBlock % kRows == 0 && kBlock % kCols == 0, "sub-tiles must tile a block");
  constexpr bool kHalfTiles = kHalfRows % Vec<P>::kLanes == 0 && kHalfRows > 0;
  const int64_t stride_blk = ldp * kBlock;
  alignas(64) P tile[2 * kBlock * kBlock];
  // Small accumulators stay in cache between tiles; prefetching them only costs issue slots.
  const bool g_cold = c * c * static_cast<int64_t>(sizeof(double)) > kCachedGramBytes;
  const bool mirror = epilogue != nullptr;

  // Row block bi against column block bj. The vectors run along the columns
  // of g and the row features are broadcast (kRows columns by kCols rows per
  // sub-tile), so each accumulator holds part of one
  // row of g and a sub-tile is added to g with whole-vector loads and stores;
  // the transposed layout cost a scalar pass over every sub-tile.
  auto one_row_block = [&](int64_t bi, int64_t bj) {
    constexpr int kVecCols = kRows, kBcastRows = kCols, kHalfCols = kHalfRows;
    const int64_t col_begin = bj * kBlock;
    for (int64_t r0 = 0; r0 < kBlock; r0 += kBcastRows) {
      const int64_t row0 = bi * kBlock + r0;
      if (row0 >= c) break;
      const int64_t nr = std::min<int64_t>(kBcastRows, c - row0);
      const P* b_sub = panel + bi * stride_blk + r0;
      for (int64_t c0 = 0; c0 < kBlock; c0 += kVecCols) {
        int64_t col0 = col_begin + c0;
        // On a diagonal block, skip sub-tiles wholly left of the diagonal, or
        // the left half of one when that half fills vectors.
        if (bi == bj && col0 + kVecCols <= row0) continue;
        bool half = false;
        if constexpr (kHalfTiles) {
          if (bi == bj && col0 + kHalfCols <= row0) {
            half = true;
            col0 += kHalfCols;
          }
        }
        if (col0 >= c) break;
        const int64_t ncols = half ? kHalfCols : kVecCols;
        const int64_t nc = std::min<int64_t>(ncols, c - col0);
        if (g_cold) prefetch_sub_tile(g, ldg, row0, nr, col0, nc, mirror);
        const P* a_sub = panel + bj * stride_blk + (col0 - col_begin);
        constexpr int64_t rs = Vec<P>::kLanes;
        if (kHalfTiles && half) {
          constexpr int kH = kHalfTiles ? kHalfCols : kVecCols;
          run_sub_tile<P, kH, kBcastRows>(a_sub, rs, b_sub, kc, tile, prefetch);
        } else {
          run_sub_tile<P, kVecCols, kBcastRows>(a_sub, rs, b_sub, kc, tile, prefetch);
        }
        store_row_tile(tile, ncols, nr, nc, row0, col0, g, ldg, epilogue);
      }
    }
  };

  for (int64_t t = 0; t < ntasks; ++t) {
    const int64_t bi = tasks[3 * t], bj = tasks[3 * t + 1], ncb = tasks[3 * t + 2];
    if constexpr (!kF64 && Tiles::kF32PairRows > 0) {
      if (ncb == 2) {
        // Two column blocks side by side are two vectors that share every
        // broadcast row feature: two loads and eight broadcasts feed sixteen
        // FMAs (a 16 x 16 tile is bound by its sixteen broadcast loads), and
        // the sub-tile comes out in rows of g, added with whole-vector ops.
        constexpr int kPairRows = Tiles::kF32PairRows;
        static_assert(kBlock % kPairRows == 0, "pair sub-tiles must tile a block");
        const P* a_cols = panel + bj * stride_blk;
        const int64_t col0 = bj * kBlock;
        const int64_t nc = std::min<int64_t>(2 * kBlock, c - col0);
        for (int64_t r0 = 0; r0 < kBlock; r0 += kPairRows) {
          const int64_t row0 = bi * kBlock + r0;
          if (row0 >= c) break;
          const int64_t nr = std::min<int64_t>(kPairRows, c - row0);
          const P* b_rows = panel + bi * stride_blk + r0;
          if (g_cold) prefetch_sub_tile(g, ldg, row0, nr, col0, nc, mirror);
          run_sub_tile<P, 2 * kBlock, kPairRows>(a_cols, stride_blk, b_rows, kc, tile, prefetch);
          store_row_tile(tile, 2 * kBlock, nr, nc, row0, col0, g, ldg, epilogue);
        }
        continue;
      }
    }
    for (int64_t q = 0; q < ncb; ++q) one_row_block(bi, bj + q);
  }
}

// Packs samples [k0, k0 + kc) of an NCHW-like batch (see PackRunsFn in gram_kernel.h).
template <typename T, typename P>
void pack_runs_impl(const T* base, int64_t sn, int64_t sc, int64_t s_len, int64_t c, int64_t k0, int64_t kc,
                    const double* shift, P* panel, double* sums) {
  const int64_t stride_blk = kc * kBlock;
  const int64_t ngroups = (c + 7) / 8;  // groups of 8 features; two per block
  const dvec zero = dvec{} * 0.0;
  for (int64_t grp = 0; grp < ngroups; ++grp) {
    const int64_t ch0 = grp * 8;
    const int64_t nch = std::min<int64_t>(8, c - ch0);
    P* dst = panel + (ch0 / kBlock) * stride_blk + (ch0 % kBlock);
    dvec sh, acc = zero;
    for (int i = 0; i < 8; ++i) sh[i] = i < nch ? shift[ch0 + i] : 0.0;
    int64_t n = k0 / s_len, s = k0 - n * s_len;
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8) {
      dvec r[8];
      if (s + 8 <= s_len) {
        const T* src = base + n * sn + ch0 * sc + s;
        if (nch == 8) {
          for (int i = 0; i < 8; ++i) r[i] = load8_as_double(src + i * sc);
        } else {
          for (int i = 0; i < 8; ++i) r[i] = i < nch ? load8_as_double(src + i * sc) : zero;
        }
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
        r[j] -= sh;
        store8(dst + (k + j) * kBlock, r[j]);
      }
      // Sums stay in float64 whatever the panel precision. Adding the eight
      // samples as a tree keeps the chain through acc one add long; eight
      // adds in a row made their latency the packer's bottleneck.
      acc += ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    }
    for (; k < kc; ++k) {
      double row[8];
      for (int i = 0; i < 8; ++i)
        row[i] = i < nch ? static_cast<double>(base[n * sn + (ch0 + i) * sc + s]) - sh[i] : 0.0;
      if (++s == s_len) {
        s = 0;
        ++n;
      }
      const dvec v = load_vec(row);
      acc += v;
      store8(dst + k * kBlock, v);
    }
    for (int i = 0; i < nch; ++i) sums[ch0 + i] += acc[i];
  }
  if (ngroups % 2 == 1) {
    // The last block's upper half holds no features: keep it zero.
    P* pad = panel + (ngroups / 2) * stride_blk + 8;
    for (int64_t k = 0; k < kc; ++k) std::memset(pad + k * kBlock, 0, 8 * sizeof(P));
  }
}

// Packs samples [k0, k0 + kc) of a channels_last-like batch (see PackRowsFn in gram_kernel.h).
template <typename T, typename P>
void pack_rows_impl(const T* base, int64_t sn, int64_t ss, int64_t sc, int64_t s_len, int64_t c, int64_t k0, int64_t kc,
                    const double* shift, P* panel, double* sums) {
  const int64_t stride_blk = kc * kBlock;
  const int64_t nblk = (c + kBlock - 1) / kBlock;
  const int64_t full = (sc == 1) ? c / kBlock : 0;  // blocks loaded as two vectors
  const int64_t n0 = k0 / s_len, s0 = k0 - n0 * s_len;
  // One block at a time over all samples: its running sums stay in registers,
  // and the block's rows are read as a steady strided stream.
  for (int64_t b = 0; b < full; ++b) {
    P* dst = panel + b * stride_blk;
    const T* src = base + b * kBlock;
    const dvec sh_lo = load_vec(shift + b * kBlock), sh_hi = load_vec(shift + b * kBlock + 8);
    // Two sums per half, alternating by sample, halve the add-latency chain.
    dvec acc[2][2] = {{sh_lo * 0.0, sh_lo * 0.0}, {sh_lo * 0.0, sh_lo * 0.0}};
    int64_t n = n0, s = s0;
    for (int64_t k = 0; k < kc; ++k) {
      const T* row = src + n * sn + s * ss;
      const dvec lo = load8_as_double(row) - sh_lo;
      const dvec hi = load8_as_double(row + 8) - sh_hi;
      acc[k & 1][0] += lo;
      acc[k & 1][1] += hi;
      store8(dst + k * kBlock, lo);
      store8(dst + k * kBlock + 8, hi);
      if (++s == s_len) {
        s = 0;
        ++n;
      }
    }
    const dvec sum_lo = acc[0][0] + acc[1][0], sum_hi = acc[0][1] + acc[1][1];
    for (int i = 0; i < 8; ++i) {
      sums[b * kBlock + i] += sum_lo[i];
      sums[b * kBlock + 8 + i] += sum_hi[i];
    }
  }
  // Strided features, or the partial last block: one value at a time.
  for (int64_t b = full; b < nblk; ++b) {
    const int64_t ch0 = b * kBlock, nvalid = std::min<int64_t>(kBlock, c - ch0);
    int64_t n = n0, s = s0;
    for (int64_t k = 0; k < kc; ++k) {
      const T* row = base + n * sn + s * ss;
      P* dst = panel + b * stride_blk + k * kBlock;
      for (int64_t t = 0; t < nvalid; ++t) {
        const double val = static_cast<double>(row[(ch0 + t) * sc]) - shift[ch0 + t];
        dst[t] = static_cast<P>(val);
        sums[ch0 + t] += val;
      }
      for (int64_t t = nvalid; t < kBlock; ++t) dst[t] = P(0);
      if (++s == s_len) {
        s = 0;
        ++n;
      }
    }
  }
}

}  // namespace
}  // namespace delve_fast

// Explicit instantiations of the enclosing ISA namespace's gram_pairs, pack_runs
// and pack_rows for every panel precision and input dtype the kernel dispatches
// on; expanded inside that namespace, at the end of each gram_kernel_<isa>.cpp.
#define DELVE_FAST_INSTANTIATE_GRAM_KERNELS                                                                           \
  template void gram_pairs<double>(const double*, int64_t, int64_t, int64_t, double*, int64_t, const int32_t*,        \
                                   int64_t, PrefetchCursor*, const GramEpilogue*);                                    \
  template void gram_pairs<float>(const float*, int64_t, int64_t, int64_t, double*, int64_t, const int32_t*, int64_t, \
                                  PrefetchCursor*, const GramEpilogue*);                                              \
  DELVE_FAST_INSTANTIATE_PACKERS(float)                                                                               \
  DELVE_FAST_INSTANTIATE_PACKERS(double)                                                                              \
  DELVE_FAST_INSTANTIATE_PACKERS(c10::Half)                                                                           \
  DELVE_FAST_INSTANTIATE_PACKERS(c10::BFloat16)
#define DELVE_FAST_INSTANTIATE_PACKERS(T)                                                                           \
  template void pack_runs<T, double>(const T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const double*, \
                                     double*, double*);                                                             \
  template void pack_runs<T, float>(const T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const double*,  \
                                    float*, double*);                                                               \
  template void pack_rows<T, double>(const T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,       \
                                     const double*, double*, double*);                                              \
  template void pack_rows<T, float>(const T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,        \
                                    const double*, float*, double*);
