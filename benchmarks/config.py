"""Where benchmark results go, how many threads every measurement uses, and the targets the report judges."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where pytest-benchmark writes its JSON (``.benchmarks/`` is git-ignored).
RESULTS_JSON = Path(os.environ.get("DELVE_FAST_BENCH_JSON", REPO_ROOT / ".benchmarks" / "delve_fast_latest.json"))
#: Threads for every measurement (the reference machine has 2 cores).
THREADS = int(os.environ.get("DELVE_FAST_BENCH_THREADS", "2"))

#: Performance targets, read by the report (:mod:`benchmarks.render`).
TARGETS = {
    "train_overhead_max": 0.10,
    "train_overhead_mixed_max": 0.05,
    "update_speedup_64x64x32x32_min": 3.0,
    "update_speedup_all_min": 1.0,
    "roofline_fraction_conv_min": 0.6,
    "reduction_speedup_min": 4.0,
    "memory_extra_compiled_max_mib": 64.0,
}
