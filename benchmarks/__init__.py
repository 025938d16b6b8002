"""Benchmarks for delve_fast: run with ``make bench``.

``pytest benchmarks --benchmark-only`` measures everything in one run and
writes pytest-benchmark's JSON to :data:`benchmarks.config.RESULTS_JSON`;
``python -m benchmarks.render`` turns that JSON into ``docs/benchmarks.md``
and ``docs/benchmarks.png``.

Modules: ``bench_*.py`` are the pytest files (collected by ``conftest.py`` only);
``config`` (paths, threads, targets), ``update_cases``, ``reduction`` and
``training`` (what each benchmark measures), ``timing`` (interleaved rounds,
bootstrap interval), ``machine`` (the machine line), ``memprobe`` (the memory
probe's subprocess), ``results`` (a run's figures and the targets' verdicts) and
``render`` (the report page and chart).
"""
