"""Parity with the real delve 0.1.50, and with a NumPy float64 oracle.

The delve comparisons use one batch per mode per epoch: there delve 0.1.50's
"only the last batch counts" bug does not change its numbers, so both
trackers must agree. With several batches per epoch delve_fast is compared
with ``np.cov`` of all stacked samples instead.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from delve_fast import SaturationTracker

STATS = ["lsat", "idim", "trc", "dtrc"]


def _idim_oracle(cov: np.ndarray, threshold: float) -> int:
    """delve 0.1.50's tracker rule, written independently with NumPy: count the shares below threshold."""
    lam = np.sort(np.clip(np.linalg.eigvalsh(cov), 0.0, None))[::-1]
    shares = np.cumsum(lam) / lam.sum()
    kept = [s for s in shares if s < threshold]
    return len(kept)


def _read(path: str) -> pd.DataFrame:
    return pd.read_csv(path, sep=";", index_col=0)


def _assert_same_tables(ours: pd.DataFrame, theirs: pd.DataFrame) -> None:
    assert set(ours.columns) == set(theirs.columns)
    assert list(ours.index) == list(theirs.index)
    for col in theirs.columns:
        a, b = ours[col].to_numpy(float), theirs[col].to_numpy(float)
        if "saturation" in col or "intrinsic-dimensionality" in col:
            np.testing.assert_array_equal(a, b, err_msg=col)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=0, err_msg=col)


def _run_both(tmp_path, model: nn.Module, make_input, epochs: int = 2, modules=None, **kwargs) -> tuple:
    delve = pytest.importorskip("delve", reason="delve==0.1.50 is not installed (pip install delve_fast[delve])")
    if getattr(delve, "__version__", None) != "0.1.50":
        pytest.skip(f"parity is defined against delve 0.1.50, found {getattr(delve, '__version__', '?')}")
    target = model if modules is None else modules
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = delve.SaturationTracker(
            str(tmp_path / "delve" / "run"), save_to="csv", modules=target, device="cpu", stats=STATS, **kwargs
        )
        ours = SaturationTracker(
            str(tmp_path / "fast" / "run"), save_to="csv", modules=target, device="cpu", stats=STATS, **kwargs
        )
        gen = torch.Generator().manual_seed(1234)
        for _ in range(epochs):
            model.train()
            model(make_input(gen))
            model.eval()
            with torch.no_grad():
                model(make_input(gen))
            theirs.add_scalar("loss", 0.5)
            ours.add_scalar("loss", 0.5)
            theirs.add_saturations()
            ours.add_saturations()
        theirs.close()
        ours.close()
    return _read(str(tmp_path / "fast" / "run.csv")), _read(str(tmp_path / "delve" / "run.csv"))


@pytest.mark.delve
def test_linear_mlp_matches_delve(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
    ours, theirs = _run_both(tmp_path, model, lambda g: torch.randn(64, 12, generator=g))
    assert {"train-saturation_0", "eval-saturation_4", "loss"} <= set(ours.columns)
    _assert_same_tables(ours, theirs)


@pytest.mark.delve
@pytest.mark.parametrize("conv_method", ["channelwise", "mean", "max", "flatten"])
def test_conv_matches_delve(tmp_path, conv_method):
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 4)
    )
    ours, theirs = _run_both(tmp_path, model, lambda g: torch.randn(24, 3, 8, 8, generator=g), conv_method=conv_method)
    assert "train-intrinsic-dimensionality_2" in ours.columns
    _assert_same_tables(ours, theirs)


class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(5, 7, batch_first=True)
        self.head = nn.Linear(7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


@pytest.mark.delve
def test_lstm_batch_first_last_timestep_matches_delve(tmp_path):
    torch.manual_seed(2)
    model = _Recurrent()
    ours, theirs = _run_both(
        tmp_path, model, lambda g: torch.randn(40, 6, 5, generator=g), timeseries_method="last_timestep"
    )
    assert "train-saturation_lstm" in ours.columns
    _assert_same_tables(ours, theirs)


@pytest.mark.delve
def test_list_of_layers_named_like_delve(tmp_path):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 4))
    ours, theirs = _run_both(tmp_path, model, lambda g: torch.randn(30, 6, generator=g), modules=[model[0], model[2]])
    assert "train-saturation_Module-1-Linear" in ours.columns
    _assert_same_tables(ours, theirs)


