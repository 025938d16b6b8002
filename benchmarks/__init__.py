"""Benchmarks for delve_fast (issue 5): run with ``make bench``.

``pytest benchmarks --benchmark-only`` measures everything in one run and
writes pytest-benchmark's JSON to :data:`benchmarks.common.RESULTS_JSON`;
``python -m benchmarks.report`` turns that JSON into ``docs/benchmarks.md``
and ``docs/benchmarks.png``.
"""
