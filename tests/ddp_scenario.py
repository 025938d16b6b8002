"""The DDP job of tests/test_distributed.py, in a module of its own.

Spawned ranks import it to find their function; it imports only torch and
delve_fast (not pytest or pandas), so each rank starts quickly.
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import torch
from torch import nn

from delve_fast import distributed as D
from delve_fast.layers import find_layers
from delve_fast.tracker import SaturationTracker


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Sequential(nn.Linear(4 * 36, 8), nn.ReLU()),
        nn.Linear(8, 3),
    ).double()


PLAIN_NAMES = ["0", "3-0", "4"]


STATS = ["lsat", "idim", "trc", "dtrc", "logdet", "det", "cov"]
EPOCHS, STEPS = 2, 3


def train_batch(rank: int, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``r``'s shard: 8 - r images a step, its inputs shifted by 2 r (different means, different counts)."""
    gen = torch.Generator().manual_seed(1000 * rank + 10 * epoch + step)
    n = 8 - rank
    x = torch.randn(n, 3, 6, 6, generator=gen, dtype=torch.float64) * (1 + rank) + 2.0 * rank
    return x, torch.randn(n, 3, generator=gen, dtype=torch.float64)


def eval_batches(rank: int) -> int:
    """Epoch 0: rank 0 has 2 eval batches, rank 1 none, rank 2 one. Epoch 1 has none anywhere."""
    return {0: 2, 1: 0, 2: 1}[rank]


def eval_batch(rank: int, b: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(50_000 + 100 * rank + b)
    return torch.randn(5, 3, 6, 6, generator=gen, dtype=torch.float64) - 3.0 * rank


def events() -> list[tuple[int, int | None]]:
    """The job's timeline: ``(epoch, step)`` for a training step, ``(epoch, None)`` for the epoch's end."""
    return [(epoch, step) for epoch in range(EPOCHS) for step in [*range(STEPS), None]]


#: Where the checkpoint tests stop the first pair of processes: after epoch 0's row and one
#: step of epoch 1, so the checkpoint holds a written row and a half-recorded epoch.
CHECKPOINT_AT = STEPS + 2


def train(
    model: nn.Module,
    tracker: SaturationTracker,
    shards: list[int],
    world: int,
    opt: torch.optim.Optimizer | None = None,
    start: int = 0,
    stop: int | None = None,
) -> list[dict]:
    """The job: DDP's loop when ``shards`` is one rank, its single-process equivalent when it is all of them.

    DDP averages the ranks' gradients of their mean losses; the single process
    takes the gradient of the average of those losses, the same quantity.
    ``start`` and ``stop`` run a slice of :func:`events` only (a job
    interrupted by a checkpoint and resumed), with the optimizer ``opt``.
    """
    opt = opt if opt is not None else make_optimizer(model)
    out = []
    for epoch, step in events()[start:stop]:
        if step is not None:
            model.train()
            opt.zero_grad()
            losses = [nn.functional.mse_loss(model(x), y) for x, y in (train_batch(r, epoch, step) for r in shards)]
            (sum(losses) / (world if len(shards) > 1 else 1)).backward()
            opt.step()
            continue
        if epoch == 0:
            model.eval()
            with torch.no_grad():
                for r in shards:
                    for b in range(eval_batches(r)):
                        model(eval_batch(r, b))
        tracker.add_scalar("lr", 0.05)  # accepted on every rank, written by rank 0 only
        out.append(tracker.add_saturations())
    return out


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)  # momentum: optimizer state to restore


def _tracker(savefile: str, model: nn.Module) -> SaturationTracker:
    return SaturationTracker(
        savefile, save_to=["csv", "npy"], modules=model, stats=STATS, device="cpu", average_sat=True
    )


