"""TensorBoard writer: real event files with a global step per value."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from delve_fast.writers.base import AbstractWriter, is_array_name, is_scalar_value

__all__ = ["TensorBoardWriter"]


def _summary_writer_class() -> type:
    """Return torch's SummaryWriter, or tensorboardX's when tensorboard is absent."""
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter
    except ImportError:
        try:
            from tensorboardX import SummaryWriter

            return SummaryWriter
        except ImportError:
            raise ImportError(
                "the TensorBoard writer needs the 'tensorboard' package (pip install tensorboard) or 'tensorboardX'"
            ) from None


class TensorBoardWriter(AbstractWriter):
    """Write every scalar to TensorBoard event files under ``savepath``.

    Each tag is the same name as the CSV column (for example
    ``train-saturation_features-0``). Every value carries a global step: the
    ``global_step`` the caller passes (the tracker passes its epoch), or
    else one more than the last step written for that tag, so a scalar added
    once per epoch lands on the epoch number.

    Parameters
    ----------
    savepath : str
        Log directory.
    **kwargs
        ``flush_secs`` is passed on to the SummaryWriter; others are ignored.
    """

    def __init__(self, savepath: str, **kwargs: Any) -> None:
        super().__init__()
        self.savepath = os.fspath(savepath)
        options = {k: kwargs[k] for k in ("flush_secs", "max_queue") if k in kwargs}
        self.writer = _summary_writer_class()(log_dir=self.savepath, **options)
        self._first_step = 0
        self._next_step: dict[str, int] = {}

    def resume_from_saved_state(self, initial_epoch: int) -> None:
        """Continue numbering at ``initial_epoch``; earlier event files stay untouched."""
        self._first_step = int(initial_epoch)
        self._next_step = {}

    def add_scalar(self, name: str, value: Any, global_step: int | None = None, **kwargs: Any) -> None:
        """Write one scalar; matrices and other non-scalars are skipped."""
        if is_array_name(name) or not is_scalar_value(value):
            return
        step = self._next_step.get(name, self._first_step) if global_step is None else int(global_step)
        self.writer.add_scalar(name, float(value), global_step=step)
        self._next_step[name] = step + 1

    def add_scalars(
        self, prefix: str, value_dict: Mapping[str, Any], global_step: int | None = None, **kwargs: Any
    ) -> None:
        """Write each entry as its own tag (``prefix/`` + name when a prefix is given)."""
        for key, value in value_dict.items():
            self.add_scalar(f"{prefix}/{key}" if prefix else key, value, global_step=global_step)

    def save(self) -> None:
        """Flush pending events to disk."""
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
