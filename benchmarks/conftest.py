"""pytest set-up for ``pytest benchmarks --benchmark-only``.

- collects ``bench_*.py`` (so the default test run never picks them up);
- pins torch to :data:`benchmarks.config.THREADS` threads;
- writes pytest-benchmark's JSON to :data:`benchmarks.config.RESULTS_JSON`
  unless ``--benchmark-json`` was given, and adds the machine line to it.
"""

from __future__ import annotations

import os

import pytest
import torch

from benchmarks.config import RESULTS_JSON, THREADS
from benchmarks.machine import machine_info


def pytest_collect_file(parent, file_path):
    # A file named on the command line is collected by pytest itself whatever
    # its name; collecting it here too would run every benchmark in it twice.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    torch.set_num_threads(THREADS)
    config._delve_fast_load_start = os.getloadavg()[0]
    if getattr(config.option, "benchmark_json", None) is None and hasattr(config.option, "benchmark_json"):
        RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
        config.option.benchmark_json = RESULTS_JSON


def pytest_benchmark_update_json(config, benchmarks, output_json):
    info = machine_info()
    info["loadavg_start"] = getattr(config, "_delve_fast_load_start", None)
    info["loadavg_end"] = os.getloadavg()[0]
    output_json["delve_fast_machine"] = info


@pytest.fixture(autouse=True)
def _pin_threads():
    torch.set_num_threads(THREADS)
    yield
