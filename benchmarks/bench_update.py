"""The covariance update op over the listed batch shapes, and the fp64 GEMM roofline.

For each batch shape one test times every path *and* the roofline's fp64
GEMM in interleaved rounds (:func:`benchmarks.timing.interleaved_turns`),
so the ratios in the report compare measurements taken under the same load.
Each turn times a path's first call after another path ran, then
``STEADY_CALLS`` more calls: the steady state, in which the roofline's GEMM is
itself measured (one 2048³ call is long enough to amortise its own start).
pytest-benchmark runs that experiment once (pedantic mode) and keeps both sets
of per-round times in ``extra_info``; a separate plain pytest-benchmark test
gives the headline fp64 GEMM rate.
"""

from __future__ import annotations

import os
import statistics

import pytest

from benchmarks.timing import interleaved_turns
from benchmarks.update_cases import GEMM_N, UPDATE_CASES, UPDATE_PATHS, make_gemm_fn, make_input, make_update_fn

BUDGET_S = float(os.environ.get("DELVE_FAST_BENCH_UPDATE_BUDGET_S", "6"))
#: Calls after the first one in every turn; their mean is the turn's steady time.
STEADY_CALLS = 2
#: Side of the control GEMM: a torch.mm about as long as one update, timed like the paths, which shows
#: what a first call after another op costs MKL's own kernel on this machine.
CONTROL_N = 512


def _available_paths() -> tuple[list[str], dict[str, str]]:
    paths, skipped = [], {}
    for path in UPDATE_PATHS:
        if path == "delve":
            try:
                import delve.torch_utils  # noqa: F401, PLC0415
            except ImportError:
                skipped[path] = "delve 0.1.50 is not installed (pip install delve==0.1.50)"
                continue
        paths.append(path)
    return paths, skipped


@pytest.mark.parametrize("case", UPDATE_CASES, ids=[c.id for c in UPDATE_CASES])
def test_update(benchmark, case):
    paths, skipped = _available_paths()
    x = make_input(case)
    fns = {path: make_update_fn(path, x, case.kind) for path in paths}
    gemm, gemm_flops = make_gemm_fn()
    fns["gemm"] = gemm
    fns["control_gemm"] = make_gemm_fn(CONTROL_N)[0]
    turns = []

    def run() -> None:
        turns.append(interleaved_turns(fns, budget_s=BUDGET_S, steady_calls=STEADY_CALLS))

    benchmark.group = "update"
    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(
        {
            "bench": "update",
            "case": case.id,
            "flops": case.syrk_flops,
            "gemm_n": GEMM_N,
            "gemm_flops": gemm_flops,
            "control_n": CONTROL_N,
            "steady_calls": STEADY_CALLS,
            "median_s": {k: statistics.median(v) for k, v in turns[0].steady.items()},
            "times_s": turns[0].steady,
            "first_median_s": {k: statistics.median(v) for k, v in turns[0].first.items()},
            "first_times_s": turns[0].first,
            "skipped": skipped,
        }
    )


def test_fp64_gemm_rate(benchmark):
    """The roofline's rate on its own: torch.mm on 2048² fp64 matrices, 2·n³ flops."""
    gemm, flops = make_gemm_fn()
    gemm()
    benchmark.group = "roofline"
    benchmark.extra_info.update({"bench": "gemm", "n": GEMM_N, "flops": flops})
    benchmark(gemm)
