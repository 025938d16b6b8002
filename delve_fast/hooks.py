"""The forward hook the tracker puts on each layer, and what happens to it when the model is copied.

A hook travels with its module: ``copy.deepcopy(model)`` and ``pickle`` /
``torch.save(model)`` copy every module's ``_forward_hooks``. A plain closure
cannot be pickled, so ``torch.save(model)`` failed while a tracker was
attached; and a deep copy kept calling the same closure, so every forward
pass of the copy (an EMA or teacher model, say) was recorded as if the
original layer had made it. :class:`LayerHook` is copied as an inert hook
instead: copies of a model are never tracked, and pickling works.
The hook also ignores the forward passes that activation checkpointing
repeats inside ``backward()`` (:func:`in_backward`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["LayerHook", "in_backward"]

# -1 outside the autograd engine; a private torch function, so its absence only disables the check.
_graph_task_id: Callable[[], int] | None = getattr(torch._C, "_current_graph_task_id", None)


def in_backward() -> bool:
    """Whether this forward pass runs inside ``backward()``.

    Activation checkpointing (``torch.utils.checkpoint``, Hugging Face's
    ``gradient_checkpointing_enable()``) runs a block's forward again during
    ``backward()`` to rebuild what it did not store. Those outputs repeat the
    batch already recorded: folding them again would double the sample count
    and use up ``max_samples`` with copies.
    """
    return _graph_task_id is not None and _graph_task_id() != -1


class LayerHook:
    """Forward hook that hands one tracked layer's output to ``record``.

    Parameters
    ----------
    layer : nn.Module or None
        The tracked layer. Calls made by any other module (a shallow copy of
        the layer shares its hooks dict) are ignored.
    record : callable or None
        ``record(module, inputs, output)``; None makes the hook inert.
    """

    __slots__ = ("_layer", "_record")

    def __init__(self, layer: nn.Module | None, record: Callable[[nn.Module, Any, Any], None] | None) -> None:
        self._layer = layer
        self._record = record

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if self._record is not None and module is self._layer:
            self._record(module, inputs, output)

    def __reduce__(self) -> tuple[type[LayerHook], tuple[None, None]]:
        # Pickling and deepcopy both go through here: the copy is inert, and neither the
        # tracker nor the original layer is copied along with the model.
        return (LayerHook, (None, None))
