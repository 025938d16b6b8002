"""The distributed ``add_saturations()``: bytes each rank sends and wall time, against one process with all the data.

The VGG-style model of the training benchmark is fed the same shards of
3 x 32 x 32 images two ways: by ``world_size`` gloo processes on this machine
(one shard each, one thread each) and by one process that sees every shard.
Each ``add_saturations()`` is timed (on the ranks from a barrier, so they
start together; the slowest rank counts), and the ranks' bytes come from
:func:`delve_fast.distributed.last_exchange`.

Run ``python -m benchmarks.distributed`` for a Markdown table.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.config import THREADS
from delve_fast.testing import vgg_benchmark_model

STATS = ["lsat", "idim"]


def _shard(rank: int, call: int, batches: int, batch: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(10_000 * call + 100 * rank)
    return [torch.randn(batch, 3, 32, 32, generator=gen) + rank for _ in range(batches)]


def _tracker(model: torch.nn.Module, savefile: str, distributed):
    from delve_fast.tracker import SaturationTracker

    return SaturationTracker(
        savefile, save_to="csv", modules=model, stats=STATS, device="cpu", backend="cpp", distributed=distributed
    )


def tracked_widths() -> list[int]:
    """Feature counts of the model's tracked layers (conv channels, linear outputs)."""
    from delve_fast.layers import find_layers

    return [
        getattr(m, "out_channels", getattr(m, "out_features", 0)) for m in find_layers(vgg_benchmark_model()).values()
    ]


def payload_bytes(widths: list[int], modes: int = 1, layers_total: int | None = None) -> dict[str, int]:
    """The formula of ``docs/distributed.md``: bytes a rank hands to the collectives, statistics excluded.

    Parameters
    ----------
    widths : list of int
        Widths of the layers with samples in ``modes`` modes.
    layers_total : int, optional
        Tracked layers (default ``len(widths)``): every (mode, layer) key has a width slot.
    """
    n_keys = 2 * (len(widths) if layers_total is None else layers_total)
    per_mode_moments = 8 * sum(1 + c for c in widths)
    per_mode_centred = 8 * sum(c * (c + 1) // 2 for c in widths)
    return {
        "header": 32,
        "widths": 16 * n_keys,
        "moments": modes * per_mode_moments,
        "centred": modes * per_mode_centred,
    }


def _rank(rank: int, world: int, out_dir: str, calls: int, batches: int, batch: int) -> None:
    import torch.distributed as dist

    from delve_fast import distributed as D

    model = vgg_benchmark_model(seed=0).eval()
    times, exchanges = [], []
    with tempfile.TemporaryDirectory() as tmp, _tracker(model, str(Path(tmp, "run")), True) as tracker:
        for call in range(calls + 1):  # the first call warms up
            with torch.no_grad():
                for x in _shard(rank, call, batches, batch):
                    model(x)
            dist.barrier()
            t0 = time.perf_counter()
            tracker.add_saturations()
            elapsed = time.perf_counter() - t0
            if call:
                times.append(elapsed)
                exchanges.append(D.last_exchange())
    Path(out_dir, f"rank{rank}.json").write_text(
        json.dumps(
            {
                "times_s": times,
                "payload_bytes": exchanges[-1].payload_bytes,
                "by_step": exchanges[-1].by_step,
                "collectives": exchanges[-1].collectives,
            }
        )
    )


def _single(world: int, calls: int, batches: int, batch: int, threads: int) -> list[float]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    model = vgg_benchmark_model(seed=0).eval()
    times = []
    try:
        with tempfile.TemporaryDirectory() as tmp, _tracker(model, str(Path(tmp, "run")), False) as tracker:
            for call in range(calls + 1):
                with torch.no_grad():
                    for rank in range(world):
                        for x in _shard(rank, call, batches, batch):
                            model(x)
                t0 = time.perf_counter()
                with contextlib.redirect_stdout(None):
                    tracker.add_saturations()
                if call:
                    times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(previous)
    return times


def run_distributed(world: int = 2, calls: int = 3, batches: int = 2, batch: int = 16) -> dict:
    """Time ``add_saturations()`` on ``world`` gloo ranks and in one process; count the ranks' bytes.

    Returns
    -------
    dict
        ``world``, ``widths``, ``ranks`` (per rank: ``times_s``, ``payload_bytes``,
        ``by_step``, ``collectives``), ``distributed_s`` (per call, slowest rank),
        ``single_s`` (one process, ``THREADS`` threads), ``single_1thread_s``,
        ``formula_bytes`` (:func:`payload_bytes`, statistics excluded).
    """
    from delve_fast.testing_distributed import run_on_gloo

    with tempfile.TemporaryDirectory(prefix="delve_fast_bench_dist_") as out:
        run_on_gloo(_rank, world, out, calls, batches, batch, timeout_s=540)
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]
    widths = tracked_widths()
    return {
        "world": world,
        "threads_per_rank": 1,
        "samples_per_rank": batches * batch,
        "widths": widths,
        "ranks": ranks,
        "distributed_s": [max(r["times_s"][i] for r in ranks) for i in range(calls)],
        "single_s": _single(world, calls, batches, batch, THREADS),
        "single_threads": THREADS,
        "single_1thread_s": _single(world, calls, batches, batch, 1),
        "formula_bytes": payload_bytes(widths),
    }


def markdown(result: dict) -> str:
    """The figures as a short Markdown table."""
    med = {k: statistics.median(result[k]) * 1e3 for k in ("distributed_s", "single_s", "single_1thread_s")}
    r0 = result["ranks"][0]
    formula = sum(result["formula_bytes"].values())
    lines = [
        "| setting | `add_saturations()` median (ms) |",
        "|---|---|",
        f"| {result['world']} gloo processes, 1 thread each | {med['distributed_s']:.1f} |",
        f"| 1 process, {result['single_threads']} threads, all shards | {med['single_s']:.1f} |",
        f"| 1 process, 1 thread, all shards | {med['single_1thread_s']:.1f} |",
        "",
        f"Bytes rank 0 handed to {r0['collectives']} collectives per call: {r0['payload_bytes']:,} "
        f"({', '.join(f'{k} {v:,}' for k, v in r0['by_step'].items())}); "
        f"formula without the statistics: {formula:,}.",
    ]
    return "\n".join(lines)


def main() -> None:
    torch.set_num_threads(THREADS)
    result = run_distributed(calls=5)
    print(markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k != "ranks"} | {"ranks": result["ranks"]}, indent=1))


if __name__ == "__main__":
    main()
