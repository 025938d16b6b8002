"""Track layer saturation in a PyTorch Lightning run (pip install 'delve_fast[lightning]').

    python docs/examples/lightning_saturation.py --output runs/lightning

Writes ``<output>/saturation.csv`` (one row per epoch, training and
validation), the per-epoch plots, and the same values in Lightning's
``<output>/logs/.../metrics.csv``.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
from torch import nn

from delve_fast.integrations.lightning import SaturationCallback


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def data(n: int, seed: int) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=g)
    y = (x[:, :4].argmax(dim=1)).long()  # a learnable rule
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/lightning")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    # The few lines that add saturation tracking: one callback.
    saturation = SaturationCallback(f"{args.output}/saturation", save_to="plot", stats=["lsat", "idim"])
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        callbacks=[saturation],
        logger=pl.loggers.CSVLogger(args.output, name="logs"),
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    trainer.fit(Classifier(), data(512, 0), data(128, 1))
    print(
        "saturation of the last epoch:",
        {k: round(v, 3) for k, v in saturation.last_values.items() if "saturation" in k},
    )
    print(f"written: {args.output}/saturation.csv")


if __name__ == "__main__":
    main()
