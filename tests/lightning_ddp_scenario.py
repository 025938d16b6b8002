"""The Lightning DDP job of tests/test_integration_lightning.py, in a module of its own.

``Trainer(strategy="ddp_spawn")`` pickles the callbacks and the LightningModule
into the spawned ranks, which import this module to rebuild them; keeping it
out of the test module means the ranks do not import pytest or the tests.
Each rank writes what it saw to the output folder: every layer output the
tracked layers produced (labelled with its epoch, to replay into one plain
tracker afterwards), what the Trainer's logger was handed, and what writers
its tracker had.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from delve_fast.integrations._testing import ActivationRecorder

STATS = ["lsat", "idim", "trc"]
N_TRAIN, N_VAL, BATCH = 48, 32, 8  # per rank: 3 training and 2 validation batches per epoch on 2 ranks


class TinyModule(pl.LightningModule):
    """Float64 MLP: the merged statistics are compared to a single process at 1e-9."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3)).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loaders() -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """Unshuffled loaders; Lightning gives each rank its half through a DistributedSampler."""
    g = torch.Generator().manual_seed(0)
    # Rank-dependent content comes from the sampler: rank r gets samples r, r + 2, ...;
    # the offset on the second half gives the two shards different means.
    x = torch.randn(N_TRAIN, 6, generator=g, dtype=torch.float64)
    x[1::2] += 3.0
    train = torch.utils.data.TensorDataset(x, torch.randint(0, 3, (N_TRAIN,), generator=g))
    val = torch.utils.data.TensorDataset(
        torch.randn(N_VAL, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (N_VAL,), generator=g)
    )
    return (
        torch.utils.data.DataLoader(train, batch_size=BATCH, shuffle=False),
        torch.utils.data.DataLoader(val, batch_size=BATCH),
    )


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


class RecordingLogger(pl.loggers.Logger):
    """A logger that writes down every call it gets, on whichever rank (no rank-zero guard of its own)."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        with open(Path(self.out_dir, f"logged_rank{_rank()}.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, "metrics": {k: float(v) for k, v in metrics.items()}}) + "\n")


class ActivationDump(pl.Callback):
    """Record the tracked layers' outputs on this rank; at fit end dump them with the tracker's writer list.

    Placed after the SaturationCallback, so that at ``on_fit_start`` its tracker exists.
    """

    def __init__(self, out_dir: str, saturation_callback: pl.Callback) -> None:
        self.out_dir = out_dir
        self.saturation_callback = saturation_callback
        self.recorder: ActivationRecorder | None = None
        self.writers: list[str] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def row_of(mode: str) -> int | None:
            return None if trainer.sanity_checking else trainer.current_epoch

        self.recorder = ActivationRecorder(pl_module, row_of)
        writer = self.saturation_callback.tracker.writer
        self.writers = [type(w).__name__ for w in getattr(writer, "writers", [writer])]

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.recorder is not None
        self.recorder.remove()
        torch.save(
            {
                "records": self.recorder.records,
                "layers": list(self.recorder.layers),
                "writers": self.writers,
                "last_values": self.saturation_callback.last_values,
            },
            Path(self.out_dir, f"rank{trainer.global_rank}.pt"),
        )
