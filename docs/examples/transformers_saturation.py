"""Track layer saturation in a Hugging Face Trainer run (pip install 'delve_fast[hf]').

    python docs/examples/transformers_saturation.py --output runs/hf

Writes ``<output>/saturation.csv`` (one row per epoch: the epoch's training
batches and the evaluation after it) and reports the same values through
``Trainer.log``, so they reach every ``report_to`` integration and
``trainer.state.log_history``.
"""

from __future__ import annotations

import argparse

import torch
import transformers
from torch import nn

from delve_fast.integrations.transformers import SaturationCallback


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x, labels=None):
        logits = self.net(x)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


class Synthetic(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 20, generator=g)
        self.y = self.x[:, :4].argmax(dim=1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/hf")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    training_args = transformers.TrainingArguments(
        output_dir=f"{args.output}/trainer",
        num_train_epochs=args.epochs,
        per_device_train_batch_size=32,
        eval_strategy="epoch",
        save_strategy="no",
        report_to="none",  # or "wandb", "tensorboard", ...: the saturation values go there too
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=Classifier(), args=training_args, train_dataset=Synthetic(512, 0), eval_dataset=Synthetic(128, 1)
    )
    # The few lines that add saturation tracking: a callback, attached to the Trainer.
    SaturationCallback(f"{args.output}/saturation", save_to="csv", stats=["lsat", "idim"]).attach(trainer)
    trainer.train()
    rows = [e for e in trainer.state.log_history if any(k.startswith("train-saturation") for k in e)]
    print(f"{len(rows)} saturation rows in trainer.state.log_history; written: {args.output}/saturation.csv")


if __name__ == "__main__":
    main()
