"""Issue 5, part 1: the covariance update op over the listed batch shapes, and the fp64 GEMM roofline."""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import (
    UPDATE_CASES,
    UPDATE_PATHS,
    fp64_gemm_operands,
    has_precision_arg,
    make_input,
    make_update_fn,
)

pytest.importorskip("pytest_benchmark")


def _skip_reason(path: str) -> str | None:
    if path == "delve":
        try:
            import delve.torch_utils  # noqa: F401, PLC0415
        except ImportError:
            return "delve 0.1.50 is not installed (pip install delve==0.1.50)"
    if path == "compiled_mixed" and not has_precision_arg():
        return "ops.cov_update_ has no precision= argument yet"
    return None


@pytest.mark.parametrize("path", UPDATE_PATHS)
@pytest.mark.parametrize("case", UPDATE_CASES, ids=[c.id for c in UPDATE_CASES])
def test_update(benchmark, case, path):
    reason = _skip_reason(path)
    if reason:
        pytest.skip(reason)
    x = make_input(case)
    fn = make_update_fn(path, x, case.kind)
    fn()  # warm-up: state allocation, thread pools, first-touch of buffers
    fn()
    benchmark.group = f"update {case.id}"
    benchmark.extra_info.update(
        {
            "bench": "update",
            "case": case.id,
            "path": path,
            "flops": case.syrk_flops,
            "channels": case.channels,
            "samples": case.samples,
        }
    )
    benchmark(fn)


@pytest.mark.parametrize("n", [2048])
def test_fp64_gemm_rate(benchmark, n):
    """The roofline's rate: torch.mm on large fp64 square matrices, 2·n³ flops."""
    a, b = fp64_gemm_operands(n)
    out = torch.empty(n, n, dtype=torch.float64)
    torch.mm(a, b, out=out)
    benchmark.group = "roofline"
    benchmark.extra_info.update({"bench": "gemm", "n": n, "flops": 2 * n**3})
    benchmark(torch.mm, a, b, out=out)
