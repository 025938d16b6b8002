"""Print writer: show every value on the console as it is logged."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from delve_fast.writers.base import AbstractWriter

__all__ = ["PrintWriter"]


class PrintWriter(AbstractWriter):
    """Print ``name : value`` for every value, as delve's print writer does.

    Matrices are summarised by their shape instead of printed in full.

    Parameters
    ----------
    **kwargs
        Ignored (accepts the shared ``writer_args`` such as ``savepath``).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()

    def resume_from_saved_state(self, initial_epoch: int) -> None:
        """Nothing to resume."""

    def add_scalar(self, name: str, value: Any, **kwargs: Any) -> None:
        """Print one value."""
        shape = getattr(value, "shape", None)
        if shape is not None and int(np.prod(shape)) > 1:
            value = f"<{type(value).__name__} of shape {tuple(shape)}>"
        print(name, ":", value)

    def add_scalars(self, prefix: str, value_dict: Mapping[str, Any], **kwargs: Any) -> None:
        """Print each value, named ``prefix + '_' + key`` (``key`` alone if ``prefix`` is empty)."""
        for key, value in value_dict.items():
            self.add_scalar(f"{prefix}_{key}" if prefix else key, value)

    def save(self) -> None:
        """Nothing to save."""

    def close(self) -> None:
        """Nothing to release."""