# --------------------------------------------------------------------------
# Several batches per epoch: NumPy float64 covariance of all stacked samples.
# --------------------------------------------------------------------------
@pytest.mark.parametrize("batches", [1, 3])
def test_accumulates_all_batches_like_numpy(tmp_path, batches):
    torch.manual_seed(4)
    layer = nn.Linear(7, 6)
    seen: list[np.ndarray] = []
    layer.register_forward_hook(lambda m, i, o: seen.append(o.detach().double().numpy()))
    tracker = SaturationTracker(
        str(tmp_path / "run"), save_to=["csv", "npy"], modules=layer, device="cpu", stats=STATS + ["cov"]
    )
    gen = torch.Generator().manual_seed(5)
    for _ in range(batches):
        layer(torch.randn(13, 7, generator=gen) * 3 + 10)
    values = tracker.add_saturations()
    tracker.close()

    data = np.concatenate(seen)
    assert data.shape[0] == 13 * batches
    expected = np.cov(data, rowvar=False, bias=True)
    cov = np.load(
        tmp_path
        / "run"
        / "_train-covariance-matrix_Module-0-Linear"
        / "_train-covariance-matrix_Module-0-Linear_epoch0.npy"
    )
    np.testing.assert_allclose(cov, expected, rtol=1e-10, atol=1e-12)
    lam = np.clip(np.linalg.eigvalsh(expected), 0, None)
    row = _read(str(tmp_path / "run.csv")).iloc[0]
    assert row["train-intrinsic-dimensionality_Module-0-Linear"] == _idim_oracle(expected, 0.99)
    assert row["train-saturation_Module-0-Linear"] == _idim_oracle(expected, 0.99) / 6
    assert row["train-covariance-trace_Module-0-Linear"] == pytest.approx(np.trace(expected), rel=1e-10)
    assert row["train-diagonal-trace_Module-0-Linear"] == pytest.approx(lam.sum(), rel=1e-10)
    assert values["train-covariance-trace_Module-0-Linear"] == pytest.approx(np.trace(expected), rel=1e-10)


def test_channelwise_conv_several_batches_like_numpy(tmp_path):
    torch.manual_seed(6)
    conv = nn.Conv2d(2, 5, 3)
    seen: list[np.ndarray] = []
    # channelwise: every spatial position of every image is one sample of C features.
    conv.register_forward_hook(
        lambda m, i, o: seen.append(o.detach().double().permute(0, 2, 3, 1).reshape(-1, 5).numpy())
    )
    tracker = SaturationTracker(str(tmp_path / "run"), save_to="npy", modules=[conv], device="cpu", stats=["cov"])
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        conv(torch.randn(4, 2, 6, 6, generator=gen))
    tracker.add_saturations()
    tracker.close()
    expected = np.cov(np.concatenate(seen), rowvar=False, bias=True)
    name = "_train-covariance-matrix_Module-0-Conv2d"
    cov = np.load(tmp_path / "run" / name / f"{name}_epoch0.npy")
    np.testing.assert_allclose(cov, expected, rtol=1e-10, atol=1e-12)


def test_lstm_timestepwise_and_seq_first_like_numpy(tmp_path):
    torch.manual_seed(8)
    lstm = nn.LSTM(3, 4)  # batch_first=False: output is (T, B, U)
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(5, 6, 3, generator=gen)
    out = lstm(x)[0].detach().double().numpy()
    results = {}
    for method in ("timestepwise", "last_timestep"):
        tracker = SaturationTracker(
            str(tmp_path / method), save_to="npy", modules=lstm, device="cpu", stats=["cov"], timeseries_method=method
        )
        lstm(x)
        tracker.add_saturations()
        tracker.close()
        name = "_train-covariance-matrix_Module-0-LSTM"
        results[method] = np.load(tmp_path / method / name / f"{name}_epoch0.npy")
    np.testing.assert_allclose(
        results["timestepwise"], np.cov(out.reshape(-1, 4), rowvar=False, bias=True), rtol=1e-10, atol=1e-12
    )
    # The last timestep of a (T, B, U) output is out[-1], one row per sequence.
    np.testing.assert_allclose(
        results["last_timestep"], np.cov(out[-1], rowvar=False, bias=True), rtol=1e-10, atol=1e-12
    )
