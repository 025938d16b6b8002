"""delve's public API used directly, and the tracker under bad input and faults.

Covers ``add_scalar``/``save()`` placement, writers resumed from damaged files,
two trackers on one savefile, token masks that fit no layer, the metric
functions, ``TorchCovarianceMatrix`` and the PCA layers. Expected values come
from delve 0.1.50 run side by side where delve_fast follows it, or from NumPy
float64.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import delve_fast.metrics
import delve_fast.pca_layers
import delve_fast.torch_utils
from delve_fast import SaturationTracker

delve = pytest.importorskip("delve")
pytest.importorskip("delve.metrics")
pytest.importorskip("delve.torch_utils")


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def _data() -> torch.Tensor:
    return torch.randn(20, 4, generator=torch.Generator().manual_seed(1))


def _csv(path) -> pd.DataFrame:
    return pd.read_csv(path, sep=";", index_col=0)


def _run_both(tmp_path, script) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run ``script(tracker, model, x)`` under delve 0.1.50 and delve_fast; return both CSVs."""
    tables = []
    for name, cls in (("delve", delve.SaturationTracker), ("fast", SaturationTracker)):
        model = _model()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tracker = cls(str(tmp_path / name), save_to="csv", modules=model, device="cpu")
            script(tracker, model, _data())
            tracker.close()
        tables.append(_csv(tmp_path / f"{name}.csv"))
    return tables[0], tables[1]


# ------------------------------------------------------------ add_scalar and save()
def test_scalar_saved_mid_epoch_lands_in_the_row_of_the_next_add_saturations(tmp_path):
    """delve: ``add_scalar``, ``save()``, then ``add_saturations()`` fill one row; so must delve_fast."""

    def script(tracker, model, x):
        model(x)
        tracker.add_scalar("loss", 1.5)
        tracker.save()
        tracker.add_scalar("accuracy", 0.5)
        tracker.add_saturations()

    theirs, ours = _run_both(tmp_path, script)
    assert list(ours.index) == list(theirs.index) == [0]
    pd.testing.assert_frame_equal(ours[sorted(ours.columns)], theirs[sorted(theirs.columns)])


def test_scalar_only_logging_gets_one_row_per_save_like_delve(tmp_path):
    def script(tracker, model, x):
        for loss in (1.5, 2.5, 3.5):
            tracker.add_scalar("loss", loss)
            tracker.save()

    theirs, ours = _run_both(tmp_path, script)
    pd.testing.assert_frame_equal(ours, theirs)
    assert ours["loss"].tolist() == [1.5, 2.5, 3.5]


def test_scalar_saved_before_every_epoch_stays_with_that_epoch(tmp_path):
    """Two epochs of ``add_scalar``, ``save()``, ``add_saturations()``: delve's ragged lists crash here.

    Each loss must sit in the row of its epoch's saturations, and the epoch
    number (the row) must not be shifted by the extra ``save()`` calls.
    """
    model = _model()
    tracker = SaturationTracker(str(tmp_path / "run"), "csv", model, stats=["trc"], device="cpu")
    batches = [torch.randn(30, 4, generator=torch.Generator().manual_seed(s)) for s in (2, 3)]
    for loss, x in zip((1.5, 2.5), batches, strict=True):
        model(x)
        tracker.add_scalar("loss", loss)
        tracker.save()
        tracker.add_saturations()
    tracker.close()
    rows = _csv(tmp_path / "run.csv")
    assert list(rows.index) == [0, 1]
    assert rows["loss"].tolist() == [1.5, 2.5]
    # float64 traces of 30 samples: both sides are within ~30 eps of exact; 1e-10 relative is ample.
    for row, x in enumerate(batches):
        out = model[0](x).detach().double().numpy()
        expected = np.trace(np.cov(out, rowvar=False, bias=True))
        assert rows["train-covariance-trace_0"][row] == pytest.approx(expected, rel=1e-10)


def test_scalar_saved_after_the_last_add_saturations_is_written_at_close(tmp_path):
    model = _model()
    tracker = SaturationTracker(str(tmp_path / "run"), "csv", model, device="cpu")
    model(_data())
    tracker.add_saturations()
    tracker.add_scalar("loss", 1.5)
    tracker.save()
    tracker.close()
    rows = _csv(tmp_path / "run.csv")
    assert list(rows.index) == [0, 1]
    assert rows["loss"].isna().tolist() == [True, False]


