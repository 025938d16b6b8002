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
