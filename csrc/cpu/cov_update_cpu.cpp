// CPU kernel of delve_fast::cov_update_.
//
// The batch x is read through its (N, C, S) strides in cache-sized tiles of
// samples. Each tile is cast to float64, shifted by a reference vector and
// packed into a panel; a triangular micro-kernel adds panel^T * panel into the
// upper triangle of a Gram accumulator. No permuted or full-size float64 copy of
// the batch is ever made. The shifted sums then give the batch's centred
// moments, which are merged into the running state (Chan, Golub & LeVeque).
//
// A batch holding a NaN or an Inf is left out, and the state keeps every bit:
// such a value makes its feature's batch sum non-finite, so the O(C) check of
// the sums decides, and every path decides before its first write to the
// state (see accumulate_shifted).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/gram_kernel.h"
#include "delve_fast.h"

namespace delve_fast {
namespace {

// Samples per tile. One 16-feature block of a tile (kTile * 16 * 8 bytes)
// stays in L1 while the micro-kernel sweeps it, and the accumulator traffic
// per tile is small next to its flops. In mixed precision this is also the
// longest run a float32 sum covers before reaching float64 (docs/precision.md).
constexpr int64_t kTile = 256;
// Several tiles are packed in one pass when they fit in this many bytes (well
// inside L2): the packer then reads longer runs of each feature, which the
// hardware prefetcher streams better.
constexpr int64_t kPackedBytes = 512 << 10;
constexpr int64_t kMaxPackTiles = 4;
// Shared panels are capped so huge feature counts still tile in bounded memory.
constexpr int64_t kSharedPanelBytes = 32LL << 20;
// Matrices up to this many entries are merged and mirrored on one thread.
constexpr int64_t kSerialMergeEntries = 128 * 128;
// Fewest tiles per thread for which splitting the samples between threads
// beats sharing each tile's panel (measured at C = 512, K = 1024 and 4096).
constexpr int64_t kMinTilesPerThread = 3;
// Cap on per-thread private Gram accumulators before switching to a shared one.
constexpr int64_t kPrivateGramBytes = 32 * 1024 * 1024;

// A buffer aligned to a cache line, so the micro-kernel's 64-byte vector
// loads and the packers' stores never straddle two lines (malloc only promises
// 16 bytes, and large blocks sit 16 bytes past a page). Left uninitialised:
// the packers write every element of a panel, padding included.
template <typename P>
class AlignedBuffer {
 public:
  explicit AlignedBuffer(int64_t n) {
    const size_t bytes = (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(P) + 63) / 64 * 64;
    ptr_ = static_cast<P*>(std::aligned_alloc(64, bytes));
    TORCH_CHECK(ptr_ != nullptr, "cov_update_: could not allocate a ", bytes, "-byte tile buffer");
  }
  ~AlignedBuffer() { std::free(ptr_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  P* data() const { return ptr_; }

 private:
  P* ptr_;
};

struct BatchView {
  int64_t n, c, s, k;  // k = n * s samples
  int64_t sn, sc, ss;  // element strides
  int64_t nblk, cpad;  // feature blocks and padded feature count
};

template <typename scalar_t>
inline double at_sample(const scalar_t* base, const BatchView& v, int64_t sample, int64_t ch) {
  const int64_t n = sample / v.s, s = sample - n * v.s;
  return static_cast<double>(base[n * v.sn + s * v.ss + ch * v.sc]);
}

// Packs samples [k0, k0 + kc) minus shift into panel (layout in gram_kernel.h)
// and adds the shifted values into sums[0..c).
template <typename scalar_t, typename P>
void pack_panel(const scalar_t* base, const BatchView& v, const double* shift, int64_t k0, int64_t kc, P* panel,
                double* sums) {
  if (v.ss == 1 && v.s >= 8) {
    // Each feature's samples are contiguous runs (NCHW): transpose 8x8 tiles.
    select_pack_runs<scalar_t, P>()(base, v.sn, v.sc, v.s, v.c, k0, kc, shift, panel, sums);
    return;
  }
  // Features of one sample are close together (channels_last, Linear rows,
  // tokens) or the runs are too short to pay off: walk sample by sample.
  select_pack_rows<scalar_t, P>()(base, v.sn, v.ss, v.sc, v.s, v.c, k0, kc, shift, panel, sums);
}

// Packs feature blocks [b0, b1) only: a block range of a panel is laid out
// exactly like the panel of a batch restricted to those features.
template <typename scalar_t, typename P>
void pack_panel_blocks(const scalar_t* base, const BatchView& v, const double* shift, int64_t k0, int64_t kc, P* panel,
                       double* sums, int64_t b0, int64_t b1) {
  const int64_t ch0 = b0 * kBlock;
  BatchView sub = v;
  sub.c = std::min(v.c, b1 * kBlock) - ch0;
  sub.nblk = b1 - b0;
  sub.cpad = sub.nblk * kBlock;
  pack_panel(base + ch0 * v.sc, sub, shift + ch0, k0, kc, panel + b0 * kc * kBlock, sums + ch0);
}

template <typename scalar_t>
void initial_shift(const scalar_t* base, const BatchView& v, double* shift) {
  const int64_t m = std::min(v.k, kShiftSamples);
  std::fill(shift, shift + v.c, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t ch = 0; ch < v.c; ++ch) shift[ch] += at_sample(base, v, i, ch);
  for (int64_t ch = 0; ch < v.c; ++ch) shift[ch] /= static_cast<double>(m);
}

// Whether v[0..n) are all finite. A NaN or an Inf anywhere in a feature's
// samples makes that feature's (shifted) batch sum NaN or infinite, so this
// O(C) check of the sums finds every non-finite batch.
inline bool all_finite(const double* v, int64_t n) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= std::isfinite(v[i]);
  return ok;
}

// Whether any of len values p[0], p[stride], ... is a NaN or an Inf. v - v is
// 0 for a finite v and NaN otherwise; the flags are OR-ed (an integer
// reduction, so the loop vectorises without reordering float sums). Values are
// read in their own precision (float for the 16-bit types).
template <typename scalar_t>
inline bool run_has_nonfinite(const scalar_t* p, int64_t len, int64_t stride) {
  using F = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  int bad = 0;
  if (stride == 1) {
    for (int64_t i = 0; i < len; ++i) {
      const F z = static_cast<F>(p[i]) - static_cast<F>(p[i]);
      bad |= z != z;
    }
  } else {
    for (int64_t i = 0; i < len; ++i) {
      const F z = static_cast<F>(p[i * stride]) - static_cast<F>(p[i * stride]);
      bad |= z != z;
    }
  }
  return bad != 0;
}

// Whether the batch holds no NaN or Inf, by one read of every value: used only
// where the Gram is written before the batch sums are complete (shared panels
// over several tiles, which means many features, so this pass costs about 1/C
// of the Gram's flops). Runs along the contiguous axis.
template <typename scalar_t>
bool batch_is_finite(const scalar_t* base, const BatchView& v) {
  std::atomic<bool> ok{true};
  const int64_t per_n = std::max<int64_t>(1, v.c * v.s);
  const bool runs_along_s = v.ss == 1 || (v.sc != 1 && v.s >= v.c);
  at::parallel_for(0, v.n, std::max<int64_t>(1, (1 << 16) / per_n), [&](int64_t n0, int64_t n1) {
    bool bad = false;
    for (int64_t n = n0; n < n1 && !bad; ++n) {
      const scalar_t* img = base + n * v.sn;
      if (runs_along_s) {
        for (int64_t ch = 0; ch < v.c; ++ch) bad |= run_has_nonfinite(img + ch * v.sc, v.s, v.ss);
      } else {
        for (int64_t s = 0; s < v.s; ++s) bad |= run_has_nonfinite(img + s * v.ss, v.c, v.sc);
      }
    }
    if (bad) ok.store(false, std::memory_order_relaxed);
  });
  return ok.load();
}

// Spans of a prefetch list are cut at this size, so a list can be shared out
// between threads.
constexpr int64_t kSpanBytes = 16 << 10;
// Tiles whose features are scattered in memory would need a span per value;
// past this many values they are not prefetched.
constexpr int64_t kMaxScatteredValues = 1 << 16;

// Appends [p, p + nbytes), widened to whole cache lines, to spans, extending
// the last span when the two touch.
inline void add_span(std::vector<Span>& spans, const void* p, int64_t nbytes) {
  const uintptr_t lo = reinterpret_cast<uintptr_t>(p) & ~uintptr_t{63};
  const uintptr_t hi = reinterpret_cast<uintptr_t>(p) + static_cast<uintptr_t>(nbytes);
  const char* begin = reinterpret_cast<const char*>(lo);
  const char* end = reinterpret_cast<const char*>(hi);
  if (!spans.empty() && begin >= spans.back().begin && begin <= spans.back().end &&
      end - spans.back().begin <= kSpanBytes) {
    spans.back().end = std::max(spans.back().end, end);
    return;
  }
  while (end - begin > kSpanBytes) {
    spans.push_back({begin, begin + kSpanBytes});
    begin += kSpanBytes;
  }
  spans.push_back({begin, end});
}

// The memory the packer reads for samples [k0, k0 + kc), as spans in reading order.
template <typename scalar_t>
void tile_spans(const scalar_t* base, const BatchView& v, int64_t k0, int64_t kc, std::vector<Span>& spans) {
  spans.clear();
  constexpr int64_t es = sizeof(scalar_t);
  int64_t n = k0 / v.s, s = k0 - n * v.s, left = kc;
  if (v.sc == 1) {
    // A sample's features are contiguous (channels_last, Linear, tokens).
    const bool back_to_back = v.s == 1 || v.ss == v.c;
    while (left > 0) {
      const int64_t len = std::min(left, v.s - s);
      if (back_to_back) {
        add_span(spans, base + n * v.sn + s * v.ss, len * v.c * es);
      } else {
        for (int64_t i = 0; i < len; ++i) add_span(spans, base + n * v.sn + (s + i) * v.ss, v.c * es);
      }
      left -= len;
      s = 0;
      ++n;
    }
    return;
  }
  if (v.ss == 1) {
    // Each feature's samples are runs within an image (NCHW).
    while (left > 0) {
      const int64_t len = std::min(left, v.s - s);
      if (len == v.s && v.sc == v.s) {
        // A whole image of back-to-back feature runs is one range: one call
        // instead of C keeps this serial step short when images are small.
        add_span(spans, base + n * v.sn, v.c * v.s * es);
      } else {
        for (int64_t ch = 0; ch < v.c; ++ch) add_span(spans, base + n * v.sn + ch * v.sc + s, len * es);
      }
      left -= len;
      s = 0;
      ++n;
    }
    return;
  }
  if (kc * v.c > kMaxScatteredValues) return;
  for (; left > 0; --left) {
    const scalar_t* row = base + n * v.sn + s * v.ss;
    for (int64_t ch = 0; ch < v.c; ++ch) add_span(spans, row + ch * v.sc, es);
    if (++s == v.s) {
      s = 0;
      ++n;
    }
  }
}

// A cursor at the first line of spans[0..n).
PrefetchCursor make_prefetch_cursor(const Span* spans, int64_t n) {
  PrefetchCursor cur;
  if (n > 0) {
    cur.next = spans + 1;
    cur.last = spans + n;
    cur.line = spans[0].begin;
    cur.end = spans[0].end;
  }
  return cur;
}

// Gram tasks (bi, bj, n) over the upper triangle of feature blocks (see
// GramFn), grouped by chunks of column blocks small enough to stay in L2
// while every row block passes over them. Float panels take column blocks two
// at a time, which their micro-kernel computes as one wider tile.
template <typename P>
std::vector<int32_t> block_tasks(int64_t nblk, int64_t kc) {
  constexpr int64_t col_step = std::is_same_v<P, float> ? 2 : 1;
  const int64_t chunk = std::max<int64_t>(1, (1 << 20) / (kc * kBlock * static_cast<int64_t>(sizeof(P))));
  std::vector<int32_t> tasks;
  tasks.reserve(3 * nblk * (nblk + 1) / 2);
  for (int64_t j0 = 0; j0 < nblk; j0 += chunk) {
    const int64_t j1 = std::min(nblk, j0 + chunk);
    for (int64_t bi = 0; bi < j1; ++bi)
      for (int64_t bj = std::max(bi, j0); bj < j1; bj += col_step) {
        tasks.push_back(static_cast<int32_t>(bi));
        tasks.push_back(static_cast<int32_t>(bj));
        tasks.push_back(static_cast<int32_t>(std::min(col_step, j1 - bj)));
      }
  }
  return tasks;
}

// The terms that fold a batch into the running state (Chan, Golub & LeVeque).
// g holds m2_old + sum (x - shift)(x - shift)^T. With d the batch mean minus
// the shift, the batch's centred Gram is that sum minus k d d^T; merging adds
// w delta delta^T with delta = batch mean - old mean and w = count k / total.
struct Merge {
  std::vector<double> d, delta;
  double w = 0.0, k = 0.0;

