"""Send layer saturation to Weights & Biases from a plain training loop (pip install 'delve_fast[wandb]').

    WANDB_MODE=offline python docs/examples/wandb_saturation.py --output runs/wandb

Every statistic is logged under ``delve/...`` with ``delve/epoch`` as its
step, and the saturation heat map (layers x epochs) as an image. Without an
active run the writer starts one (``writer_args={"wandb_init": {...}}``).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from delve_fast import SaturationTracker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/wandb")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(512, 20)
    y = x[:, :4].argmax(dim=1)

    # The few lines that add saturation tracking: save_to="wandb" (and a CSV beside it).
    tracker = SaturationTracker(
        f"{args.output}/saturation",
        save_to=["csv", "wandb"],
        modules=model,
        device="cpu",
        stats=["lsat", "idim"],
        writer_args={"wandb_init": {"project": "delve-fast-example", "dir": args.output}},
    )
    for _ in range(args.epochs):
        for i in range(0, len(x), 32):
            loss = nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        tracker.add_scalar("train_loss", loss.item())
        tracker.add_saturations()
    tracker.close()  # finishes the W&B run the writer started
    print(f"written: {args.output}/saturation.csv and the W&B run under {args.output}/wandb")


if __name__ == "__main__":
    main()
