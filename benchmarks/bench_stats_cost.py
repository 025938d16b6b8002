"""``add_saturations()`` with every spectrum statistic against lsat + idim (see :mod:`benchmarks.stats_cost`)."""

from __future__ import annotations

from benchmarks.stats_cost import ALL_STATS, measure


def test_stats_cost(benchmark):
    result: dict = {}

    def run() -> None:
        result.update(measure())

    benchmark.group = "stats_cost"
    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update({"bench": "stats_cost", "stats": ALL_STATS, **result})
