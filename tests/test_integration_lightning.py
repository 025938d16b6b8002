"""SaturationCallback in a real PyTorch Lightning fit: values, files, loggers, sanity check, checkpoint resume."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch", reason="needs lightning (pip install 'delve_fast[lightning]')")

from delve_fast.integrations._testing import (  # noqa: E402
    ActivationRecorder,
    assert_rows_equal,
    read_csv_rows,
    replay,
)
from delve_fast.integrations.lightning import SaturationCallback  # noqa: E402

STATS = ["lsat", "idim", "trc"]
N_TRAIN, N_VAL, BATCH = 48, 32, 16  # 3 training and 2 validation batches per epoch


class TinyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loaders() -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    g = torch.Generator().manual_seed(0)
    train = torch.utils.data.TensorDataset(
        torch.randn(N_TRAIN, 6, generator=g), torch.randint(0, 3, (N_TRAIN,), generator=g)
    )
    val = torch.utils.data.TensorDataset(torch.randn(N_VAL, 6, generator=g), torch.randint(0, 3, (N_VAL,), generator=g))
    return (
        torch.utils.data.DataLoader(train, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(1)),
        torch.utils.data.DataLoader(val, batch_size=BATCH),
    )


def make_trainer(tmp_path: Path, callbacks: list, max_epochs: int, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=kwargs.pop("logger", False),
        enable_checkpointing=kwargs.pop("enable_checkpointing", False),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=str(tmp_path),
        **kwargs,
    )


def epoch_rows(trainer_box: list) -> callable:
    """Row = the epoch; sanity-check batches belong to no row."""

    def row_of(mode: str):
        trainer = trainer_box[0]
        return None if trainer.sanity_checking else trainer.current_epoch

    return row_of


def logger_rows(metrics_csv: Path, keys: set[str]) -> list[dict[str, float]]:
    """Rows of a CSVLogger's metrics.csv that hold the saturation keys."""
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: float(r[k]) for k in keys if r.get(k)} for r in rows if any(r.get(k) for k in keys)]


def test_fit_logs_same_values_as_plain_tracker(tmp_path):
    torch.manual_seed(0)
    model = TinyModule()
    box: list = []
    recorder = ActivationRecorder(model, epoch_rows(box))
    savefile = str(tmp_path / "sat" / "run")
    callback = SaturationCallback(savefile, save_to=["csv", "npy"], stats=STATS)
    logger = pl.loggers.CSVLogger(str(tmp_path), name="logs", version=0)
    trainer = make_trainer(tmp_path, [callback], max_epochs=2, logger=logger, num_sanity_val_steps=2)
    box.append(trainer)
    trainer.fit(model, *loaders())
    recorder.remove()

    expected = replay(recorder.records, list(recorder.layers), rows=[0, 1], stats=STATS)
    assert all(any(k.startswith("eval-") for k in row) for row in expected)  # both rows hold validation stats
    # The tracker's own CSV: one row per epoch, equal to the plain tracker's.
    written = read_csv_rows(savefile + ".csv")
    assert len(written) == 2
    for i in range(2):
        assert_rows_equal(written[i], expected[i], f"CSV row {i}")
    # The npy writer (a second writer of the same tracker) kept each epoch's values too.
    for i in range(2):
        for col in expected[i]:
            np.testing.assert_allclose(
                np.load(Path(savefile, f"_{col}", f"_{col}_epoch{i}.npy")), expected[i][col], rtol=1e-12
            )
    # The Trainer's logger got the same values, once per epoch.
    keys = set(expected[0])
    logged = logger_rows(tmp_path / "logs" / "version_0" / "metrics.csv", keys)
    assert len(logged) == 2
    for i in range(2):
        assert_rows_equal(logged[i], expected[i], f"metrics.csv row {i}")
    assert_rows_equal(callback.last_values, expected[1], "last_values")

    # Sanity-check batches were run but not counted; counting them would change epoch 0's eval values.
    assert recorder.left_out and all(mode == "eval" for mode, _, _ in recorder.left_out)
    with_sanity = replay(recorder.records, list(recorder.layers), rows=[0], extra=recorder.left_out, stats=STATS)[0]
    trc_keys = [k for k in expected[0] if k.startswith("eval-covariance-trace")]
    assert any(not math.isclose(with_sanity[k], expected[0][k], rel_tol=1e-9) for k in trc_keys)

    # Detached at the end: no tracker, and only the recorder's hooks were ever left on the layers.
    assert callback.tracker is None
    # A checkpoint saved after fit still holds the final state (two rows written).
    trainer.save_checkpoint(tmp_path / "after.ckpt")
    saved = torch.load(tmp_path / "after.ckpt", weights_only=False)["callbacks"]
    assert [v["epoch"] for k, v in saved.items() if "SaturationCallback" in k] == [2]
    assert all(len(layer._forward_hooks) == 0 for layer in recorder.layers.values())


