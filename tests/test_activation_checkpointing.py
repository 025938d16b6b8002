"""Activation checkpointing re-runs forwards during backward: the tracker records each batch once.

A model whose blocks are checkpointed (``torch.utils.checkpoint`` in both
variants, and torch's ``checkpoint_wrapper``) must give the tracker exactly the
samples, names and statistics of the same model without checkpointing, for the
same batches and weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.utils.checkpoint import checkpoint

from delve_fast import SaturationTracker
from delve_fast.hooks import in_backward

STATS = ["lsat", "idim", "trc"]


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Net(nn.Module):
    """``mode``: None (plain), "reentrant" / "non_reentrant" (torch.utils.checkpoint in forward)."""

    def __init__(self, mode: str | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.block = Block()
        self.head = nn.Linear(12, 3)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode is None:
            h = self.block(x)
        else:
            h = checkpoint(self.block, x, use_reentrant=self.mode == "reentrant")
        return self.head(torch.relu(h))


def _train(model: nn.Module, tracker: SaturationTracker, steps: int = 3) -> list[dict]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=g, requires_grad=True)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    counts = {name: state.n_samples for name, state in tracker.logs["train-covariance-matrix"].items()}
    return [counts, tracker.add_saturations()]


def _run(model: nn.Module, tmp_path, tag: str) -> list[dict]:
    with SaturationTracker(str(tmp_path / tag), save_to="csv", modules=model, stats=STATS, device="cpu") as tracker:
        return [list(tracker.layers), *_train(model, tracker)]


@pytest.mark.parametrize("wrapping", ["reentrant", "non_reentrant", "checkpoint_wrapper"])
def test_checkpointed_blocks_are_recorded_once(tmp_path, wrapping):
    names, counts, values = _run(Net(), tmp_path, "plain")
    assert counts == {name: 3 * 16 for name in names}  # the reference itself: one row per sample
    if wrapping == "checkpoint_wrapper":
        model = Net()
        model.block = checkpoint_wrapper(model.block)
    else:
        model = Net(wrapping)
    got_names, got_counts, got_values = _run(model, tmp_path, wrapping)
    assert got_names == names  # the wrapper adds no "_checkpoint_wrapped_module-" to the names
    assert got_counts == counts
    assert list(got_values) == list(values)
    # Same weights, batches and op sequence: the recomputed forward is deterministic here, so the
    # training steps match to float32 round-off of the recomputation order (none: the same ops),
    # and the statistics agree far inside 1e-9.
    for key, want in values.items():
        np.testing.assert_allclose(got_values[key], want, rtol=1e-9, atol=0, err_msg=key)


def test_in_backward_is_true_only_inside_autograds_backward():
    seen = []
    x = torch.ones(3, requires_grad=True)
    y = x * 2
    y.register_hook(lambda grad: seen.append(in_backward()) or grad)
    assert not in_backward()
    y.sum().backward()
    assert seen == [True]
    assert not in_backward()


def test_forwards_outside_backward_are_still_recorded(tmp_path):
    # Evaluation under no_grad is recorded as before: only autograd's
    # backward pass (where checkpoints recompute) is left out.
    model = Net()
    with SaturationTracker(str(tmp_path / "e"), save_to="csv", modules=model, device="cpu") as tracker:
        model.eval()
        with torch.no_grad():
            model(torch.randn(10, 6))
        assert tracker.logs["eval-covariance-matrix"]["block-body-0"].n_samples == 10
        assert tracker.logs["eval-covariance-matrix"]["head"].n_samples == 10
