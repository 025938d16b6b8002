"""reconstruct_csv_from_npy_data: read back and recompute from stored covariances."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from delve_fast import SaturationTracker
from delve_fast.tools import reconstruct_csv_from_npy_data


def _record(tmp_path, stats, epochs=3) -> tuple[str, list[np.ndarray]]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 10), nn.ReLU(), nn.Linear(10, 4))
    t = SaturationTracker(str(tmp_path / "run"), save_to=["csv", "npy"], modules=net, device="cpu", stats=stats)
    g = torch.Generator().manual_seed(1)
    for epoch in range(epochs):
        net(torch.randn(40, 8, generator=g) @ torch.diag(torch.linspace(3, 0.1, 8)))
        if epoch != 1:
            t.add_scalar("loss", 1.0 + epoch)
        t.add_saturations()
    t.close()
    return str(tmp_path / "run"), []


def test_read_back_equals_csv(tmp_path):
    path, _ = _record(tmp_path, ["lsat", "idim", "trc"])
    table = reconstruct_csv_from_npy_data(path, savefile=str(tmp_path / "again.csv"))
    csv = pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0)
    assert set(table.columns) == set(csv.columns)
    pd.testing.assert_frame_equal(table[csv.columns], csv, check_dtype=False)
    assert np.isnan(table.loc[1, "loss"])
    again = pd.read_csv(tmp_path / "again.csv", sep=";", index_col=0)
    assert set(again.columns) == set(csv.columns)


def test_recompute_with_other_threshold(tmp_path):
    path, _ = _record(tmp_path, ["lsat", "cov"])
    table = reconstruct_csv_from_npy_data(path, thresh=0.8, stats=["lsat", "idim", "trc"])
    for epoch in range(3):
        name = "_train-covariance-matrix_2"
        cov = np.load(tmp_path / "run" / name / f"{name}_epoch{epoch}.npy")
        lam = np.sort(np.clip(np.linalg.eigvalsh(cov), 0, None))[::-1]
        idim = int((np.cumsum(lam) / lam.sum() < 0.8).sum())
        assert table.loc[epoch, "train-intrinsic-dimensionality_2"] == idim
        assert table.loc[epoch, "train-saturation_2"] == idim / 4
        assert table.loc[epoch, "train-covariance-trace_2"] == pytest.approx(np.trace(cov), rel=1e-12)
    assert "loss" in table.columns
    assert not any("covariance-matrix" in c for c in table.columns)


def test_recompute_needs_covariances(tmp_path):
    path, _ = _record(tmp_path, ["lsat"], epochs=1)
    with pytest.raises(FileNotFoundError, match="cov"):
        reconstruct_csv_from_npy_data(path, thresh=0.9)
    with pytest.raises(FileNotFoundError):
        reconstruct_csv_from_npy_data(str(tmp_path / "nowhere"))


def test_missing_stat_warns(tmp_path):
    path, _ = _record(tmp_path, ["lsat"], epochs=1)
    with pytest.warns(RuntimeWarning, match="intrinsic-dimensionality"):
        reconstruct_csv_from_npy_data(path, stats=["lsat", "idim"])


def test_files_of_an_epoch_that_never_committed_are_left_out(tmp_path, monkeypatch):
    # A crash inside the third save(): its .npy files are on disk, but the npy writer's
    # record of complete epochs still says 2. The table must hold epochs 0 and 1 only.
    from delve_fast.writers.npy_writer import NPYWriter

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 10), nn.ReLU(), nn.Linear(10, 4))
    t = SaturationTracker(str(tmp_path / "run"), save_to=["npy"], modules=net, device="cpu", stats=["lsat", "trc"])
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        net(torch.randn(40, 8, generator=g))
        t.add_saturations()
    complete = reconstruct_csv_from_npy_data(str(tmp_path / "run"))

    def crash(self, epochs):
        raise OSError("simulated crash before the commit record")

    monkeypatch.setattr(NPYWriter, "_write_state", crash)
    net(torch.randn(40, 8, generator=g) * 100)
    with pytest.raises(OSError, match="simulated crash"):
        t.add_saturations()
    monkeypatch.undo()
    t.close()
    name = "_train-covariance-trace_2"
    assert (tmp_path / "run" / name / f"{name}_epoch2.npy").exists()  # the uncommitted epoch's file is there

    with pytest.warns(RuntimeWarning, match=r"2 complete epochs; the files of epochs \[2\]"):
        table = reconstruct_csv_from_npy_data(str(tmp_path / "run"))
    assert list(table.index) == [0, 1]
    pd.testing.assert_frame_equal(table, complete)  # the same table as before the crashed epoch