def test_every_n_steps_rows_include_the_validation_run_before_them(tmp_path):
    torch.manual_seed(0)
    model = TinyModule()
    box: list = []
    n = 2

    def row_of(mode: str):
        trainer = box[0]
        if trainer.sanity_checking:
            return None
        steps = trainer.global_step
        # A training batch taken after `steps` optimizer steps is step steps+1; a validation run
        # after step g belongs to the row that closes at the next multiple of n.
        return steps // n if mode == "train" else (steps - 1) // n

    recorder = ActivationRecorder(model, row_of)
    savefile = str(tmp_path / "steps")
    callback = SaturationCallback(savefile, save_to="csv", every_n_epochs=None, every_n_steps=n, stats=STATS)
    trainer = make_trainer(tmp_path, [callback], max_epochs=2, num_sanity_val_steps=0)
    box.append(trainer)
    trainer.fit(model, *loaders())
    recorder.remove()

    expected = replay(recorder.records, list(recorder.layers), rows=[0, 1, 2], stats=STATS)
    written = read_csv_rows(savefile + ".csv")
    assert len(written) == 3  # 6 optimizer steps, a row every 2
    for i in range(3):
        assert_rows_equal(written[i], expected[i], f"CSV row {i}")
    assert not any(k.startswith("eval-") for k in written[0])  # no validation before step 2
    assert any(k.startswith("eval-") for k in written[1])  # epoch 0's validation ran after step 3


def _resume(tmp_path: Path, every_n_epochs: int) -> tuple[list, list, list, str]:
    """Fit one epoch with a checkpoint, then resume to two epochs with a new callback."""
    savefile = str(tmp_path / "resume")
    records, layers = [], None
    ckpt_dir = tmp_path / "ckpt"
    for max_epochs, ckpt_path in ((1, None), (2, str(ckpt_dir / "last.ckpt"))):
        torch.manual_seed(0)
        model = TinyModule()
        box: list = []
        recorder = ActivationRecorder(model, epoch_rows(box))
        callback = SaturationCallback(
            savefile, save_to="csv", every_n_epochs=every_n_epochs, flush_at_end=False, stats=STATS
        )
        checkpoint = pl.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), save_last=True)
        trainer = make_trainer(
            tmp_path, [callback, checkpoint], max_epochs=max_epochs, enable_checkpointing=True, num_sanity_val_steps=0
        )
        box.append(trainer)
        trainer.fit(model, *loaders(), ckpt_path=ckpt_path)
        recorder.remove()
        records += recorder.records
        layers = list(recorder.layers)
    state = torch.load(ckpt_dir / "last.ckpt", weights_only=False)["callbacks"]
    return records, layers, state, savefile


