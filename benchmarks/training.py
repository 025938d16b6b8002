"""The training-overhead benchmark: the same VGG-style model trained with and without each tracker."""

from __future__ import annotations

import contextlib
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.config import THREADS
from benchmarks.timing import overhead_interval
from delve_fast.testing import vgg_benchmark_model as build_vgg

#: The tracker variants: delve_fast compiled, twin and compiled in mixed precision, and delve 0.1.50.
VARIANTS = ("fast_cpp", "fast_torch", "fast_mixed", "delve")


def make_tracker(variant: str, model: nn.Module, savefile: str):
    """Attach a tracker of ``variant`` to ``model`` (or nothing for ``none``)."""
    stats = ["lsat", "idim"]
    if variant == "none":
        return None
    if variant == "delve":
        import delve  # noqa: PLC0415

        logging.getLogger("delve").setLevel(logging.WARNING)  # it logs every hooked layer at INFO

        return delve.SaturationTracker(savefile, save_to="csv", modules=model, stats=stats, device="cpu")
    from delve_fast.tracker import SaturationTracker  # noqa: PLC0415

    choices = {"fast_cpp": ("cpp", "double"), "fast_torch": ("torch", "double"), "fast_mixed": ("cpp", "mixed")}
    if variant not in choices:
        raise ValueError(f"unknown variant {variant!r}; valid choices are none, {', '.join(VARIANTS)}")
    backend, precision = choices[variant]
    return SaturationTracker(
        savefile, save_to="csv", modules=model, stats=stats, device="cpu", backend=backend, precision=precision
    )


#: Steps of one CIFAR-10 epoch at batch 64 (50 000 / 64): the add_saturations() cadence.
EPOCH_STEPS = 782


def run_training_overhead(
    variants: list[str],
    rounds: int = 20,
    warmup: int = 2,
    sat_calls: int = 3,
    sat_steps: int = 2,
    batch: int = 64,
) -> dict:
    """Time training steps of identical models with and without each tracker, interleaved.

    One model per variant (``none`` = no tracker) with the same initial
    weights; each round runs one SGD step of every model, in an order that
    rotates every round, so slow drifts of the noisy machine hit all variants
    alike. Overhead is ``median(with) / median(without) - 1``.

    Afterwards ``add_saturations()`` of each tracker is timed ``sat_calls``
    times, each after ``sat_steps`` training steps (trackers reset their state
    at every call, as delve's default ``reset_covariance=True`` does).

    Returns
    -------
    dict
        ``step_ms`` (variant → list of step times), ``median_ms``,
        ``overhead`` (variant → fraction), ``overhead_paired`` (median of
        per-round ratios), ``overhead_interval_95`` (variant → bootstrap
        interval, see :func:`overhead_interval`), ``add_saturations_ms``
        (variant → list).
    """
    torch.set_num_threads(THREADS)
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(batch, 3, 32, 32, generator=gen) for _ in range(4)]
    ys = [torch.randint(0, 10, (batch,), generator=gen) for _ in range(4)]
    loss_fn = nn.CrossEntropyLoss()
    all_variants = ["none", *[v for v in variants if v != "none"]]
    with tempfile.TemporaryDirectory(prefix="delve_fast_bench_") as tmp:
        models, trackers, opts = {}, {}, {}
        for v in all_variants:
            models[v] = build_vgg(seed=0)
            models[v].train()
            trackers[v] = make_tracker(v, models[v], str(Path(tmp) / v))
            opts[v] = torch.optim.SGD(models[v].parameters(), lr=0.01, momentum=0.9)

        def step(v: str, i: int) -> float:
            x, y = xs[i % len(xs)], ys[i % len(ys)]
            t0 = time.perf_counter()
            opts[v].zero_grad(set_to_none=True)
            loss = loss_fn(models[v](x), y)
            loss.backward()
            opts[v].step()
            return time.perf_counter() - t0

        times: dict[str, list[float]] = {v: [] for v in all_variants}
        n = len(all_variants)
        for r in range(warmup + rounds):
            shift = r % n
            order = all_variants[shift:] + all_variants[:shift]
            for v in order:
                t = step(v, r)
                if r >= warmup:
                    times[v].append(t * 1e3)

        sat_ms: dict[str, list[float]] = {}
        for v in all_variants:
            if trackers[v] is None:
                continue
            sat_ms[v] = []
            for c in range(sat_calls):
                for i in range(sat_steps):
                    step(v, c * sat_steps + i)
                with contextlib.redirect_stdout(None):
                    t0 = time.perf_counter()
                    trackers[v].add_saturations()
                    sat_ms[v].append((time.perf_counter() - t0) * 1e3)
        for t in trackers.values():
            if t is not None:
                with contextlib.suppress(Exception):  # a writer's failure to flush must not lose the timings
                    t.close()

    med = {v: statistics.median(ts) for v, ts in times.items()}
    return {
        "rounds": rounds,
        "batch": batch,
        "threads": THREADS,
        "step_ms": times,
        "median_ms": med,
        "overhead": {v: med[v] / med["none"] - 1.0 for v in all_variants if v != "none"},
        "overhead_paired": {
            v: statistics.median(a / b for a, b in zip(times[v], times["none"], strict=True)) - 1.0
            for v in all_variants
            if v != "none"
        },
        "overhead_interval_95": {v: overhead_interval(times[v], times["none"]) for v in all_variants if v != "none"},
        "add_saturations_ms": sat_ms,
        "epoch_steps": EPOCH_STEPS,
    }
