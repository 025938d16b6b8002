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
    ``train-saturation_features-0``). Values are kept until :meth:`save`
    (once per ``add_saturations()``), which writes each tag once with the
    epoch as its global step, so the step is the CSV row and the npy file
    number. A tag added several times within one epoch keeps its last value;
    a ``global_step`` passed by the caller is ignored.

    Event files belong to TensorBoard: they are appended to and flushed at
    every :meth:`save`, not replaced, so a crash can cut the last record short
    (TensorBoard skips it). After a resume at ``initial_epoch`` the earlier
    files stay, and steps the resumed run writes again appear twice.

    Parameters
    ----------
    savepath : str
        Log directory.
    **kwargs
        ``flush_secs`` and ``max_queue`` are passed on to the SummaryWriter;
        others are ignored.
    """

    def __init__(self, savepath: str, **kwargs: Any) -> None:
        super().__init__()
        self.savepath = os.fspath(savepath)
        options = {k: kwargs[k] for k in ("flush_secs", "max_queue") if k in kwargs}
        self.writer = _summary_writer_class()(log_dir=self.savepath, **options)
        self._epoch = 0
        self._pending: dict[str, float] = {}

    def resume_from_saved_state(self, initial_epoch: int) -> None:
        """Continue numbering at ``initial_epoch``; earlier event files stay untouched."""
        self._epoch = int(initial_epoch)
        self._pending = {}

    def add_scalar(self, name: str, value: Any, global_step: int | None = None, **kwargs: Any) -> None:
        """Keep one scalar for this epoch (the last value wins); matrices and other non-scalars are skipped."""
        if is_array_name(name) or not is_scalar_value(value):
            return
        self._pending[name] = float(value)

    def add_scalars(
        self, prefix: str, value_dict: Mapping[str, Any], global_step: int | None = None, **kwargs: Any
    ) -> None:
        """Keep each entry as its own tag (``prefix/`` + name when a prefix is given)."""
        for key, value in value_dict.items():
            self.add_scalar(f"{prefix}/{key}" if prefix else key, value)

    def state_dict(self) -> dict[str, Any]:
        """The open epoch and its values."""
        return {"epoch": self._epoch, "pending": dict(self._pending)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self._epoch = int(state["epoch"])
        self._pending = {str(k): float(v) for k, v in state["pending"].items()}

    def save(self) -> None:
        """Write this epoch's values at step = epoch and flush them to disk."""
        for name, value in self._pending.items():
            self.writer.add_scalar(name, value, global_step=self._epoch)
        self._pending = {}
        self._epoch += 1
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file (values added after the last :meth:`save` are not written)."""
        self.writer.close()
