"""The CUDA cov_update_ kernel's split plan and workspace bound, checked on the CPU.

The plan (csrc/cuda/split_plan.h) is plain C++ compiled into every build of the
extension and exposed as ``_C._cuda_split_plan``, so its promises hold without a
GPU: every split is non-empty and the splits cover the samples, the partial
buffers never exceed their 256 MiB cap, one split means no partial at all (the
tiles accumulate into the state), and the packed partial layout gives every
computed element its own slot.
"""

from __future__ import annotations

import itertools

import pytest

from delve_fast import _loader

MIB = 1 << 20
F64 = 8


@pytest.fixture
def C(compiled):  # noqa: N802 - the extension module's own name
    return _loader.extension()


# Widths around tile edges and the sizes the old plan handled badly (full C x C
# partials above C ~ 5800: 537 MB at 8192, 2.1 GB at 16384).
WIDTHS = [1, 2, 63, 64, 65, 127, 128, 129, 512, 1000, 4096, 5760, 5800, 5824, 8192, 16384, 40000]
SAMPLES = [1, 31, 32, 33, 511, 512, 4096, 100_000, 10_000_000]
SMS = [1, 108, 132]


def workspace_bound_bytes(c: int, nsplit: int) -> int:
    """The documented bound (docs/gpu.md): 256 MiB of partials + (3 + nsplit) * C float64."""
    return 256 * MIB + F64 * (3 + nsplit) * c


@pytest.mark.parametrize("c", WIDTHS)
def test_plan_covers_samples_and_respects_the_bound(C, c):
    for k, sms in itertools.product(SAMPLES, SMS):
        p = C._cuda_split_plan(c, k, sms)
        ctx = f"C={c} k={k} sms={sms}: {p}"
        tile, tile_k = p["tile"], p["tile_k"]
        ntile = -(-c // tile)
        assert p["ntile"] == ntile, ctx
        assert p["ntiles"] == ntile * (ntile + 1) // 2, ctx
        # Splits: whole slabs each, all non-empty, together exactly covering the k samples.
        assert p["chunk"] % tile_k == 0 and p["chunk"] > 0, ctx
        assert 1 <= p["nsplit"] <= 65535, ctx
        assert (p["nsplit"] - 1) * p["chunk"] < k <= p["nsplit"] * p["chunk"], ctx
        # A split is worth at least min_split_samples samples, unless there is only one.
        if p["nsplit"] > 1:
            assert k // p["nsplit"] >= p["min_split_samples"], ctx
        # The bound.
        assert p["partial_elems"] * F64 <= p["partial_bytes_cap"] == 256 * MIB, ctx
        assert p["workspace_elems"] * F64 <= workspace_bound_bytes(c, p["nsplit"]), ctx
        # One split: no partial buffer, the tiles go straight into m2.
        assert p["direct"] == (p["nsplit"] == 1), ctx
        if p["direct"]:
            assert p["partial_elems"] == 0 and p["workspace_elems"] == 4 * c, ctx
        else:
            # Packed: upper tiles only, not nsplit full C x C matrices.
            assert p["partial_elems"] == p["nsplit"] * p["ntiles"] * tile * tile, ctx


@pytest.mark.parametrize("c", [5824, 8192, 16384, 40000])
def test_wide_layers_need_only_vectors(C, c):
    """Above the width where two packed partials exceed the cap, the workspace is 4 C float64."""
    for k, sms in itertools.product([4096, 10_000_000], SMS):
        p = C._cuda_split_plan(c, k, sms)
        assert p["direct"], p
        assert p["workspace_elems"] * F64 == 32 * c, p


def test_many_samples_get_split_on_a_big_device(C):
    """The split-K path is still used where it pays: few tiles, many samples, many SMs."""
    p = C._cuda_split_plan(256, 1_000_000, 132)
    # 10 tiles and 132 SMs: about 4 blocks per SM wants ceil(528 / 10) = 53 splits.
    assert p["nsplit"] == 53, p
    assert not p["direct"]


@pytest.mark.parametrize("c", [1, 64, 65, 130, 200])
def test_packed_partial_slots_are_distinct_and_in_range(C, c):
    """Every element a tile block writes (upper tiles, whole diagonal tiles) has its own slot."""
    p = C._cuda_split_plan(c, 1_000_000, 132)
    nsplit, tile, ntile = p["nsplit"], p["tile"], p["ntile"]
    assert nsplit > 1  # the packed layout is in use
    per_split = p["ntiles"] * tile * tile
    seen = set()
    for s in range(min(nsplit, 3)):
        for i in range(c):
            for j in range(c):
                if i // tile > j // tile:
                    continue  # lower tiles are never computed
                off = C._cuda_partial_offset(s, i, j, ntile)
                assert s * per_split <= off < (s + 1) * per_split, (s, i, j, off)
                seen.add(off)
    expected = min(nsplit, 3) * sum(1 for i in range(c) for j in range(c) if i // tile <= j // tile)
    assert len(seen) == expected
