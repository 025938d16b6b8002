"""Issue 5, part 3: training-step overhead of the trackers on the VGG-style model.

Not a micro-benchmark: one pytest-benchmark round (pedantic mode) runs the
whole interleaved experiment of :func:`benchmarks.common.run_training_overhead`
and stores its figures in ``extra_info``.
"""

from __future__ import annotations

import os

import pytest

from benchmarks.common import delve_fast_tracker_available, run_training_overhead, tracker_accepts

# With 40 rounds the 95% interval of one overhead spanned about 5 points (step
# times vary by 4-5% from round to round here); 120 rounds narrow it to about 3.
ROUNDS = int(os.environ.get("DELVE_FAST_BENCH_TRAIN_ROUNDS", "120"))


def _variants() -> list[str]:
    variants = []
    ok, why = delve_fast_tracker_available()
    if ok:
        variants += ["fast_cpp", "fast_torch"]
        if tracker_accepts("precision"):
            variants.append("fast_mixed")
    try:
        import delve  # noqa: F401, PLC0415

        variants.append("delve")
    except ImportError:
        pass
    return variants


def test_training_overhead(benchmark):
    variants = _variants()
    ok, why = delve_fast_tracker_available()
    if not variants:
        pytest.skip(why or "no tracker to measure")
    result = {}

    def run() -> None:
        result.update(run_training_overhead(variants, rounds=ROUNDS))

    benchmark.group = "training"
    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update({"bench": "training", "variants": variants, "tracker_note": why, **result})