def checkpoint_first_half(rank: int, world: int, out_dir: str) -> None:
    """Run the whole job uninterrupted (``full/``), then the same job up to :data:`CHECKPOINT_AT` and save.

    Each rank saves its own file: model, optimizer and ``tracker.state_dict()``
    (this rank's unmerged covariance of the open epoch).
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(small_model())
    with _tracker(str(Path(out_dir, "full", "run")), model) as tracker:
        train(model, tracker, [rank], world)

    model = DDP(small_model())
    opt = make_optimizer(model)
    with _tracker(str(Path(out_dir, "resumed", "run")), model) as tracker:
        train(model, tracker, [rank], world, opt, stop=CHECKPOINT_AT)
        checkpoint = {"model": model.module.state_dict(), "opt": opt.state_dict(), "tracker": tracker.state_dict()}
        torch.save(checkpoint, Path(out_dir, f"ckpt_rank{rank}.pt"))


def checkpoint_second_half(rank: int, world: int, out_dir: str) -> None:
    """A fresh process per rank: load this rank's checkpoint and finish the job."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    checkpoint = torch.load(Path(out_dir, f"ckpt_rank{rank}.pt"), weights_only=False)
    plain = small_model(seed=1)  # other weights: the checkpoint's must replace them
    plain.load_state_dict(checkpoint["model"])
    model = DDP(plain)
    opt = make_optimizer(model)
    opt.load_state_dict(checkpoint["opt"])
    with _tracker(str(Path(out_dir, "resumed", "run")), model) as tracker:
        tracker.load_state_dict(checkpoint["tracker"])
        train(model, tracker, [rank], world, opt, start=CHECKPOINT_AT)


def ddp_worker(rank: int, world: int, out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    t0 = time.perf_counter()
    model = DDP(small_model())
    names = {"ddp": list(find_layers(model))}
    if world == 2:  # torch.compile is lazy: wrapping compiles nothing, so this costs only its import
        names["ddp_compile"] = list(find_layers(DDP(torch.compile(small_model()))))
        names["compile_ddp"] = list(find_layers(torch.compile(DDP(small_model()))))
    savefile = str(Path(out_dir, f"rank{rank}", "run"))
    with SaturationTracker(
        savefile, save_to=["csv", "npy"], modules=model, stats=STATS, device="cpu", average_sat=True
    ) as tracker:
        values = train(model, tracker, [rank], world)
    exchange = D.last_exchange()  # of the last add_saturations()
    seconds = time.perf_counter() - t0
    Path(out_dir, f"result{rank}.pkl").write_bytes(
        pickle.dumps({"names": names, "values": values, "s": seconds, "exchange": exchange})
    )


def nan_job_batches(rank: int, epoch: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Rank ``rank``'s training inputs and eval input of :func:`nan_batch_job`'s epoch ``epoch``.

    Epoch 0: rank 0's second training batch holds a NaN, and every rank's eval batch holds one.
    Epoch 1: clean training batches; rank 1's eval batch is finite but so large (1e200) that its
    outer products overflow.
    """
    train = [train_batch(rank, epoch, step)[0] for step in range(STEPS)]
    if (epoch, rank) == (0, 0):
        train[1][2, 1, 3, 3] = float("nan")
    xe = eval_batch(rank, 0)
    if epoch == 0:
        xe[0, 0, 0, 0] = float("nan")
    elif rank == 1:
        xe = xe * 1e200
    return train, xe


def nan_batch_job(rank: int, world: int, out_dir: str) -> None:
    """Two epochs of forward passes with the bad batches of :func:`nan_job_batches`; values and warnings pickled per rank.

    A NaN batch is skipped on its own rank only; the eval cells must be NaN on every rank in both
    epochs (all-NaN batches, then a merged covariance holding Inf), and no rank may be left waiting.
    """
    import warnings

    model = small_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _tracker(str(Path(out_dir, "run")), model) as tracker:
            values = []
            for epoch in range(2):
                train, xe = nan_job_batches(rank, epoch)
                with torch.no_grad():
                    model.train()
                    for x in train:
                        model(x)
                    model.eval()
                    model(xe)
                values.append(tracker.add_saturations())
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    Path(out_dir, f"nan{rank}.pkl").write_bytes(pickle.dumps({"values": values, "warnings": messages}))


def abort_in_teardown(rank: int, world: int) -> None:
    """Finish normally, but make rank 1's process-group teardown abort the process (as gloo's may)."""
    import os

    import torch.distributed as dist

    if rank == 1:
        dist.destroy_process_group = lambda *a, **k: os.abort()


def abort_in_work(rank: int, world: int) -> None:
    """Rank 1 dies from a native abort before its work is done."""
    import os

    if rank == 1:
        os.abort()
