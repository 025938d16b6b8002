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

from delve_fast import SaturationTracker

delve = pytest.importorskip("delve")


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
