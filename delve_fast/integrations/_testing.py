"""Helpers for the integration tests: record what a framework fed the layers, replay it into a plain tracker.

A framework callback and a hand-driven :class:`~delve_fast.SaturationTracker`
can only be compared if both see the same layer outputs in the same order.
:class:`ActivationRecorder` keeps a copy of every output of the tracked layers
during a real training run, labelled with the row it belongs to (as the test
defines rows, independently of the callback). :func:`replay` then feeds those
outputs, in order, through stand-in layers of the same names into a fresh
tracker and calls ``add_saturations()`` once per row: the values a correct
callback writes, computed by the same ops on the same data in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from delve_fast.tracker import SaturationTracker

__all__ = ["ActivationRecorder", "replay", "tracked_layer_names", "assert_rows_equal", "read_csv_rows"]


def tracked_layer_names(model: nn.Module) -> dict[str, nn.Module]:
    """The ``{name: layer}`` a tracker on ``model`` hooks (its own naming rules)."""
    probe = SaturationTracker("unused", save_to="csv", modules=model, nosave=True, device="cpu")
    try:
        return dict(probe.layers)
    finally:
        probe.close()


class ActivationRecorder:
    """Keep ``(row, mode, layer, output)`` for every forward pass of the tracked layers.

    Parameters
    ----------
    model : nn.Module
        The model being trained.
    row_of : callable
        Called on every forward pass with the mode (``"train"``/``"eval"``);
        returns the row that pass belongs to, or None to leave it out (for
        example Lightning's sanity-check batches).
    """

    def __init__(self, model: nn.Module, row_of: Callable[[str], Hashable | None]) -> None:
        self.layers = tracked_layer_names(model)
        self.row_of = row_of
        self.records: list[tuple[Hashable, str, str, torch.Tensor]] = []
        self.left_out: list[tuple[str, str, torch.Tensor]] = []
        self._handles = [layer.register_forward_hook(self._hook(name)) for name, layer in self.layers.items()]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            mode = "train" if module.training else "eval"
            row = self.row_of(mode)
            copy = output.detach().clone()
            if row is None:
                self.left_out.append((mode, name, copy))
            else:
                self.records.append((row, mode, name, copy))

        return hook

    def remove(self) -> None:
        """Remove the recording hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


class _Echo(nn.Linear):
    """A stand-in "linear" layer whose output is the tensor it is given."""

    def __init__(self) -> None:
        super().__init__(1, 1)

    def forward(self, recorded: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return recorded


def _stand_ins(names: Iterable[str]) -> tuple[nn.Module, dict[str, _Echo]]:
    """A module tree whose tracked layer names are ``names`` (split at ``-``), in that order."""
    root = nn.Module()
    leaves: dict[str, _Echo] = {}
    for name in names:
        node = root
        parts = name.split("-")
        for part in parts[:-1]:
            if part not in node._modules:
                node.add_module(part, nn.Module())
            node = node._modules[part]
        leaf = _Echo()
        node.add_module(parts[-1], leaf)
        leaves[name] = leaf
    return root, leaves


def replay(
    records: Sequence[tuple[Hashable, str, str, torch.Tensor]],
    layer_names: Sequence[str],
    rows: Sequence[Hashable],
    extra: Sequence[tuple[str, str, torch.Tensor]] = (),
    **tracker_kwargs: Any,
) -> list[dict[str, Any]]:
    """Values a plain tracker writes when fed ``records`` row by row.

    Parameters
    ----------
    records : sequence
        ``(row, mode, layer, output)`` in the order they happened.
    layer_names : sequence of str
        The tracked layer names, in the tracker's order.
    rows : sequence
        Row labels, in the order the rows are written.
    extra : sequence, optional
        ``(mode, layer, output)`` fed before the first row's records (to show
        what counting left-out batches would change).
    **tracker_kwargs
        Tracker arguments (``stats``, ...); ``nosave`` and ``device`` are set.

    Returns
    -------
    list of dict
        One ``add_saturations()`` result per row.
    """
    root, leaves = _stand_ins(layer_names)
    tracker = SaturationTracker("unused", save_to="csv", modules=root, nosave=True, device="cpu", **tracker_kwargs)
    assert list(tracker.layers) == list(layer_names), (list(tracker.layers), list(layer_names))
    out = []
    try:
        for i, row in enumerate(rows):
            fed = [(m, n, y) for m, n, y in extra] if i == 0 else []
            fed += [(m, n, y) for r, m, n, y in records if r == row]
            for mode, name, output in fed:
                leaves[name].train(mode == "train")
                leaves[name](output)
            out.append(tracker.add_saturations(save=False))
    finally:
        tracker.close()
    return out


def read_csv_rows(path: str) -> list[dict[str, float]]:
    """Rows of a delve-format CSV, empty cells left out."""
    frame = pd.read_csv(path, sep=";", index_col=0)
    return [
        {k: float(v) for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
        for row in frame.to_dict("records")
    ]


def assert_rows_equal(actual: Mapping[str, Any], expected: Mapping[str, Any], what: str) -> None:
    """Same keys, and values equal to within a few units in the last place.

    The values are computed by identical ops, in identical order, on
    identical tensors, so they are equal bit for bit; the 1e-12 relative slack
    only covers a text round trip (CSV, JSON) that a logger may add.
    """
    scalar_expected = {k: float(v) for k, v in expected.items() if np.ndim(v) == 0}
    assert set(actual) == set(scalar_expected), (
        f"{what}: keys differ: extra {sorted(set(actual) - set(scalar_expected))}, "
        f"missing {sorted(set(scalar_expected) - set(actual))}"
    )
    for key, value in scalar_expected.items():
        np.testing.assert_allclose(float(actual[key]), value, rtol=1e-12, atol=0, err_msg=f"{what}: {key}")
