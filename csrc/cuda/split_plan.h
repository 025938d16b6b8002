// Split plan and workspace layout of the CUDA cov_update_ kernel.
//
// Plain C++ with no CUDA headers: the kernel file includes it for the launch
// geometry and the partial-buffer indexing, and module.cpp compiles it into
// every build (CPU too) so that the tests can check the workspace bound and
// the layout on a machine without a GPU.
//
// The Gram matrix is tiled into kTile x kTile tiles; only the ntiles upper-
// triangle tiles (bi <= bj) are computed. The samples are cut into nsplit
// splits of `chunk` samples each, and each (tile, split) is one block.
//
// Workspace bound (docs/gpu.md):
//   * nsplit == 1 ("direct"): the tiles accumulate straight into the state's
//     m2, so no partial buffer exists and the workspace is (3 + 1) * C float64.
//   * nsplit > 1: each split writes its own packed partial of ntiles tiles
//     (upper tiles only, not a full C x C), and the plan keeps
//     nsplit * ntiles * kTile^2 * 8 bytes <= kPartialBytes (256 MiB); the rest
//     of the workspace is (3 + nsplit) * C float64.
// So at any C the workspace is at most kPartialBytes + 8 * (3 + nsplit) * C
// bytes, and once one packed partial no longer fits twice in the cap (about
// C = 5800) it is 32 * C bytes.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__CUDACC__)
#define DELVE_FAST_HD __host__ __device__
#else
#define DELVE_FAST_HD
#endif

namespace delve_fast {
namespace split_plan {

// Gram tile: kTile x kTile features, kTileK samples per shared-memory slab.
constexpr int kTile = 64;
constexpr int kTileK = 32;
// Cap on the split-K partial buffers, in bytes.
constexpr int64_t kPartialBytes = int64_t{256} << 20;
// Smallest number of samples one split is worth.
constexpr int64_t kMinSplitSamples = 512;
// Largest grid.y of a CUDA launch.
constexpr int64_t kMaxSplits = 65535;
// float64 elements of one packed tile.
constexpr int64_t kTileElems = int64_t{kTile} * kTile;

struct SplitPlan {
  int64_t ntile;            // tiles per side of the Gram matrix
  int64_t ntiles;           // upper-triangle tiles: grid.x of the tile kernel
  int64_t nsplit;           // sample splits: grid.y of the tile kernel
  int64_t chunk;            // samples per split, a multiple of kTileK
  bool direct;              // nsplit == 1: tiles accumulate into m2 itself
  int64_t partial_elems;    // float64 elements of all partial buffers (0 if direct)
  int64_t workspace_elems;  // float64 elements of the whole workspace
};

// Workspace layout, in float64 elements from its start:
//   shift (C) | psums (nsplit * C) | d, delta (2 * C) | partials (partial_elems).
inline int64_t psums_offset(int64_t c) { return c; }
inline int64_t vectors_offset(int64_t c, int64_t nsplit) { return c + nsplit * c; }
inline int64_t partials_offset(int64_t c, int64_t nsplit) { return c + nsplit * c + 2 * c; }

// Plans the splits for C features and k samples on a device with `sms`
// multiprocessors: enough splits for about four blocks per SM, no split under
// kMinSplitSamples samples, every split non-empty, and the partials within
// kPartialBytes.
inline SplitPlan plan_splits(int64_t c, int64_t k, int64_t sms) {
  SplitPlan p{};
  c = std::max<int64_t>(c, 1);
  k = std::max<int64_t>(k, 1);
  sms = std::max<int64_t>(sms, 1);
  p.ntile = (c + kTile - 1) / kTile;
  p.ntiles = p.ntile * (p.ntile + 1) / 2;
  const int64_t one_partial = p.ntiles * kTileElems;
  int64_t nsplit = (4 * sms + p.ntiles - 1) / p.ntiles;
  nsplit = std::min(nsplit, k / kMinSplitSamples);
  // Two or more splits need one partial each; one split needs none (direct).
  nsplit = std::min(nsplit, kPartialBytes / (one_partial * static_cast<int64_t>(sizeof(double))));
  nsplit = std::clamp<int64_t>(nsplit, 1, kMaxSplits);
  const int64_t slabs = (k + kTileK - 1) / kTileK;
  p.chunk = (slabs + nsplit - 1) / nsplit * kTileK;
  // Rounding chunk up to whole slabs can leave trailing splits empty: drop them.
  p.nsplit = (k + p.chunk - 1) / p.chunk;
  p.direct = p.nsplit == 1;
  p.partial_elems = p.direct ? 0 : p.nsplit * one_partial;
  p.workspace_elems = partials_offset(c, p.nsplit) + p.partial_elems;
  return p;
}

// Index of upper tile (bi, bj), bi <= bj, in row-major order over the triangle
// of ntile x ntile tiles (the tile kernel's blockIdx.x).
DELVE_FAST_HD inline int64_t upper_tile_index(int64_t bi, int64_t bj, int64_t ntile) {
  return bi * ntile - bi * (bi - 1) / 2 + (bj - bi);
}

// Inverse of upper_tile_index: tile t -> (bi, bj).
DELVE_FAST_HD inline void upper_tile(int64_t t, int64_t ntile, int64_t& bi, int64_t& bj) {
  bi = 0;
  while (t >= ntile - bi) {
    t -= ntile - bi;
    ++bi;
  }
  bj = bi + t;
}

// Element (i, j) of split p's packed partial, for features i, j whose tiles
// satisfy i / kTile <= j / kTile; relative to the partials' start.
DELVE_FAST_HD inline int64_t partial_offset(int64_t p, int64_t i, int64_t j, int64_t ntile) {
  const int64_t ntiles = ntile * (ntile + 1) / 2;
  const int64_t t = upper_tile_index(i / kTile, j / kTile, ntile);
  return (p * ntiles + t) * kTileElems + (i % kTile) * kTile + (j % kTile);
}

}  // namespace split_plan
}  // namespace delve_fast
