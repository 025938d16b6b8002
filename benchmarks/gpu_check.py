"""Short GPU benchmark for the device check (``make gpu-check``); needs a CUDA device.

Times, with CUDA events (median of several repetitions after warm-up):

* ``cov_update_`` on a few layer shapes, float32 and float64 input, precision
  double and mixed, on each CUDA update path (``DELVE_FAST_CUDA_UPDATE``: the
  fused kernel, and the cuBLAS path with dsyrk or dgemm, whose mixed mode is
  3xTF32): time per call and the error of one update against float64, next to
  the pure-torch twin and a bare ``x^T x`` (``torch.mm`` in the input dtype) as
  the speed of light for the Gram product alone. The fastest double path per
  shape is what the default (``fused``) should be measured against;
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


#: The CUDA update paths the benchmark compares (``DELVE_FAST_CUDA_UPDATE``), each in both precisions.
UPDATE_PATHS = ops.CUDA_UPDATE_PATHS


def _with_update_path(path: str, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with ``DELVE_FAST_CUDA_UPDATE=path`` (the kernel reads it on every call)."""

    def run() -> object:
        saved = os.environ.get(ops.CUDA_UPDATE_ENV_VAR)
        os.environ[ops.CUDA_UPDATE_ENV_VAR] = path
        try:
            return fn()
        finally:
            if saved is None:
                os.environ.pop(ops.CUDA_UPDATE_ENV_VAR, None)
            else:
                os.environ[ops.CUDA_UPDATE_ENV_VAR] = saved

    return run


def _steady_state(c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A state that has seen samples (count > 0): the running mean is the shift, as in training."""
    mean = torch.zeros(c, device="cuda", dtype=torch.float64)
    m2 = torch.zeros(c, c, device="cuda", dtype=torch.float64)
    counts = torch.tensor([1000.0, 0.0], device="cuda", dtype=torch.float64)
    return mean, m2, counts


def _cov_error(x: torch.Tensor, path: str, precision: str) -> float:
    """max |cov - cov64| / sqrt(cov64_ii cov64_jj) of one fresh update, against float64 on the GPU."""
    n, c, s = x.shape
    flat = x.permute(0, 2, 1).reshape(n * s, c).to(torch.float64)
    centred = flat - flat.mean(0)
    ref = centred.t() @ centred / (n * s)
    state = (
        torch.zeros(c, device="cuda", dtype=torch.float64),
        torch.zeros(c, c, device="cuda", dtype=torch.float64),
        torch.zeros(2, device="cuda", dtype=torch.float64),
    )
    _with_update_path(path, lambda: ops.cov_update_(*state, x, backend="cpp", precision=precision))()
    cov = state[1] / state[2][0]
    scale = torch.sqrt(torch.outer(ref.diagonal(), ref.diagonal())).clamp_min(1e-300)
    return float(((cov - ref).abs() / scale).max())


def _bench_cov_case(label: str, n: int, c: int, s: int, dtype: torch.dtype, paths: tuple[str, ...]) -> dict:
    x = torch.randn(n, c, s, device="cuda", dtype=dtype) + 3.0
    k = n * s
    mean, m2, counts = _steady_state(c)
    flat = x.permute(0, 2, 1).reshape(k, c)
    row = {"shape": label, "dtype": str(dtype).removeprefix("torch."), "samples": k, "features": c}
    for path in paths:
        for precision in ("double", "mixed"):
            fn = _with_update_path(
                path, lambda p=precision: ops.cov_update_(mean, m2, counts, x, backend="cpp", precision=p)
            )
            row[f"{path}_{precision}_ms"] = cuda_time_ms(fn)
            row[f"{path}_{precision}_err"] = _cov_error(x, path, precision)
    row["twin_ms"] = cuda_time_ms(lambda: _reference.cov_update_(mean, m2, counts, x))
    row["mm_ms"] = cuda_time_ms(lambda: torch.mm(flat.t(), flat))
    # Useful fp64 work of the update: the upper half of the Gram product, k * C^2 FLOP.
    best = min(paths, key=lambda p: row[f"{p}_double_ms"])
    row["best_double"] = best
    row["best_double_tflops"] = k * c * c / (row[f"{best}_double_ms"] * 1e-3) / 1e12
    return row


def bench_cov_update(quick: bool, paths: tuple[str, ...] = UPDATE_PATHS) -> list[dict]:
    rows = []
    for label, n, c, s in COV_SHAPES[:2] if quick else COV_SHAPES:
        for dtype in (torch.float32, torch.float64):
            rows.append(_bench_cov_case(label, n, c, s, dtype, paths))
            r = rows[-1]
            times = ", ".join(f"{p} {r[f'{p}_double_ms']:.3f}/{r[f'{p}_mixed_ms']:.3f}" for p in paths)
            print(f"cov_update_ {label} {r['dtype']} (double/mixed ms): {times}", file=sys.stderr)
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
    paths = [p for p in UPDATE_PATHS if cov and f"{p}_double_ms" in cov[0]]
    head = " | ".join(f"{p} double | {p} mixed" for p in paths)
    lines = [
        "### cov_update_ (ms per call, median; count > 0), by DELVE_FAST_CUDA_UPDATE path",
        "",
        "On the fused path mixed is the float64 kernel; on syrk and gemm it is 3xTF32.",
        "",
        f"| shape | x dtype | {head} | twin | torch.mm x^T x | best double | its fp64 TFLOP/s |",
        "| --- | --- |" + " ---: |" * (2 * len(paths) + 2) + " --- | ---: |",
    ]
    for r in cov:
        cells = " | ".join(f"{r[f'{p}_double_ms']:.3f} | {r[f'{p}_mixed_ms']:.3f}" for p in paths)
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {cells} | {r['twin_ms']:.3f} | {r['mm_ms']:.3f} | "
            f"{r['best_double']} | {r['best_double_tflops']:.2f} |"
        )
    lines += [
        "",
        "### cov_update_ error of one update against float64 on the GPU, max |cov - cov64| / sqrt(cov64_ii cov64_jj)",
        "",
        f"| shape | x dtype | {head} |",
        "| --- | --- |" + " ---: |" * (2 * len(paths)),
    ]
    for r in cov:
        cells = " | ".join(f"{r[f'{p}_double_err']:.1e} | {r[f'{p}_mixed_err']:.1e}" for p in paths)
        lines.append(f"| {r['shape']} | {r['dtype']} | {cells} |")
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
