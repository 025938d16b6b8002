"""Training-step overhead of the trackers on the VGG-style model.

Not a micro-benchmark: one pytest-benchmark round (pedantic mode) runs the
whole interleaved experiment of :func:`benchmarks.training.run_training_overhead`
and stores its figures in ``extra_info``.
"""

from __future__ import annotations

import os

from benchmarks.training import VARIANTS, run_training_overhead

# With 40 rounds the 95% interval of one overhead spanned about 5 points (step
# times vary by 4-5% from round to round here); 120 rounds narrow it to about 3.
ROUNDS = int(os.environ.get("DELVE_FAST_BENCH_TRAIN_ROUNDS", "120"))


def _variants() -> tuple[list[str], str]:
    """Every variant, less delve when it is not installed (and why)."""
    try:
        import delve  # noqa: F401, PLC0415
    except ImportError:
        return [v for v in VARIANTS if v != "delve"], "delve 0.1.50 is not installed (pip install delve==0.1.50)"
    return list(VARIANTS), ""


def test_training_overhead(benchmark):
    variants, note = _variants()
    result = {}

    def run() -> None:
        result.update(run_training_overhead(variants, rounds=ROUNDS))

    benchmark.group = "training"
    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update({"bench": "training", "variants": variants, "tracker_note": note, **result})
