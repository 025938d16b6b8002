"""LayerRecorder: the per-layer recording policy, tested without hooks."""

from __future__ import annotations

import numpy as np
import torch

from delve_fast.covariance import TorchCovarianceMatrix
from delve_fast.recorder import LayerRecorder
from delve_fast.testing import np_mean_cov
from delve_fast.views import Batch


def _recorder(log_interval: int = 1, max_samples: int | None = None) -> LayerRecorder:
    return LayerRecorder(lambda mode: TorchCovarianceMatrix(device="cpu"), log_interval, max_samples)


def _batch(x: torch.Tensor) -> Batch:
    return Batch(view=x.unsqueeze(-1), rows=x.shape[0])


def test_log_interval_admits_every_kth_pass_per_layer_and_mode():
    rec = _recorder(log_interval=3)
    admitted = [rec.admit("train", "a")[0] for _ in range(7)]
    assert admitted == [False, False, True, False, False, True, False]
    # Another mode and another layer count on their own.
    assert [rec.admit("eval", "a")[0] for _ in range(3)] == [False, False, True]
    assert [rec.admit("train", "b")[0] for _ in range(3)] == [False, False, True]


def test_max_samples_room_shrinks_and_resets_each_epoch():
    rec = _recorder(max_samples=10)
    assert rec.admit("train", "a") == (True, 10)
    rec.fold("train", "a", _batch(torch.randn(6, 3, dtype=torch.float64)))
    assert rec.admit("train", "a") == (True, 4)
    rec.fold("train", "a", _batch(torch.randn(4, 3, dtype=torch.float64)))
    assert rec.admit("train", "a") == (False, 0)
    rec.end_epoch(["a"], reset=True)
    assert rec.admit("train", "a") == (True, 10)


def test_fold_accumulates_against_numpy_and_pending_keeps_layer_order():
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(5, 4, generator=gen, dtype=torch.float64) * 3 + 7 for _ in range(3)]
    rec = _recorder()
    for x in xs:
        rec.fold("eval", "second", _batch(x))
        rec.fold("train", "first", _batch(x[:2]))
    rec.fold("train", "second", _batch(xs[0]))
    order = [(mode, name) for mode, name, _ in rec.pending(["first", "second", "never"])]
    assert order == [("train", "first"), ("train", "second"), ("eval", "second")]
    state = rec.logs["eval-covariance-matrix"]["second"]
    _, cov = np_mean_cov(torch.cat(xs).numpy())
    # float64 accumulation of 15 well-scaled samples: a few ulps of the variance scale.
    np.testing.assert_allclose(state.fix().numpy(), cov, rtol=1e-12, atol=1e-12 * np.abs(cov).max())
    assert rec.seen_samples["eval"]["second"] == 15


def test_end_epoch_without_reset_keeps_states_but_restarts_the_budget():
    rec = _recorder(max_samples=5)
    rec.fold("train", "a", _batch(torch.randn(5, 2, dtype=torch.float64)))
    rec.end_epoch(["a"], reset=False)
    assert rec.logs["train-covariance-matrix"]["a"].n_samples == 5
    assert rec.admit("train", "a") == (True, 5)
    rec.end_epoch(["a"], reset=True)
    assert rec.pending(["a"]) == []
