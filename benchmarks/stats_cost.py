"""Cost of every statistic: ``add_saturations()`` with all stats against lsat + idim alone.

Three trackers hook the training benchmark's VGG-style model (7 convs, 2 linears),
so one forward pass fills all with identical covariances; ``reset_covariance=False``
keeps them filled, so ``add_saturations()`` can be timed again and again, in
interleaved turns. Run it as ``python -m benchmarks.stats_cost``.
"""

from __future__ import annotations

import statistics
import tempfile
import warnings
from pathlib import Path

import torch

from benchmarks.config import THREADS
from benchmarks.timing import interleaved_times
from delve_fast.testing import vgg_benchmark_model

#: The baseline: delve's default pair.
BASE_STATS = ["lsat", "idim"]

#: Every statistic that is a function of the covariance spectrum (``cov`` and ``embed`` write
#: matrices and sample projections, a cost of their own that is not this measurement's).
ALL_STATS = [
    "lsat",
    "idim",
    "trc",
    "dtrc",
    "det",
    "logdet",
    "erank",
    "rankme",
    "pr",
    "srank",
    "alpha",
    "spectrum",
    "count",
]


def measure(batch: int = 64, budget_s: float = 10.0, backend: str = "cpp") -> dict:
    """Median seconds per ``add_saturations()`` for both stat sets, and their ratio.

    Parameters
    ----------
    batch : int, default 64
        CIFAR-sized images in the one forward pass that fills the covariances.
    budget_s : float, default 10.0
        Time budget of the interleaved turns.
    backend : str, default "cpp"

    Returns
    -------
    dict
        ``median_s`` per variant, ``ratio`` (all / base), ``ratio_without_rankme``
        (rankme is the one stat that adds matrices to the solve) and the layer widths.
    """
    from delve_fast import SaturationTracker

    model = vgg_benchmark_model()
    with tempfile.TemporaryDirectory() as tmp:
        trackers = {
            name: SaturationTracker(
                str(Path(tmp) / name),
                save_to="csv",
                modules=model,
                device="cpu",
                stats=stats,
                backend=backend,
                reset_covariance=False,
            )
            for name, stats in (
                ("lsat+idim", BASE_STATS),
                ("all", ALL_STATS),
                ("all but rankme", [k for k in ALL_STATS if k != "rankme"]),
            )
        }
        with torch.no_grad():
            model(torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
        widths = [state.dim for state in trackers["all"].logs["train-covariance-matrix"].values()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # det underflows on these layers; it warns every call
            times = interleaved_times({k: t.add_saturations for k, t in trackers.items()}, budget_s=budget_s)
        for t in trackers.values():
            t.close()
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "median_s": median,
        "ratio": median["all"] / median["lsat+idim"],
        "ratio_without_rankme": median["all but rankme"] / median["lsat+idim"],
        "rounds": len(times["all"]),
        "widths": widths,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    """Print the measurement."""
    torch.set_num_threads(THREADS)
    result = measure()
    base, full = result["median_s"]["lsat+idim"], result["median_s"]["all"]
    print(f"layers (widths): {result['widths']}, threads: {result['threads']}, rounds: {result['rounds']}")
    print(f"add_saturations() lsat+idim: {base * 1e3:.1f} ms; all {len(ALL_STATS)} stats: {full * 1e3:.1f} ms")
    print(f"ratio all / lsat+idim: {result['ratio']:.2f}; without rankme: {result['ratio_without_rankme']:.2f}")


if __name__ == "__main__":
    main()
