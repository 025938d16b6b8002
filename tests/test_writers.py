"""Writers: file layout, resume, padding, TensorBoard events, plots."""

from __future__ import annotations

import json
import os
import pickle
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from delve_fast import SaturationTracker
from delve_fast.writers import (
    WRITERS,
    AbstractWriter,
    CompositWriter,
    CSVandPlottingWriter,
    CSVWriter,
    NPYWriter,
    PrintWriter,
    TensorBoardWriter,
)
from delve_fast.writers.wandb_writer import WandbWriter


def test_registry_keys():
    assert WRITERS == {
        "csv": CSVWriter,
        "npy": NPYWriter,
        "print": PrintWriter,
        "tb": TensorBoardWriter,
        "tensorboard": TensorBoardWriter,
        "csvplotting": CSVandPlottingWriter,
        "csvplot": CSVandPlottingWriter,
        "plot": CSVandPlottingWriter,
        "plotcsv": CSVandPlottingWriter,
        "wandb": WandbWriter,
    }
    assert all(issubclass(cls, AbstractWriter) for cls in WRITERS.values())


# ------------------------------------------------------------------- CSV
def test_csv_layout(tmp_path):
    w = CSVWriter(str(tmp_path / "run"))
    w.add_scalars("", {"train-saturation_a": 0.5, "train-covariance-matrix_a": np.eye(2)})
    w.add_scalar("loss", np.float32(2.0))
    w.save()
    w.add_scalar("train-saturation_a", torch.tensor(0.25))
    w.save()
    text = (tmp_path / "run.csv").read_text().splitlines()
    assert text[0] == ";train-saturation_a;loss"
    assert text[1] == "0;0.5;2.0"
    assert text[2] == "1;0.25;"
    df = pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0)
    assert list(df.index) == [0, 1] and np.isnan(df.loc[1, "loss"])


def test_csv_repeated_name_keeps_the_last_value(tmp_path):
    w = CSVWriter(str(tmp_path / "run"))
    w.add_scalar("loss", 1.0)
    w.add_scalar("loss", 2.0)
    w.add_scalar("acc", 0.1)
    w.save()
    w.save()  # an epoch with nothing added is still a row
    df = pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0)
    assert list(df.index) == [0, 1]
    assert df.loc[0, "loss"] == 2.0 and df.loc[0, "acc"] == 0.1
    assert np.isnan(df.loc[1, "loss"]) and np.isnan(df.loc[1, "acc"])


def test_csv_resume_keeps_earlier_rows_and_missing_state_warns(tmp_path):
    w = CSVWriter(str(tmp_path / "run"))
    for v in (1.0, 2.0):
        w.add_scalar("a", v)
        w.save()
    w2 = CSVWriter(str(tmp_path / "run"))
    w2.resume_from_saved_state(2)
    w2.add_scalar("b", 3.0)
    w2.save()
    df = pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0)
    assert list(df.columns) == ["a", "b"]
    assert list(df["a"].iloc[:2]) == [1.0, 2.0] and np.isnan(df.loc[2, "a"]) and df.loc[2, "b"] == 3.0
    with pytest.warns(RuntimeWarning, match="cannot resume"):
        CSVWriter(str(tmp_path / "absent")).resume_from_saved_state(4)


def test_csv_resume_row_index_is_the_epoch(tmp_path):
    """Rows from initial_epoch on are dropped (they are recorded again); missing rows become empty."""
    w = CSVWriter(str(tmp_path / "run"))
    for v in (1.0, 2.0, 3.0):
        w.add_scalar("a", v)
        w.save()
    shorter = CSVWriter(str(tmp_path / "run"))
    shorter.resume_from_saved_state(1)
    shorter.add_scalar("a", 9.0)
    shorter.save()
    assert list(pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0)["a"]) == [1.0, 9.0]
    longer = CSVWriter(str(tmp_path / "run"))
    longer.resume_from_saved_state(4)
    longer.add_scalar("a", 5.0)
    longer.save()
    df = pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0)
    assert list(df.index) == [0, 1, 2, 3, 4]
    assert df["a"].iloc[[0, 1, 4]].tolist() == [1.0, 9.0, 5.0] and df["a"].iloc[2:4].isna().all()


