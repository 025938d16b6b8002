"""One epoch, one label: every add_saturations() is one CSV row, and its number is the npy file
number, the plot number and the TensorBoard step. A name added several times within an epoch
keeps its last value in every writer."""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from delve_fast import SaturationTracker

LAYER = "Module-0-Linear"


def _events(logdir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _writers() -> list[str]:
    try:
        import tensorboard  # noqa: F401

        return ["csv", "npy", "plot", "tb"]
    except ImportError:
        return ["csv", "npy", "plot"]


def _plot_epochs(folder, stat="lsat") -> list[int]:
    return sorted(
        int(m.group(1)) for f in os.listdir(folder) if (m := re.fullmatch(rf"run_{stat}_train_epoch_(\d+)\.png", f))
    )


def _npy_epochs(folder, name) -> list[int]:
    return sorted(int(f[len(name) + 6 : -4]) for f in os.listdir(folder / name))


def test_per_step_scalars_with_per_epoch_saturations(tmp_path):
    """3 epochs of 4 steps, add_scalar every step: 3 rows, the last loss of each epoch everywhere."""
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    save_to = _writers()
    t = SaturationTracker(str(tmp_path / "run"), save_to=save_to, modules=layer, device="cpu")
    losses = {}
    for epoch in range(3):
        for step in range(4):
            layer(torch.randn(5, 3))
            losses[epoch] = 10.0 * epoch + step
            t.add_scalar("loss", losses[epoch])
        t.add_saturations()
    t.close()
    df = pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0)
    assert list(df.index) == [0, 1, 2]
    assert df["loss"].tolist() == [losses[0], losses[1], losses[2]] == [3.0, 13.0, 23.0]
    npy = tmp_path / "run"
    assert _npy_epochs(npy, "loss") == [0, 1, 2]
    assert [float(np.load(npy / "loss" / f"loss_epoch{e}.npy")) for e in range(3)] == [3.0, 13.0, 23.0]
    assert _npy_epochs(npy, f"_train-saturation_{LAYER}") == [0, 1, 2]
    assert _plot_epochs(tmp_path) == [0, 1, 2]
    if "tb" in save_to:
        events = _events(tmp_path / "run")
        assert events["loss"] == [(0, 3.0), (1, 13.0), (2, 23.0)]
        assert [s for s, _ in events[f"train-saturation_{LAYER}"]] == [0, 1, 2]


def test_epoch_without_data_is_still_a_row(tmp_path):
    """Epoch 1 sees no forward pass: its CSV row is empty, and epoch 2 is still labelled 2 everywhere."""
    torch.manual_seed(1)
    layer = nn.Linear(3, 2)
    save_to = _writers()
    t = SaturationTracker(str(tmp_path / "run"), save_to=save_to, modules=layer, device="cpu")
    for epoch in range(3):
        if epoch != 1:
            layer(torch.randn(6, 3))
        assert t.epoch == epoch
        t.add_saturations()
    t.close()
    df = pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0)
    column = f"train-saturation_{LAYER}"
    assert list(df.index) == [0, 1, 2]
    assert df[column].notna().tolist() == [True, False, True]
    assert _npy_epochs(tmp_path / "run", f"_{column}") == [0, 2]
    assert _plot_epochs(tmp_path) == [0, 2]
    if "tb" in save_to:
        assert [s for s, _ in _events(tmp_path / "run")[column]] == [0, 2]


def test_epochs_with_no_column_at_all_are_rows(tmp_path):
    """Nothing tracked, nothing logged: the CSV still has one (empty) row per epoch."""
    with pytest.warns(RuntimeWarning, match="no layer to track"):
        t = SaturationTracker(str(tmp_path / "run"), save_to="csv", modules=nn.ReLU(), device="cpu")
    t.add_saturations()
    t.add_saturations()
    t.close()
    assert list(pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0).index) == [0, 1]
    t = SaturationTracker(str(tmp_path / "run"), save_to="csv", modules=nn.Linear(2, 2), device="cpu", initial_epoch=2)
    t.add_scalar("loss", 1.0)
    t.add_saturations()
    t.close()
    df = pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0)
    assert list(df.index) == [0, 1, 2] and df["loss"].isna().tolist() == [True, True, False]


def test_resume_numbers_from_initial_epoch(tmp_path):
    torch.manual_seed(2)
    layer = nn.Linear(3, 2)
    t = SaturationTracker(str(tmp_path / "run"), save_to=["csv", "npy", "plot"], modules=layer, device="cpu")
    for _ in range(2):
        layer(torch.randn(6, 3))
        t.add_saturations()
    t.close()
    t = SaturationTracker(
        str(tmp_path / "run"), save_to=["csv", "npy", "plot"], modules=layer, device="cpu", initial_epoch=2
    )
    layer(torch.randn(6, 3))
    t.add_saturations()
    t.close()
    assert list(pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0).index) == [0, 1, 2]
    assert _npy_epochs(tmp_path / "run", f"_train-saturation_{LAYER}") == [0, 1, 2]
    assert _plot_epochs(tmp_path) == [0, 1, 2]


def test_save_false_keeps_the_epoch_open(tmp_path):
    """add_saturations(save=False) hands values over without closing the epoch; the next call's values win."""
    torch.manual_seed(3)
    layer = nn.Linear(3, 2)
    t = SaturationTracker(str(tmp_path / "run"), save_to=["csv", "npy"], modules=layer, device="cpu", stats=["trc"])
    layer(torch.randn(6, 3))
    first = t.add_saturations(save=False)
    assert t.epoch == 0 and not (tmp_path / "run.csv").exists()
    layer(torch.randn(6, 3) * 3)
    second = t.add_saturations()
    t.close()
    column = f"train-covariance-trace_{LAYER}"
    assert first[column] != second[column]
    df = pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0)
    assert df[column].tolist() == [second[column]]
    assert float(np.load(tmp_path / "run" / f"_{column}" / f"_{column}_epoch0.npy")) == second[column]


def test_print_writer_agrees(tmp_path, capsys):
    torch.manual_seed(4)
    layer = nn.Linear(3, 2)
    t = SaturationTracker(str(tmp_path / "run"), save_to="print", modules=layer, device="cpu")
    for epoch in range(2):
        for step in range(3):
            layer(torch.randn(5, 3))
            t.add_scalar("loss", float(step + 10 * epoch))
        t.add_saturations()
    t.close()
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith(("epoch", "loss"))] == [
        "epoch 0",
        "loss : 2.0",
        "epoch 1",
        "loss : 12.0",
    ]