  void prepare(const double* sums, const double* shift, const double* mu, int64_t c, int64_t count, int64_t samples) {
    k = static_cast<double>(samples);
    w = static_cast<double>(count) * k / (static_cast<double>(count) + k);
    d.resize(c);
    delta.resize(c);
    for (int64_t i = 0; i < c; ++i) {
      d[i] = sums[i] / k;
      delta[i] = (shift[i] + d[i]) - mu[i];
    }
  }
  GramEpilogue epilogue() const { return {delta.data(), d.data(), w, k}; }
};

// How far accumulate_shifted got.
struct Accumulated {
  // The batch holds a NaN or an Inf: g was not written and must not be merged.
  bool skipped = false;
  // The Gram's epilogue already merged the batch and mirrored g.
  bool merged = false;
  // Per-thread Gram sums (upper triangle, ld = c) still to be added to g.
  std::vector<std::vector<double>> partials;
};

// Adds the shifted Gram of every sample into g (upper triangle, ld = c) and the
// shifted sums into sums. Where the last tile is shared between threads, the
// merge is also done there (merge is prepared from the old mean mu and count).
//
// A non-finite batch is found before g is first written, on every path: split
// samples accumulate into private buffers only, and the caller checks the sums
// before merging them; a single shared tile is packed (sums complete) before
// its Gram; several shared tiles are checked by batch_is_finite first. The
// private buffer of thread 0 (one C x C zero-fill and read) is what a skipped
// batch costs the split path; no backup of the state is ever taken.
template <typename scalar_t, typename P>
Accumulated accumulate_shifted(const scalar_t* base, const BatchView& v, const double* shift, const double* mu,
                               int64_t count, double* g, double* sums, Merge& merge) {
  const GramFn<P> gram = select_gram_kernel<P>();
  const int64_t nthreads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t gram_bytes = v.c * v.c * static_cast<int64_t>(sizeof(double));
  const int64_t ntiles = (v.k + kTile - 1) / kTile;
  // Splitting the samples needs no synchronisation per tile, so it is preferred
  // whenever each thread gets enough tiles and the private accumulators stay
  // small. With only a tile or two each, the private accumulators and the
  // unprefetched first tile of every thread cost more than sharing the panel.
  const bool split_samples = (nthreads == 1 && gram_bytes <= kPrivateGramBytes) ||
                             (ntiles >= kMinTilesPerThread * nthreads && nthreads * gram_bytes <= kPrivateGramBytes);
  if (split_samples) {
    // Few features, many samples: each thread owns a range of tiles and a
    // private accumulator (g is left alone until the sums are known finite).
    const std::vector<int32_t> tasks = block_tasks<P>(v.nblk, kTile);
    const int64_t ntasks = static_cast<int64_t>(tasks.size()) / 3;
    // Pack several tiles at once when they fit in L2: the packer then reads
    // longer runs of each feature, which the hardware prefetcher streams well.
    const int64_t pack_tiles =
        std::clamp<int64_t>(kPackedBytes / (kTile * v.cpad * static_cast<int64_t>(sizeof(P))), 1, kMaxPackTiles);
    std::vector<std::vector<double>> priv_g(nthreads), priv_s(nthreads);
    at::parallel_for(0, nthreads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t tile_begin = ntiles * t / nthreads, tile_end = ntiles * (t + 1) / nthreads;
        if (tile_begin == tile_end) continue;
        priv_g[t].assign(v.c * v.c, 0.0);
        double* gt = priv_g[t].data();
        priv_s[t].assign(v.c, 0.0);
        AlignedBuffer<P> panel(pack_tiles * kTile * v.cpad);
        std::vector<Span> next_spans;
        for (int64_t tile = tile_begin; tile < tile_end; tile += pack_tiles) {
          const int64_t k0 = tile * kTile;
          const int64_t kp = std::min(std::min(tile_end - tile, pack_tiles) * kTile, v.k - k0);
          pack_panel(base, v, shift, k0, kp, panel.data(), priv_s[t].data());
          const int64_t next = tile + pack_tiles;
          next_spans.clear();
          if (next < tile_end) {
            const int64_t next_k0 = next * kTile;
            tile_spans(base, v, next_k0, std::min(std::min(tile_end - next, pack_tiles) * kTile, v.k - next_k0),
                       next_spans);
          }
          PrefetchCursor cursor = make_prefetch_cursor(next_spans.data(), static_cast<int64_t>(next_spans.size()));
          for (int64_t kk = 0; kk < kp; kk += kTile)
            gram(panel.data() + kk * kBlock, std::min(kTile, kp - kk), kp, v.c, gt, v.c, tasks.data(), ntasks, &cursor,
                 nullptr);
        }
      }
    });
    for (auto& ps : priv_s)
      if (!ps.empty())
        for (int64_t ch = 0; ch < v.c; ++ch) sums[ch] += ps[ch];
    Accumulated out;
    out.skipped = !all_finite(sums, v.c);
    for (auto& pg : priv_g)
      if (!pg.empty()) out.partials.push_back(std::move(pg));
    return out;
  }
  // Many features: share one panel per tile and split the triangle's block
  // tasks. Tiles shrink below kTile only where one panel would exceed
  // kSharedPanelBytes.
  const int64_t kc_big = std::clamp<int64_t>(kSharedPanelBytes / (v.cpad * 8) / 8 * 8, 16, kTile);
  const std::vector<int32_t> tasks = block_tasks<P>(v.nblk, kc_big);
  const int64_t ntasks = static_cast<int64_t>(tasks.size()) / 3;
  const bool one_tile = v.k <= kc_big;
  if (!one_tile && !batch_is_finite(base, v)) {
    Accumulated out;
    out.skipped = true;
    return out;
  }
  AlignedBuffer<P> panel(std::min(kc_big, v.k) * v.cpad);
  std::vector<Span> next_spans;
  for (int64_t k0 = 0; k0 < v.k; k0 += kc_big) {
    const int64_t kc = std::min(kc_big, v.k - k0);
    at::parallel_for(0, v.nblk, 1, [&](int64_t b0, int64_t b1) {
      pack_panel_blocks(base, v, shift, k0, kc, panel.data(), sums, b0, b1);
    });
    next_spans.clear();
    if (k0 + kc < v.k) tile_spans(base, v, k0 + kc, std::min(kc_big, v.k - k0 - kc), next_spans);
    const int64_t nspans = static_cast<int64_t>(next_spans.size());
    // Every sum is known once the last tile is packed: its Gram can finish the merge.
    const bool last = k0 + kc == v.k;
    if (one_tile && !all_finite(sums, v.c)) {
      // Packed, but no Gram written yet: the state is untouched.
      Accumulated out;
      out.skipped = true;
      return out;
    }
    if (last) merge.prepare(sums, shift, mu, v.c, count, v.k);
    const GramEpilogue epilogue = merge.epilogue();
    at::parallel_for(0, ntasks, 1, [&](int64_t p0, int64_t p1) {
      // Each thread prefetches the share of the next tile that matches its share of the tasks.
      const int64_t s0 = nspans * p0 / ntasks, s1 = nspans * p1 / ntasks;
      PrefetchCursor cursor = make_prefetch_cursor(next_spans.data() + s0, s1 - s0);
      gram(panel.data(), kc, kc, v.c, g, v.c, tasks.data() + 3 * p0, p1 - p0, &cursor, last ? &epilogue : nullptr);
    });
  }
  Accumulated out;
  out.merged = true;
  return out;
}

// Adds the per-thread partial Gram sums and the merge terms to the upper
// triangle of g, then mirrors it into the lower triangle.
void merge_and_mirror(double* g, int64_t c, const Merge& merge, const std::vector<std::vector<double>>& partials) {
  std::vector<const double*> parts;
  for (const auto& p : partials) parts.push_back(p.data());
  // Tiles of 64 x 64 keep both the row reads and the transposed writes of the
  // mirror inside a few pages; a plain column walk thrashes the TLB at large C.
  constexpr int64_t kMergeTile = 64;
  const int64_t ntile = (c + kMergeTile - 1) / kMergeTile;
  const double w = merge.w, k = merge.k;
  // A small matrix is merged by the calling thread alone: waking the pool for a
  // few microseconds of work costs more than the work (grain = all tiles).
  const int64_t grain = c * c <= kSerialMergeEntries ? ntile : 1;
  at::parallel_for(0, ntile, grain, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      // Row tile ti has ntile - ti column tiles of work. Interleave long and
      // short rows so that contiguous ranges of q carry equal work.
      const int64_t ti = (q % 2 == 0) ? q / 2 : ntile - 1 - q / 2;
      const int64_t i0 = ti * kMergeTile, i1 = std::min(c, i0 + kMergeTile);
      for (int64_t j0 = i0; j0 < c; j0 += kMergeTile) {
        const int64_t j1 = std::min(c, j0 + kMergeTile);
        const double* __restrict dl = merge.delta.data();
        const double* __restrict dd = merge.d.data();
        for (int64_t i = i0; i < i1; ++i) {
          double* __restrict row = g + i * c;
          const double wi = w * dl[i], ki = k * dd[i];
          const int64_t jb = std::max(i, j0);
          for (const double* part : parts) {
            const double* __restrict prow = part + i * c;
            for (int64_t j = jb; j < j1; ++j) row[j] += prow[j];
          }
          for (int64_t j = jb; j < j1; ++j) row[j] += wi * dl[j] - ki * dd[j];
        }
        // Write the lower tile row by row (contiguous stores); the upper tile
        // it reads was just updated and is still in L1.
        for (int64_t j = j0; j < j1; ++j) {
          double* __restrict lower = g + j * c;
          const int64_t iend = std::min(i1, j);
          for (int64_t i = i0; i < iend; ++i) lower[i] = g[i * c + j];
        }
      }
    }
  });
}