# ------------------------------------------------------------------- npy
def test_npy_layout_and_resume(tmp_path):
    root = tmp_path / "run"
    w = NPYWriter(str(root))
    w.add_scalars("", {"train-covariance-matrix_x": np.eye(3), "train-saturation_x": 0.5})
    w.add_scalar("loss", 1.5)
    w.add_scalar("loss", 1.25)  # the last value of an epoch wins
    assert not root.exists()  # nothing is written before save()
    w.save()
    assert np.array_equal(
        np.load(root / "_train-covariance-matrix_x" / "_train-covariance-matrix_x_epoch0.npy"), np.eye(3)
    )
    assert np.load(root / "_train-saturation_x" / "_train-saturation_x_epoch0.npy") == 0.5
    assert np.load(root / "loss" / "loss_epoch0.npy") == 1.25
    assert sorted(os.listdir(root / "loss")) == ["loss_epoch0.npy"]
    record = json.loads((root / "epoch_counter.json").read_text())
    assert record["epochs"] == 1
    assert record["counter"] == {"_train-covariance-matrix_x": 0, "_train-saturation_x": 0, "loss": 0}
    w.add_scalar("loss", 1.0)
    w.save()
    w2 = NPYWriter(str(root))
    w2.resume_from_saved_state(1)  # epoch 1 is recorded again: its file goes
    assert sorted(os.listdir(root / "loss")) == ["loss_epoch0.npy"]
    assert json.loads((root / "epoch_counter.json").read_text())["epochs"] == 1
    w2.add_scalar("loss", 0.5)
    w2.save()
    assert np.load(root / "loss" / "loss_epoch1.npy") == 0.5


def test_npy_resume_reads_delve_pickle_counter(tmp_path):
    root = tmp_path / "run"
    (root / "loss").mkdir(parents=True)
    for epoch in range(3):
        np.save(root / "loss" / f"loss_epoch{epoch}.npy", np.float64(epoch))
    with open(root / "epoch_counter.pkl", "wb") as fh:
        pickle.dump({"loss": 2}, fh)
    w = NPYWriter(str(root))
    w.resume_from_saved_state(3)
    w.add_scalar("loss", 3.0)
    w.save()
    assert sorted(os.listdir(root / "loss")) == [f"loss_epoch{k}.npy" for k in range(4)]
    assert json.loads((root / "epoch_counter.json").read_text())["epochs"] == 4


def test_npy_resume_with_an_empty_pickle_names_the_file(tmp_path):
    """A 0-byte counter (what an interrupted pickle.dump leaves) raises a clear error, not EOFError."""
    root = tmp_path / "run"
    root.mkdir()
    (root / "epoch_counter.pkl").write_bytes(b"")
    with pytest.raises(ValueError, match="epoch_counter.pkl"):
        NPYWriter(str(root)).resume_from_saved_state(1)


def test_npy_zip(tmp_path):
    w = NPYWriter(str(tmp_path / "run"), zip=True)
    w.add_scalar("loss", 1.0)
    w.save()
    with zipfile.ZipFile(tmp_path / "run.zip") as archive:
        assert sorted(archive.namelist()) == ["run/epoch_counter.json", "run/loss/loss_epoch0.npy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run.zip"]


# ----------------------------------------------------------------- print
def test_print_writer(capsys):
    w = PrintWriter(savepath="ignored")
    w.add_scalar("loss", 0.5)
    w.add_scalars("", {"train-saturation_a": 0.25, "train-covariance-matrix_a": np.eye(4)})
    w.add_scalar("loss", 0.75)  # the last value of the epoch wins, at the first one's place
    assert capsys.readouterr().out == ""
    w.save()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "epoch 0"
    assert out[1] == "loss : 0.75"
    assert out[2] == "train-saturation_a : 0.25"
    assert "(4, 4)" in out[3] and len(out) == 4


