"""The eigenvalue reduction of the training model's 9 tracked layers.

All paths are timed in interleaved rounds (see :mod:`benchmarks.bench_update`).
"""

from __future__ import annotations

import statistics

import pytest

from benchmarks.reduction import TRACKED_SIZES, reduction_covariances, reduction_delve, reduction_fast
from benchmarks.timing import interleaved_times
from delve_fast import ops


def test_reduction(benchmark):
    covs = reduction_covariances()
    fns = {
        "compiled": lambda: reduction_fast(covs, "cpp"),
        "twin": lambda: reduction_fast(covs, "torch"),
    }
    try:
        import delve.metrics  # noqa: F401, PLC0415
    except ImportError:
        pytest.skip("delve 0.1.50 is not installed")
    # delve 0.1.50: one torch.linalg.eigh per layer and per stat (lsat, idim) ...
    fns["delve"] = lambda: reduction_delve(covs, ("lsat", "idim"))
    # ... and with its dtrc stat added, a third eigh per layer
    fns["delve_dtrc"] = lambda: reduction_delve(covs, ("lsat", "idim", "dtrc"))
    stats_match = reduction_fast(covs, "cpp") == [tuple(v) for v in reduction_delve(covs)]
    # the batched op's eigenvalues against torch.linalg.eigvalsh, relative to each matrix's largest
    fast_ev = ops.eigvalsh_desc(covs, backend="cpp")
    ref_ev = ops.eigvalsh_desc(covs, backend="torch")
    max_rel_err = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(fast_ev, ref_ev, strict=True))
    times: dict[str, list[float]] = {}

    def run() -> None:
        times.update(interleaved_times(fns, budget_s=8.0))

    benchmark.group = "reduction"
    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(
        {
            "bench": "reduction",
            "sizes": TRACKED_SIZES,
            "stats_match_delve": stats_match,
            "eigvals_max_rel_err": max_rel_err,
            "median_s": {k: statistics.median(v) for k, v in times.items()},
            "times_s": times,
        }
    )
