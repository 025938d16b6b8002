"""``add_saturations()`` of the VGG-style model on 2 gloo processes against one process with every shard.

One pytest-benchmark round (pedantic mode) runs :func:`benchmarks.distributed.run_distributed`
and stores its figures (wall times, bytes per rank, the bytes formula) in ``extra_info``.
"""

from __future__ import annotations

import os

from benchmarks.distributed import payload_bytes, run_distributed

CALLS = int(os.environ.get("DELVE_FAST_BENCH_DIST_CALLS", "5"))


def test_distributed_add_saturations(benchmark):
    result = {}

    def run() -> None:
        result.update(run_distributed(world=2, calls=CALLS))

    benchmark.group = "distributed"
    benchmark.pedantic(run, rounds=1, iterations=1)
    # The measured bytes, less the exchanged statistics, are the formula's (both ranks send the same buffers).
    formula = sum(payload_bytes(result["widths"]).values())
    for rank in result["ranks"]:
        assert rank["payload_bytes"] - rank["by_step"]["statistics"] == formula
    benchmark.extra_info.update({"bench": "distributed", **result})
