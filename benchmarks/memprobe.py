"""Peak extra resident memory of ONE update, measured in a fresh process.

Run as ``python -m benchmarks.memprobe PATH N C H W``; prints one JSON line.
The process first warms the path up on a small batch with the same C (so
library buffers, thread pools and the state are in the baseline), then
allocates the float32 input, resets the kernel's RSS high-water mark
(``/proc/self/clear_refs``), runs one update and reads ``VmHWM``.
Without ``clear_refs`` it falls back to ``ru_maxrss`` (peak since start).
"""

from __future__ import annotations

import gc
import json
import resource
import sys
from pathlib import Path

import torch

from benchmarks.config import THREADS
from benchmarks.update_cases import UpdateCase, delve_matrix, make_update_fn

_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def probe(path: str, shape: tuple[int, int, int, int]) -> dict:
    torch.set_num_threads(THREADS)
    if path == "delve":
        from delve.torch_utils import TorchCovarianceMatrix  # noqa: PLC0415
    c = shape[1]
    case = UpdateCase("probe", "conv", shape)
    small = torch.rand(2, c, 8, 8)
    # warm-up on a small batch with the same C: library buffers and thread pools join the baseline
    make_update_fn(path, small, case.kind)()
    gc.collect()

    x = torch.empty(shape, dtype=torch.float32).uniform_()
    if path != "delve":
        fn = make_update_fn(path, x, case.kind)
    else:
        # delve allocates its (C, C) state on the first update: do that first on the small batch
        cov = TorchCovarianceMatrix(device="cpu")
        cov.update(delve_matrix(small), False)

        def fn() -> None:
            cov.update(delve_matrix(x), False)

    gc.collect()
    exact = _reset_hwm()
    base_kib = _status_kib("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    peak_kib = _status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "path": path,
        "shape": list(shape),
        "input_mib": x.numel() * x.element_size() / 2**20,
        "baseline_mib": base_kib / 1024,
        "peak_mib": peak_kib / 1024,
        "extra_mib": (peak_kib - base_kib) / 1024,
        "method": "VmHWM after clear_refs" if exact else "ru_maxrss",
    }


def main(argv: list[str]) -> None:
    path = argv[0]
    shape = tuple(int(v) for v in argv[1:5])
    print(json.dumps(probe(path, shape)))


if __name__ == "__main__":
    main(sys.argv[1:])
