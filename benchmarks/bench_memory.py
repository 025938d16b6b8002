"""Peak extra resident memory of one update on a 1 GiB fp32 activation.

Each path runs in its own fresh interpreter (:mod:`benchmarks.memprobe`) so the
allocators of one path never hide the peak of another. The compiled op also
runs on a 4× smaller batch, to show that its extra memory does not grow with N.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.config import REPO_ROOT

GIB_SHAPE = (64, 256, 128, 128)  # 64·256·128·128·4 B = 1 GiB
QUARTER_SHAPE = (16, 256, 128, 128)

MEMORY_CASES = [
    ("compiled", GIB_SHAPE),
    ("twin", GIB_SHAPE),
    ("delve", GIB_SHAPE),
    ("compiled", QUARTER_SHAPE),
]


def _probe(path: str, shape: tuple[int, ...]) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.memprobe", path, *map(str, shape)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("path", "shape"), MEMORY_CASES, ids=[f"{p}-{'x'.join(map(str, s))}" for p, s in MEMORY_CASES])
def test_memory(benchmark, path, shape):
    if path == "delve":
        pytest.importorskip("delve.torch_utils")
    result = {}

    def run() -> None:
        result.update(_probe(path, shape))

    benchmark.group = "memory"
    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update({"bench": "memory", **result})
