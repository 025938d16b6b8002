"""Unusual uses found by running delve's scripts and odd models: copies of a tracked model, save(), close(), names.

Expected numbers come from NumPy float64 covariances of the outputs a plain
forward hook saw, or from delve 0.1.50 where delve_fast follows it.
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from delve_fast import SaturationTracker
from delve_fast.hooks import LayerHook

# Traces are sums of float64 covariances of <= 40 samples with |mean| ~ std: both sides are within
# ~n * eps of the exact value, so 1e-10 relative leaves orders of magnitude of margin.
RTOL = 1e-10


def _trace(batches: list[np.ndarray]) -> float:
    return float(np.trace(np.cov(np.concatenate(batches), rowvar=False, bias=True)))


def _rows(path) -> pd.DataFrame:
    return pd.read_csv(path, sep=";", index_col=0)


class _Capture:
    """A plain forward hook keeping every output in float64; a module-level class, so models still pickle."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def __call__(self, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        self.seen.append(output.detach().double().numpy())


def _capture(layer: nn.Module) -> list[np.ndarray]:
    hook = _Capture()
    layer.register_forward_hook(hook)
    return hook.seen


# ------------------------------------------------------------- model copies
def test_deepcopy_of_a_tracked_model_is_not_recorded(tmp_path):
    """An EMA or teacher copy made with deepcopy must not feed the original layer's covariance."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4))
    seen = _capture(model[0])
    tracker = SaturationTracker(str(tmp_path / "run"), "csv", model, stats=["trc"], device="cpu")
    model(torch.randn(20, 5))
    ema = copy.deepcopy(model)
    ema(torch.randn(20, 5) * 100)  # would dominate the trace if it were recorded
    original_batches = seen[:1]
    values = tracker.add_saturations()
    tracker.close()
    assert values["train-covariance-trace_0"] == pytest.approx(_trace(original_batches), rel=RTOL)


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_tracked_model_pickles_and_its_copy_is_untracked(tmp_path, how):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    seen = _capture(model[0])
    tracker = SaturationTracker(str(tmp_path / "run"), "csv", model, stats=["trc"], device="cpu")
    if how == "pickle":
        restored = pickle.loads(pickle.dumps(model))
    else:
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        restored = torch.load(buf, weights_only=False)
    inert = [h for h in restored[0]._forward_hooks.values() if isinstance(h, LayerHook)]
    assert len(inert) == 1
    restored(torch.randn(20, 5) * 100)
    model(torch.randn(20, 5))
    values = tracker.add_saturations()
    tracker.close()
    assert values["train-covariance-trace_0"] == pytest.approx(_trace(seen[-1:]), rel=RTOL)


def test_tied_layer_called_twice_per_forward_folds_both_calls(tmp_path):
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(5, 5), nn.Linear(5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(torch.relu(self.a(x))))

    torch.manual_seed(2)
    model = Tied()
    seen = _capture(model.a)
    tracker = SaturationTracker(str(tmp_path / "run"), "csv", model, stats=["trc"], device="cpu")
    model(torch.randn(30, 5))
    values = tracker.add_saturations()
    tracker.close()
    assert len(seen) == 2
    assert values["train-covariance-trace_a"] == pytest.approx(_trace(seen), rel=RTOL)


# ------------------------------------------------------------ save and close
def test_save_closes_only_an_epoch_that_holds_saturations(tmp_path):
    """save(): a no-op right after add_saturations(); it closes add_saturations(save=False); scalars wait.

    A scalar save()d on its own joins the row of the next add_saturations(), as in
    delve (whose CSV columns are lists that each get one value per epoch).
    """
    model = nn.Sequential(nn.Linear(4, 3))
    tracker = SaturationTracker(str(tmp_path / "run"), "csv", model, stats=["lsat"], device="cpu")
    model(torch.randn(20, 4))
    tracker.add_saturations()
    tracker.save()  # delve's VGG example does this every epoch
    tracker.save()
    assert tracker.epoch == 1
    tracker.add_scalar("accuracy", 0.75)
    tracker.save()  # only a scalar: the epoch stays open for this epoch's saturations
    assert tracker.epoch == 1
    model(torch.randn(20, 4))
    tracker.add_saturations(save=False)
    tracker.save()  # closes the epoch add_saturations left open
    assert tracker.epoch == 2
    tracker.close()
    rows = _rows(tmp_path / "run.csv")
    assert list(rows.index) == [0, 1]
    assert rows["accuracy"].isna().tolist() == [True, False]
    assert rows["train-saturation_0"].notna().tolist() == [True, True]


def test_open_epoch_with_values_survives_a_checkpoint(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3))
    first = SaturationTracker(str(tmp_path / "a"), "csv", model, stats=["lsat"], device="cpu")
    first.add_scalar("accuracy", 0.5)
    state = first.state_dict()
    first.close()
    second = SaturationTracker(str(tmp_path / "b"), "csv", model, stats=["lsat"], device="cpu")
    second.load_state_dict(state)
    second.save()
    second.close()
    assert _rows(tmp_path / "b.csv")["accuracy"].tolist() == [0.5]


def test_use_after_close_warns_and_writes_nothing(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3))
    tracker = SaturationTracker(str(tmp_path / "run"), "csv", model, stats=["lsat"], device="cpu")
    model(torch.randn(20, 4))
    tracker.add_saturations()
    tracker.close()
    tracker.close()  # twice is fine
    before = (tmp_path / "run.csv").read_bytes()
    model(torch.randn(20, 4))
    with pytest.warns(RuntimeWarning, match=r"add_saturations\(\) called after close\(\)"):
        assert tracker.add_saturations() == {}
    tracker.add_scalar("late", 1.0)
    with pytest.warns(RuntimeWarning, match=r"save\(\) called after close\(\)"):
        tracker.save()
    assert (tmp_path / "run.csv").read_bytes() == before
    assert all(not m._forward_hooks for m in model.modules())


# ------------------------------------------------------------------- names
def test_name_attributes_that_clash_keep_path_names(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].name = model[1].name = "block"
    model[2].name = "head"
    with pytest.warns(RuntimeWarning, match="'block'"):
        tracker = SaturationTracker(str(tmp_path / "run"), "csv", model, stats=["lsat"], device="cpu")
    assert list(tracker.layers) == ["0", "1", "head"]
    assert tracker.layers["head"] is model[2]
    tracker.close()


def test_name_attribute_that_is_another_layers_path_is_not_taken(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].name = "1"  # the second layer's path name
    with pytest.warns(RuntimeWarning, match="'1'"):
        tracker = SaturationTracker(str(tmp_path / "run"), "csv", model, stats=["lsat"], device="cpu")
    assert tracker.layers == {"0": model[0], "1": model[1]}
    tracker.close()


@pytest.mark.delve
def test_ignore_layer_names_matches_a_name_attribute_like_delve(tmp_path):
    delve = pytest.importorskip("delve", reason="delve==0.1.50 is not installed (pip install delve_fast[delve])")
    columns = []
    for lib in (delve, __import__("delve_fast")):
        torch.manual_seed(3)
        model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
        model[2].name = "head"
        model[0].name = "stem"
        path = tmp_path / lib.__name__ / "run"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tracker = lib.SaturationTracker(
                str(path), "csv", model, stats=["lsat"], device="cpu", ignore_layer_names=["head"]
            )
            model(torch.randn(20, 6))
            tracker.add_saturations()
            tracker.close()
        columns.append(set(_rows(str(path) + ".csv").columns))
    assert columns[0] == columns[1] == {"train-saturation_stem"}


# ------------------------------------------------------- activation checkpointing
@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpoint_recompute_in_backward_is_not_recorded(tmp_path, use_reentrant):
    """torch.utils.checkpoint runs the forward again inside backward(): only the first run is a sample."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    reference = copy.deepcopy(model)  # taken before the tracker: no hooks, the same weights
    tracker = SaturationTracker(
        str(tmp_path / "run"), "csv", model, stats=["trc", "count"], device="cpu", max_samples=15
    )
    batches = [torch.randn(10, 4, requires_grad=True) for _ in range(2)]
    for x in batches:
        checkpoint(model, x, use_reentrant=use_reentrant).sum().backward()
    values = tracker.add_saturations()
    tracker.close()
    with torch.no_grad():
        rows = np.concatenate([reference[0](x).double().numpy() for x in batches])[:15]  # max_samples keeps 10 + 5
    assert values["train-sample-count_0"] == 15
    assert values["train-covariance-trace_0"] == pytest.approx(_trace([rows]), rel=RTOL)
