"""The facts about the machine and the build that every results file records."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import torch

from delve_fast import _loader, ops


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    info = _loader.build_info() or {}
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "mkl": torch.backends.mkl.is_available(),
        "python": platform.python_version(),
        "delve_fast_backend": ops.backend_info().get("backend"),
        "cpu_kernel_isa": info.get("cpu_kernel_isa"),
    }