def test_scalar_never_saved_is_not_written_at_close_like_delve(tmp_path):
    def script(tracker, model, x):
        model(x)
        tracker.add_saturations()
        tracker.add_scalar("loss", 1.5)  # no save(): delve writes nothing more

    theirs, ours = _run_both(tmp_path, script)
    assert "loss" not in ours.columns and "loss" not in theirs.columns
    assert list(ours.index) == list(theirs.index) == [0]


def test_pending_saved_scalars_survive_a_checkpoint(tmp_path):
    model = _model()
    first = SaturationTracker(str(tmp_path / "a"), "csv", model, device="cpu")
    first.add_scalar("loss", 1.5)
    first.save()
    state = first.state_dict()
    first.close()
    second = SaturationTracker(str(tmp_path / "b"), "csv", _model(), device="cpu")
    second.load_state_dict(state)
    second.add_scalar("loss", 2.5)  # the name again: the saved row closes first, as before the checkpoint
    second.save()
    second.close()
    assert _csv(tmp_path / "b.csv")["loss"].tolist() == [1.5, 2.5]


# ------------------------------------------------------------ resuming from a damaged CSV
def _delve_csv(tmp_path, epochs: int) -> str:
    """A CSV written by delve 0.1.50 itself: ``epochs`` rows of two layers' saturations and a loss."""
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tracker = delve.SaturationTracker(str(tmp_path / "run"), save_to="csv", modules=model, device="cpu")
        for epoch in range(epochs):
            model(torch.randn(10 + epoch, 4, generator=torch.Generator().manual_seed(epoch)))
            tracker.add_scalar("loss", 1.0 / (epoch + 3))  # 1/3, 1/5, ...: many digits to cut
            tracker.add_saturations()
        tracker.close()
    return (tmp_path / "run.csv").read_text()


@pytest.mark.parametrize("cut", [1, 4, 9])
def test_resume_leaves_out_a_last_row_cut_by_a_kill(tmp_path, cut):
    """A CSV cut mid-line (delve writes in place) must not resume with numbers cut mid-digit."""
    text = _delve_csv(tmp_path, epochs=3)
    complete = _csv(tmp_path / "run.csv")
    (tmp_path / "run.csv").write_text(text[:-cut])  # the last row loses its newline and some digits
    model = _model()
    with pytest.warns(RuntimeWarning, match="unfinished line"):
        tracker = SaturationTracker(str(tmp_path / "run"), "csv", model, device="cpu", initial_epoch=3)
    model(_data())
    tracker.add_saturations()
    tracker.close()
    rows = _csv(tmp_path / "run.csv")
    assert list(rows.index) == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(rows.iloc[:2], complete.iloc[:2], check_like=True)
    assert rows.iloc[2].isna().all()  # the cut epoch is empty, not wrong
    assert rows.iloc[3][["train-saturation_0", "train-saturation_2"]].notna().all()


@pytest.mark.parametrize("content", ["", ";train-satu"])
def test_resume_from_an_empty_or_header_cut_csv_starts_with_empty_rows(tmp_path, content):
    (tmp_path / "run.csv").write_text(content)
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        tracker = SaturationTracker(str(tmp_path / "run"), "csv", model, device="cpu", initial_epoch=2)
    model(_data())
    tracker.add_saturations()
    tracker.close()
    rows = _csv(tmp_path / "run.csv")
    assert list(rows.index) == [0, 1, 2]
    assert sorted(rows.columns) == ["train-saturation_0", "train-saturation_2"]
    assert rows["train-saturation_0"].notna().tolist() == [False, False, True]


# ------------------------------------------------------------ two trackers, one savefile
def test_a_second_open_tracker_on_the_same_savefile_warns(tmp_path):
    """delve lets the second tracker's save() silently replace the first one's rows; we at least say so."""
    first = SaturationTracker(str(tmp_path / "run"), "csv", _model(), device="cpu")
    with pytest.warns(RuntimeWarning, match="already written by another open SaturationTracker"):
        second = SaturationTracker(str(tmp_path / "sub" / ".." / "run"), "csv", _model(), device="cpu")
    second.close()
    first.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # closed: the savefile is free again
        SaturationTracker(str(tmp_path / "run"), "csv", _model(), device="cpu").close()
        # nosave trackers write nothing, so they claim nothing
        with SaturationTracker(str(tmp_path / "run"), "csv", _model(), device="cpu"):
            SaturationTracker(str(tmp_path / "run"), "csv", _model(), device="cpu", nosave=True).close()


