"""Run a function on several gloo processes on this machine, with a deadline: for tests and benchmarks.

Nothing here is imported by the library itself. Each process joins a gloo
group through a file store (no port to pick), runs ``fn(rank, world_size,
*args)`` and leaves the group; a traceback is written to the work folder and
re-raised in the caller, and a process still running at the deadline is
killed, so a hang fails instead of blocking. A rank that torch's own
process-group teardown aborts after every rank has finished its work (past a
final barrier) is reported with a warning and its native stack instead.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

__all__ = ["run_on_gloo", "DistributedRunError"]


class DistributedRunError(RuntimeError):
    """A rank failed, or the run did not finish before its deadline."""


def _entry(rank: int, world: int, store: str, errors: str, collective_timeout_s: float, fn: Callable, args) -> None:
    import faulthandler

    import torch
    import torch.distributed as dist

    # A native abort writes no Python traceback; faulthandler records where it happened.
    fault_log = open(Path(errors, f"rank{rank}.fault"), "w")  # noqa: SIM115 - open until the process exits
    faulthandler.enable(fault_log, all_threads=True)
    torch.set_num_threads(1)  # W processes share the machine's cores
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{store}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=collective_timeout_s),
        )
        try:
            fn(rank, world, *args)
            # DDP's reducer keeps the group alive from inside reference cycles; free it now, while
            # the interpreter is whole, and leave together, so no rank tears its gloo threads down
            # while a peer still has a collective in flight.
            gc.collect()
            dist.barrier()
            # Every rank has finished every collective: what follows is torch's teardown only.
            Path(errors, f"rank{rank}.done").touch()
        finally:
            dist.destroy_process_group()
            gc.collect()
    except BaseException:
        Path(errors, f"rank{rank}.txt").write_text(traceback.format_exc())
        raise SystemExit(1) from None
    # The rank's work is done and its files are closed. A spawned process would now run the
    # interpreter's finalisation, where torch's C++ singletons (gloo's worker threads among
    # them) are destroyed in no fixed order; on a loaded machine that rarely aborts a rank that
    # succeeded. Leave as a forked worker does, without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_on_gloo(
    fn: Callable[..., Any], world_size: int, *args: Any, timeout_s: float = 120.0, collective_timeout_s: float = 60.0
) -> None:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` spawned processes joined in one gloo group.

    Parameters
    ----------
    fn : callable
        A module-level function (spawned processes import it by name).
    world_size : int
    *args
        Picklable arguments passed after ``rank, world_size``.
    timeout_s : float, default 120
        Deadline for the whole run; processes still alive then are killed.
    collective_timeout_s : float, default 60
        gloo's timeout of one collective, so a rank waiting on a peer that
        never comes fails by itself too.

    Raises
    ------
    DistributedRunError
        When a rank exits with an error (its traceback is in the message) or
        the deadline passes.
    """
    import multiprocessing as mp
    import time

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="delve_fast_gloo_") as tmp:
        store = os.path.join(tmp, "store")
        procs = [
            ctx.Process(target=_entry, args=(r, world_size, store, tmp, collective_timeout_s, fn, args), daemon=True)
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout_s
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for r in hung:
            procs[r].kill()
            procs[r].join(5)
        failed = [r for r, p in enumerate(procs) if r not in hung and p.exitcode != 0]
        # A rank killed by a signal after the barrier that follows ``fn`` (its done mark) crashed in
        # torch's process-group teardown, with all its work done and every peer past its last
        # collective; that is reported as a warning, with the native stack, not as a failure.
        teardown = [
            r
            for r in failed
            if procs[r].exitcode < 0 and Path(tmp, f"rank{r}.done").exists() and not Path(tmp, f"rank{r}.txt").exists()
        ]
        for r in teardown:
            warnings.warn(
                "torch's process-group teardown aborted a rank that had finished: "
                + _report(tmp, r, procs[r].exitcode),
                RuntimeWarning,
                stacklevel=2,
            )
        failures = [_report(tmp, r, procs[r].exitcode) for r in failed if r not in teardown]
        if hung or failures:
            head = f"ranks {hung} still running after {timeout_s:.0f} s and killed\n" if hung else ""
            raise DistributedRunError(head + "\n".join(failures))


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else "(no traceback written)"


def _report(folder: str, rank: int, exitcode: int | None) -> str:
    fault = Path(folder, f"rank{rank}.fault")
    native = fault.read_text().strip() if fault.exists() else ""
    text = f"rank {rank} (exit code {exitcode}):\n" + _read(Path(folder, f"rank{rank}.txt"))
    return text + (f"\nfaulthandler:\n{native}" if native else "")
