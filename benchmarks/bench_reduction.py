"""Issue 5, part 2: the eigenvalue reduction of the training model's 9 tracked layers."""

from __future__ import annotations

import pytest

from benchmarks.common import TRACKED_SIZES, reduction_covariances, reduction_delve, reduction_fast

REDUCTION_PATHS = {
    "compiled": lambda covs: reduction_fast(covs, "cpp"),
    "twin": lambda covs: reduction_fast(covs, "torch"),
    # delve 0.1.50: one torch.linalg.eigh per layer and per stat (lsat, idim)
    "delve": lambda covs: reduction_delve(covs, ("lsat", "idim")),
    # the same with delve's dtrc stat added: a third eigh per layer
    "delve_dtrc": lambda covs: reduction_delve(covs, ("lsat", "idim", "dtrc")),
}


@pytest.mark.parametrize("path", list(REDUCTION_PATHS))
def test_reduction(benchmark, path):
    if path.startswith("delve"):
        pytest.importorskip("delve.metrics")
    covs = reduction_covariances()
    fn = REDUCTION_PATHS[path]
    fn(covs)
    benchmark.group = "reduction"
    benchmark.extra_info.update({"bench": "reduction", "path": path, "sizes": TRACKED_SIZES})
    benchmark(fn, covs)