def test_resume_from_checkpoint_appends_rows(tmp_path):
    records, layers, state, savefile = _resume(tmp_path, every_n_epochs=1)
    (key,) = [k for k in state if "SaturationCallback" in k]
    assert state[key]["epoch"] == 2  # the second run's checkpoint: two rows written in all
    expected = replay(records, layers, rows=[0, 1], stats=STATS)
    written = read_csv_rows(savefile + ".csv")
    assert len(written) == 2  # the resumed run kept the first run's row
    for i in range(2):
        assert_rows_equal(written[i], expected[i], f"CSV row {i}")


def test_resume_mid_period_keeps_the_covariance(tmp_path):
    # A row every 2 epochs, checkpoint after epoch 0: the covariance of epoch 0 must survive the restart.
    # The reference is the uninterrupted row: one plain tracker fed every batch of both fits (epoch 0
    # from the first, epoch 1 from the resumed one) before a single add_saturations(). A rerun of fit
    # without the restart would not see the same batches (the resumed loader reshuffles from its seed).
    records, layers, _, savefile = _resume(tmp_path, every_n_epochs=2)
    expected = replay([(0, m, n, y) for _, m, n, y in records], layers, rows=[0], stats=STATS)
    written = read_csv_rows(savefile + ".csv")
    assert len(written) == 1
    assert_rows_equal(written[0], expected[0], "CSV row 0 (epochs 0 and 1)")


def test_ddp_on_two_processes_logs_the_merged_values_from_rank_zero_only(tmp_path):
    # Lightning's own launcher (ddp_spawn, gloo on 2 CPU processes), each rank an unshuffled half
    # of the data through Lightning's DistributedSampler.
    import lightning_ddp_scenario as S

    out = tmp_path / "out"
    out.mkdir()
    savefile = str(tmp_path / "sat" / "run")
    callback = SaturationCallback(savefile, save_to=["csv", "npy"], stats=S.STATS)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=S.RecordingLogger(str(out)),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[callback, S.ActivationDump(str(out), callback)],
        default_root_dir=str(tmp_path),
    )
    trainer.fit(S.TinyModule(), *S.loaders())

    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    layers = ranks[0]["layers"]
    # The single-process reference: one plain tracker fed both ranks' layer outputs, epoch by epoch.
    records = ranks[0]["records"] + ranks[1]["records"]
    assert {row for row, *_ in ranks[1]["records"]} == {0, 1}  # rank 1 did train and validate
    expected = replay(records, layers, rows=[0, 1], stats=S.STATS)

    # Rank 0's CSV row = the statistics of both shards. Tolerance 1e-9: the merge adds the two
    # ranks' float64 sums in another order than one state fed every batch (differences ~1e-15),
    # which eigen solves of these full-rank, well-conditioned 3..10-wide covariances amplify by far
    # less than 1e6.
    written = read_csv_rows(savefile + ".csv")
    assert len(written) == 2
    for i in range(2):
        assert set(written[i]) == set(expected[i])
        for key, want in expected[i].items():
            assert written[i][key] == pytest.approx(float(want), rel=1e-9, abs=0), (i, key)
    # Both ranks computed the same merged values; only rank 0 had writers.
    assert ranks[0]["last_values"] == ranks[1]["last_values"]
    assert ranks[0]["last_values"]["train-saturation_net-0"] == written[1]["train-saturation_net-0"]
    assert ranks[0]["writers"] == ["CSVWriter", "NPYWriter"] and ranks[1]["writers"] == []

    # The logger (no rank guard of its own; Lightning hands it val_loss on every rank) got the
    # saturation values from rank 0 only, once per epoch, equal to the CSV row.
    def logged(rank: int) -> list[dict[str, float]]:
        path = out / f"logged_rank{rank}.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line)["metrics"] for line in lines]

    assert not any(key in expected[0] for row in logged(1) for key in row)
    saturation_rows = [m for m in logged(0) if "train-saturation_net-0" in m]
    assert len(saturation_rows) == 2
    for i, row in enumerate(saturation_rows):
        for key, value in written[i].items():
            assert row[key] == pytest.approx(value, rel=1e-12, abs=0), (i, key)