void cov_update_cpu(at::Tensor mean, at::Tensor m2, at::Tensor counts, const at::Tensor& x, bool mixed) {
  const int64_t c = check_cov_update_args(mean, m2, counts, x);
  double* cnt = counts.data_ptr<double>();
  TORCH_CHECK(cnt[0] >= 0.0 && cnt[0] == std::floor(cnt[0]) && cnt[0] <= 9007199254740992.0,
              "cov_update_: counts[0] (samples) must be a whole number in [0, 2^53], got ", cnt[0]);
  const int64_t count = static_cast<int64_t>(cnt[0]);
  BatchView v{x.size(0), c, x.size(2), x.size(0) * x.size(2), x.stride(0), x.stride(1), x.stride(2), 0, 0};
  if (v.k == 0) return;
  if (c == 0) {
    cnt[0] += static_cast<double>(v.k);  // samples of no feature: nothing can be non-finite
    return;
  }
  v.nblk = (c + kBlock - 1) / kBlock;
  v.cpad = v.nblk * kBlock;

  double* mu = mean.data_ptr<double>();
  double* g = m2.data_ptr<double>();
  // Shift by the running mean once there is one: the batch is then already
  // close to centred and no digits are lost to a large common offset.
  std::vector<double> shift(c), sums(c, 0.0);
  Merge merge;
  Accumulated acc;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cov_update_cpu", [&] {
    const scalar_t* base = x.const_data_ptr<scalar_t>();
    if (count > 0) {
      std::copy(mu, mu + c, shift.begin());
    } else {
      initial_shift(base, v, shift.data());
    }
    // mixed: each tile's product in float32 on the shifted (nearly centred)
    // data, every tile's sum accumulated in float64.
    if (mixed) {
      acc = accumulate_shifted<scalar_t, float>(base, v, shift.data(), mu, count, g, sums.data(), merge);
    } else {
      acc = accumulate_shifted<scalar_t, double>(base, v, shift.data(), mu, count, g, sums.data(), merge);
    }
  });
  if (acc.skipped) {
    cnt[1] += 1.0;
    return;
  }
  if (!acc.merged) {
    merge.prepare(sums.data(), shift.data(), mu, c, count, v.k);
    merge_and_mirror(g, c, merge, acc.partials);
  }
  const double share = merge.k / (static_cast<double>(count) + merge.k);
  for (int64_t i = 0; i < c; ++i) mu[i] += merge.delta[i] * share;
  cnt[0] += static_cast<double>(v.k);
}

}  // namespace
}  // namespace delve_fast

TORCH_LIBRARY_IMPL(delve_fast, CPU, m) { m.impl("cov_update_", &delve_fast::cov_update_cpu); }
