"""The device check's parts that run without a GPU: its failure path, the benchmark's report, build_info."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from delve_fast import _loader

ROOT = Path(__file__).resolve().parents[1]


def test_build_info_lists_cuda_archs(compiled):  # noqa: ARG001 (compiled: fail if the build is broken)
    info = _loader.extension().build_info()
    archs = info["cuda_archs"]
    assert isinstance(archs, list)
    if info["cuda"]:
        assert archs and all(a.startswith(("sm_", "compute_")) for a in archs), archs
    else:
        assert archs == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU failure path")
def test_gpu_check_without_a_gpu_fails_cleanly_with_a_report(tmp_path):
    env = dict(os.environ, GPU_CHECK_PYTHON=sys.executable, GPU_CHECK_OUT=str(tmp_path))
    env.pop("OUT", None)
    proc = subprocess.run(
        ["bash", str(ROOT / ".ci" / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    report = (tmp_path / "report.md").read_text()
    assert "RESULT: FAILED" in report and "is_available() is False" in report, report
    assert not (tmp_path / "build.log").exists(), "it must stop before building"


def test_benchmark_report_renders_every_row():
    row = {"shape": "linear 8x4", "dtype": "float32", "twin_ms": 4.0, "mm_ms": 0.25}
    for i, path in enumerate(gpu_check.UPDATE_PATHS):
        row[f"{path}_double_ms"] = 1.0 + i
        row[f"{path}_mixed_ms"] = 0.5 + i
        row[f"{path}_double_err"] = 1e-15
        row[f"{path}_mixed_err"] = 3e-7
    row.update(best_double="fused", best_double_tflops=0.1)
    cov = [row]
    eig = [
        {
            "width": w,
            "dtype": "float64",
            "op_batched_ms": 1.0,
            "op_torch_ms": 2.0,
            "op_auto_ms": 1.0,
            "linalg_eigvalsh_ms": 2.5,
            "max_rel_diff": 1e-15,
        }
        for w in (64, 128)
    ]
    text = gpu_check.render(cov, eig)
    assert (
        "| linear 8x4 | float32 | 1.000 | 0.500 | 2.000 | 1.500 | 3.000 | 2.500 | 4.000 | 0.250 | fused | 0.10 |"
        in text
    )
    assert "| linear 8x4 | float32 | 1.0e-15 | 3.0e-07 | 1.0e-15 | 3.0e-07 | 1.0e-15 | 3.0e-07 |" in text
    assert "fused double | fused mixed | syrk double | syrk mixed | gemm double | gemm mixed" in text
    assert text.count("| float64 |") == 2 and "| 128 |" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_benchmark_refuses_without_a_gpu():
    assert gpu_check.main([]) == 2