# ------------------------------------------------------------ delve.metrics and TorchCovarianceMatrix
def _rank_deficient_cov() -> np.ndarray:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((30, 6))
    a[:, 5] = a[:, 0]
    return np.cov(a, rowvar=False, bias=True)


def test_metric_functions_take_array_likes_with_delves_numbers():
    """delve's functions need a tensor; the same numbers must come from a NumPy array or nested lists."""
    cov = _rank_deficient_cov()
    for fn in ("compute_intrinsic_dimensionality", "compute_saturation"):
        expected = getattr(delve.metrics, fn)(torch.tensor(cov), 0.9)
        assert getattr(delve_fast.metrics, fn)(cov, 0.9) == expected
        assert getattr(delve_fast.metrics, fn)(cov.tolist(), 0.9) == expected
    # the trace is a sum of 6 float64 numbers: within a few eps of NumPy's
    assert delve_fast.metrics.compute_cov_trace(cov) == pytest.approx(np.trace(cov), rel=1e-14)


@pytest.mark.parametrize("thresh", [0, -0.5, 1.5, float("nan")])
def test_metric_threshold_outside_the_unit_interval_is_named(thresh):
    # delve returns a dimension larger than the matrix for 1.5 and 0 for 0
    with pytest.raises(ValueError, match=r"thresh must be in \(0, 1\].*" + str(thresh)[:3]):
        delve_fast.metrics.compute_saturation(torch.eye(3, dtype=torch.float64), thresh)


@pytest.mark.parametrize(
    ("cov", "words"),
    [
        (torch.zeros(3, 6, dtype=torch.float64), r"square covariance matrix, got shape \(3, 6\)"),
        (torch.full((3, 3), float("nan"), dtype=torch.float64), "NaN or Inf"),
    ],
)
def test_metric_bad_matrices_are_named(cov, words):
    # delve raises torch's "must be batches of square matrices" / "failed to converge"
    for fn in (delve_fast.metrics.compute_saturation, delve_fast.metrics.compute_diag_trace):
        with pytest.raises(ValueError, match=words):
            fn(cov)


def test_covariance_private_names_that_delve_user_code_reads():
    """``_avg`` is delve's running *sum* and ``_input_dim`` the width; compared with delve run alike."""
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(3)) * 3 + 1
    theirs = delve.torch_utils.TorchCovarianceMatrix(device="cpu")
    ours = delve_fast.torch_utils.TorchCovarianceMatrix(device="cpu")
    for part in (x[:30], x[30:]):
        theirs.update(part, False)
        ours.update(part, False)
    assert ours._input_dim == theirs._input_dim == 4
    assert ours._tlen == theirs._tlen == 50
    # sums of 50 float64 values of size ~5: both within ~50 eps * 250 of exact
    torch.testing.assert_close(ours._avg, theirs._avg, rtol=1e-12, atol=1e-11)
    torch.testing.assert_close(ours.fix(), theirs.fix(), rtol=1e-10, atol=1e-12)
    with pytest.raises(TypeError, match="torch.Tensor.*ndarray"):
        ours.update(x.numpy(), False)


# ------------------------------------------------------------ PCA layers
def test_conv_pca_layer_names_a_map_without_batch_dimension():
    layer = delve_fast.pca_layers.Conv2DPCALayer(6, verbose=False)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\).*\(6, 3, 3\)"):
        layer(torch.randn(6, 3, 3))


def test_inject_random_directions_names_and_updates_conv_layers():
    """delve names a Conv2DPCALayer ``Linear-<i>`` (it is a LinearPCALayer subclass) and leaves its conv as is."""
    torch.manual_seed(0)
    net = nn.Sequential(delve_fast.pca_layers.LinearPCALayer(8), delve_fast.pca_layers.Conv2DPCALayer(6, verbose=False))
    net.train()
    net[0](torch.randn(50, 8))
    net[1](torch.randn(4, 6, 5, 5))
    net.eval()
    net[0](torch.randn(2, 8))
    net[1](torch.randn(1, 6, 5, 5))
    *_, names = delve_fast.pca_layers.change_all_pca_layer_thresholds_and_inject_random_directions(
        0.5, net, include_names=True
    )
    assert names == ["Linear-0", "Conv-0"]
    conv_weight = net[1].convolution.weight[:, :, 0, 0]
    torch.testing.assert_close(conv_weight, net[1].transformation_matrix)
    # a projection: P @ P == P (float32 products of a 6x6 orthogonal projection: ~1e-6)
    torch.testing.assert_close(conv_weight @ conv_weight, conv_weight, atol=1e-5, rtol=0)
