"""Short GPU benchmark for the device check (``make gpu-check``); needs a CUDA device.

Times, with CUDA events (median of several repetitions after warm-up):

* ``cov_update_`` on a few layer shapes, float32 and float64 input, precision
  double and mixed: the compiled CUDA kernel vs the pure-torch twin, and a bare
  ``x^T x`` (``torch.mm`` in the input dtype) as the speed of light for the Gram
  product alone;
* ``eigvalsh_desc`` on batches of equal-width matrices: the cuSOLVER batched
  solver (``DELVE_FAST_CUDA_EIG=batched``), torch's solver inside the op
  (``=torch``), the default (``=auto``), and ``torch.linalg.eigvalsh`` on the stack.

Writes a markdown section to stdout and, with ``--json``, the raw numbers.
Run: ``python -m benchmarks.gpu_check [--json out.json] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable

import torch

from delve_fast import _reference, ops

# (label, N, C, S): a conv map, a wide conv map, Linear activations, a very wide layer.
COV_SHAPES = [
    ("conv 128x64x32x32", 128, 64, 1024),
    ("conv 64x256x16x16", 64, 256, 256),
    ("linear 4096x512", 4096, 512, 1),
    ("linear 2048x2048", 2048, 2048, 1),
]
EIG_WIDTHS = [16, 64, 128, 256, 512]
EIG_BATCH = 32


def cuda_time_ms(fn: Callable[[], object], warmup: int = 3, reps: int = 10) -> float:
    """Median wall time of ``fn`` on the GPU in milliseconds, from CUDA events around each call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _bench_cov_case(label: str, n: int, c: int, s: int, dtype: torch.dtype) -> dict:
    x = torch.randn(n, c, s, device="cuda", dtype=dtype) + 3.0
    k = n * s
    mean = torch.zeros(c, device="cuda", dtype=torch.float64)
    m2 = torch.zeros(c, c, device="cuda", dtype=torch.float64)

    def run(backend: str, precision: str) -> None:
        # count > 0: the steady-state path (running mean as the shift).
        ops.cov_update_(mean, m2, x, 1000, backend=backend, precision=precision)

    flat = x.permute(0, 2, 1).reshape(k, c)
    row = {
        "shape": label,
        "dtype": str(dtype).removeprefix("torch."),
        "samples": k,
        "features": c,
        "compiled_double_ms": cuda_time_ms(lambda: run("cpp", "double")),
        "compiled_mixed_ms": cuda_time_ms(lambda: run("cpp", "mixed")),
        "twin_ms": cuda_time_ms(lambda: _reference.cov_update_(mean, m2, x, 1000)),
        "mm_ms": cuda_time_ms(lambda: torch.mm(flat.t(), flat)),
    }
    # Useful fp64 work of the update: the upper half of the Gram product, k * C^2 FLOP.
    row["compiled_double_tflops"] = k * c * c / (row["compiled_double_ms"] * 1e-3) / 1e12
    return row


def bench_cov_update(quick: bool) -> list[dict]:
    rows = []
    for label, n, c, s in COV_SHAPES[:2] if quick else COV_SHAPES:
        for dtype in (torch.float32, torch.float64):
            rows.append(_bench_cov_case(label, n, c, s, dtype))
            print(f"cov_update_ {label} {rows[-1]['dtype']}: {rows[-1]['compiled_double_ms']:.3f} ms", file=sys.stderr)
    return rows


def _spd_stack(batch: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    a = torch.randn(batch, n, 2 * n, device="cuda", dtype=torch.float64)
    return (a @ a.transpose(1, 2) / (2 * n)).to(dtype)


def bench_eigvalsh(quick: bool) -> list[dict]:
    rows = []
    widths = EIG_WIDTHS[:3] if quick else EIG_WIDTHS
    saved = os.environ.get("DELVE_FAST_CUDA_EIG")
    try:
        for dtype in (torch.float64, torch.float32):
            for n in widths:
                stack = _spd_stack(EIG_BATCH, n, dtype)
                mats = list(stack.unbind(0))
                row = {"width": n, "batch": EIG_BATCH, "dtype": str(dtype).removeprefix("torch.")}
                results = {}
                for solver in ("batched", "torch", "auto"):
                    os.environ["DELVE_FAST_CUDA_EIG"] = solver
                    row[f"op_{solver}_ms"] = cuda_time_ms(lambda m=mats: ops.eigvalsh_desc(m, backend="cpp"), reps=5)
                    results[solver] = torch.stack(ops.eigvalsh_desc(mats, backend="cpp"))
                row["linalg_eigvalsh_ms"] = cuda_time_ms(lambda s=stack: torch.linalg.eigvalsh(s), reps=5)
                # Agreement of the two solvers, relative to the largest eigenvalue.
                scale = results["torch"].abs().max().clamp_min(1e-300)
                row["max_rel_diff"] = float((results["batched"] - results["torch"]).abs().max() / scale)
                rows.append(row)
                print(f"eigvalsh {n} {row['dtype']}: batched {row['op_batched_ms']:.2f} ms", file=sys.stderr)
    finally:
        if saved is None:
            os.environ.pop("DELVE_FAST_CUDA_EIG", None)
        else:
            os.environ["DELVE_FAST_CUDA_EIG"] = saved
    return rows


def render(cov: list[dict], eig: list[dict]) -> str:
    lines = [
        "### cov_update_ (ms per call, median; count > 0)",
        "",
        "| shape | x dtype | compiled double | compiled mixed | twin | torch.mm x^T x | compiled fp64 TFLOP/s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in cov:
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['compiled_double_ms']:.3f} | {r['compiled_mixed_ms']:.3f} | "
            f"{r['twin_ms']:.3f} | {r['mm_ms']:.3f} | {r['compiled_double_tflops']:.2f} |"
        )
    lines += [
        "",
        f"### eigvalsh_desc, {EIG_BATCH} matrices of one width (ms per call, median)",
        "",
        "| width | dtype | op, cuSOLVER batched | op, torch solver | op, auto | torch.linalg.eigvalsh | max rel diff |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in eig:
        lines.append(
            f"| {r['width']} | {r['dtype']} | {r['op_batched_ms']:.2f} | {r['op_torch_ms']:.2f} | "
            f"{r['op_auto_ms']:.2f} | {r['linalg_eigvalsh_ms']:.2f} | {r['max_rel_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the raw numbers to this file")
    parser.add_argument("--quick", action="store_true", help="fewer shapes (a smoke run)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check benchmark: no CUDA device", file=sys.stderr)
        return 2
    if not ops.has_compiled_kernel("cuda"):
        print("gpu_check benchmark: the extension has no CUDA kernels (CPU build?)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    cov = bench_cov_update(args.quick)
    eig = bench_eigvalsh(args.quick)
    print(render(cov, eig))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": torch.cuda.get_device_name(), "cov_update": cov, "eigvalsh": eig}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
