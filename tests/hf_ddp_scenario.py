"""A Hugging Face Trainer job on 2 gloo ranks, run by tests/test_integration_transformers.py with torchrun.

``python -m torch.distributed.run --standalone --nproc-per-node 2 hf_ddp_scenario.py OUT``.
The Trainer sees torchrun's environment and wraps the model in
DistributedDataParallel on gloo (``use_cpu=True``); each rank trains and
evaluates its shard. Every rank writes what it saw to ``OUT/rank<r>.pt``: each
output of a tracked layer, labelled with its row, so that one plain tracker can
replay both shards afterwards; the rank's ``log_history``; and its tracker's
writers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import transformers
from torch import nn

from delve_fast.integrations._testing import ActivationRecorder
from delve_fast.integrations.transformers import SaturationCallback

STATS = ["lsat", "idim", "trc"]
N_TRAIN, N_VAL, BATCH = 48, 32, 8  # per rank: 3 training and 2 evaluation batches per epoch


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class Samples(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 6, generator=g)
        self.x[1::2] += 3.0  # the shards' means differ
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class RowTagger(transformers.TrainerCallback):
    """Row k: training epoch k and the k-th evaluation (the one at that epoch's end)."""

    def __init__(self) -> None:
        self.epoch = -1
        self.evaluations = 0

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch += 1

    def on_evaluate(self, args, state, control, **kwargs):
        self.evaluations += 1

    def row_of(self, mode: str) -> int:
        return self.epoch if mode == "train" else self.evaluations


class WriterProbe(transformers.TrainerCallback):
    """The writers of the saturation callback's tracker on this rank (only rank 0 should have any)."""

    def __init__(self, callback: SaturationCallback) -> None:
        self.callback = callback
        self.writers: list[str] | None = None

    def on_step_end(self, args, state, control, **kwargs):
        writer = self.callback.tracker.writer
        self.writers = [type(w).__name__ for w in getattr(writer, "writers", [writer])]


def main(out_dir: str) -> None:
    model = Classifier()
    tagger = RowTagger()
    recorder = ActivationRecorder(model, tagger.row_of)
    args = transformers.TrainingArguments(
        output_dir=str(Path(out_dir, "trainer")),
        num_train_epochs=2,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=BATCH,
        learning_rate=0.05,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        ddp_backend="gloo",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Samples(N_TRAIN, 0), eval_dataset=Samples(N_VAL, 1), callbacks=[tagger]
    )
    callback = SaturationCallback(str(Path(out_dir, "sat", "run")), save_to=["csv"], stats=STATS).attach(trainer)
    probe = WriterProbe(callback)
    trainer.add_callback(probe)
    trainer.train()
    recorder.remove()
    rank = dist.get_rank()
    torch.save(
        {
            "world": dist.get_world_size(),
            "layers": list(recorder.layers),
            "records": recorder.records,
            "log_history": trainer.state.log_history,
            "writers": probe.writers,
            "last_values": callback.last_values,
        },
        Path(out_dir, f"rank{rank}.pt"),
    )
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
    # Everything is written. Leave without the interpreter's finalisation, where torch's C++
    # singletons (gloo's threads among them) are torn down in no fixed order: on a loaded machine
    # that rarely aborts a rank that has finished, which torchrun reports as a failed job.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