# ----------------------------------------------------------- tensorboard
def _events(logdir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_have_global_steps(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    t = SaturationTracker(str(tmp_path / "run"), save_to="tb", modules=layer, device="cpu", stats=["lsat", "trc"])
    for epoch in range(3):
        layer(torch.randn(6, 3))
        t.add_scalar("loss", float(epoch) / 10)
        t.add_saturations()
    t.close()
    events = _events(tmp_path / "run")
    assert [step for step, _ in events["loss"]] == [0, 1, 2]
    assert [v for _, v in events["loss"]] == pytest.approx([0.0, 0.1, 0.2])
    assert [step for step, _ in events["train-saturation_Module-0-Linear"]] == [0, 1, 2]
    df = pd.read_csv(tmp_path / "run.csv", sep=";") if (tmp_path / "run.csv").exists() else None
    assert df is None  # the tensorboard writer alone writes no CSV
    assert "train-covariance-trace_Module-0-Linear" in events


def test_tensorboard_resume_continues_steps(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    w = TensorBoardWriter(str(tmp_path / "tb"))
    w.resume_from_saved_state(5)
    w.add_scalar("a", 1.0)
    w.add_scalar("a", 2.0)  # the last value of the epoch wins
    w.add_scalars("", {"b": 3.0}, global_step=9)  # the step is the epoch, not the caller's number
    w.add_scalar("m", np.eye(2))  # not a scalar: skipped
    w.save()
    w.add_scalar("a", 4.0)
    w.save()
    w.add_scalar("a", 5.0)  # the epoch never closes: not written
    w.close()
    events = _events(tmp_path / "tb")
    assert events["a"] == [(5, 2.0), (6, 4.0)]
    assert events["b"] == [(5, 3.0)]
    assert "m" not in events


# ---------------------------------------------------------------- plots
def test_plot_files_labels_and_manipulation(tmp_path):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    seen = []

    def manipulate(ax):
        seen.append((ax.get_xlabel(), ax.get_ylabel(), [t.get_text() for t in ax.get_xticklabels()], ax.get_title()))
        ax.set_facecolor("black")
        return ax

    t = SaturationTracker(
        str(tmp_path / "exp"),
        save_to="plotcsv",
        modules=net,
        device="cpu",
        stats=["lsat", "idim"],
        writer_args={"plot_manipulation_func": manipulate, "primary_metric": "acc"},
    )
    for _ in range(2):
        net.train()
        net(torch.randn(8, 4))
        t.add_scalar("acc", 0.5)
        t.add_saturations()
    t.close()
    pngs = sorted(p for p in os.listdir(tmp_path) if p.endswith(".png"))
    assert pngs == [f"exp_{s}_train_epoch_{e}.png" for s in ("idim", "lsat") for e in (0, 1)]
    assert len(seen) == 4
    xlabel, ylabel, ticks, title = seen[0]
    assert xlabel == "layers" and ylabel == "saturation" and ticks == ["0", "2"] and "epoch: 0" in title
    assert (tmp_path / "exp.csv").exists()


def test_plot_skips_all_nan_and_handles_eval(tmp_path):
    w = CSVandPlottingWriter(str(tmp_path / "p"))
    w.add_scalars("", {"eval-saturation_a": float("nan"), "train-diagonal-trace_a": 2.0, "train-diagonal-trace_b": 3.0})
    w.save()
    assert sorted(os.listdir(tmp_path)) == ["p.csv", "p_dtrc_train_epoch_0.png"]


# ------------------------------------------------------------- composite
def test_composite_forwards_everything(tmp_path):
    a, b = CSVWriter(str(tmp_path / "a")), NPYWriter(str(tmp_path / "b"))
    w = CompositWriter([a, b])
    w.add_scalar("x", 1.0)
    w.add_scalars("", {"y": 2.0})
    w.save()
    w.close()
    assert (tmp_path / "a.csv").exists() and (tmp_path / "b" / "_y" / "_y_epoch0.npy").exists()
    assert w.file_for("x", 0).endswith("x_epoch0.npy")  # reaches NPYWriter's own method
    with pytest.raises(TypeError):
        CompositWriter(["csv"])


def test_csv_save_failure_keeps_previous_rows(tmp_path, monkeypatch):
    """A crash while rewriting the CSV leaves the last complete file, not a truncated one."""
    writer = CSVWriter(str(tmp_path / "run"))
    writer.add_scalar("a", 1.0)
    writer.save()
    before = (tmp_path / "run.csv").read_text()

    def broken_to_csv(self, path, *args, **kwargs):
        with open(path, "w") as fh:
            fh.write("half a ro")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken_to_csv)
    writer.add_scalar("a", 2.0)
    with pytest.raises(OSError, match="disk full"):
        writer.save()
    assert (tmp_path / "run.csv").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.csv"]
