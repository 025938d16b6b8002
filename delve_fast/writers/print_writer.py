"""Print writer: show every value on the console as it is logged."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from delve_fast.writers.base import AbstractWriter

__all__ = ["PrintWriter"]


class PrintWriter(AbstractWriter):
    """Print ``name : value`` for every value of an epoch when it closes.

    Values are kept until :meth:`save` (once per ``add_saturations()``),
    which prints ``epoch <k>`` and then each name once with its last value,
    in the order the names were first added: the same values, under the same
    epoch number, as the other writers store. Matrices are summarised by
    their shape instead of printed in full.

    Parameters
    ----------
    **kwargs
        Ignored (accepts the shared ``writer_args`` such as ``savepath``).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self._epoch = 0
        self._pending: dict[str, Any] = {}

    def resume_from_saved_state(self, initial_epoch: int) -> None:
        """Number epochs from ``initial_epoch``."""
        self._epoch = int(initial_epoch)
        self._pending = {}

    def add_scalar(self, name: str, value: Any, **kwargs: Any) -> None:
        """Keep one value for this epoch's printout (the last value wins)."""
        shape = getattr(value, "shape", None)
        if shape is not None and int(np.prod(shape)) > 1:
            value = f"<{type(value).__name__} of shape {tuple(shape)}>"
        self._pending[name] = value

    def add_scalars(self, prefix: str, value_dict: Mapping[str, Any], **kwargs: Any) -> None:
        """Keep each value, named ``prefix + '_' + key`` (``key`` alone if ``prefix`` is empty)."""
        for key, value in value_dict.items():
            self.add_scalar(f"{prefix}_{key}" if prefix else key, value)

    def state_dict(self) -> dict[str, Any]:
        """The open epoch and its values."""
        return {"epoch": self._epoch, "pending": dict(self._pending)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self._epoch = int(state["epoch"])
        self._pending = dict(state["pending"])

    def save(self) -> None:
        """Print the epoch number and its values."""
        print(f"epoch {self._epoch}")
        for name, value in self._pending.items():
            print(name, ":", value)
        self._pending = {}
        self._epoch += 1

    def close(self) -> None:
        """Nothing to release."""
