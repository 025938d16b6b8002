"""npy writer: one folder per value name, one ``.npy`` file per epoch."""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Mapping
from typing import Any

import numpy as np

from delve_fast.writers.base import AbstractWriter

__all__ = ["NPYWriter"]


def _to_numpy(value: Any) -> Any:
    try:
        import torch

        if isinstance(value, torch.Tensor):
            return value.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return value


class NPYWriter(AbstractWriter):
    """Save each value as ``<savepath>/<name>/<name>_epoch<k>.npy``.

    This is the only writer that keeps the full covariance matrix (stat
    ``cov``), so stats can be recomputed later with other thresholds by
    :func:`delve_fast.tools.reconstruct_csv_from_npy_data`. The folder layout,
    the file names and the ``epoch_counter.pkl`` state file match delve's; the
    number ``k`` is the epoch (the number of earlier :meth:`save` calls), so a
    value logged only in some epochs keeps its epoch number. As in
    delve, values from :meth:`add_scalars` are named ``prefix + '_' + key``
    (the tracker's prefix is empty, so its folders start with ``_``).

    Parameters
    ----------
    savepath : str
        Root folder.
    zip : bool, default False
        After each :meth:`save`, also write ``<savepath>.zip`` with the folder.
    **kwargs
        Ignored.
    """

    def __init__(self, savepath: str, zip: bool = False, **kwargs: Any) -> None:  # noqa: A002 - delve's name
        super().__init__()
        self.savepath = os.fspath(savepath)
        self.zip = bool(zip)
        self.epoch_counter: dict[str, int] = {}
        self._epoch = 0

    @property
    def _state_file(self) -> str:
        return os.path.join(self.savepath, "epoch_counter.pkl")

    def resume_from_saved_state(self, initial_epoch: int) -> None:
        """Reload the per-name epoch counters so new files continue the numbering."""
        if self._check_savestate_ok(self._state_file):
            with open(self._state_file, "rb") as fh:
                loaded = pickle.load(fh)
            if not isinstance(loaded, dict):
                raise ValueError(f"{self._state_file} does not hold an epoch counter dict")
            self.epoch_counter = {str(k): int(v) for k, v in loaded.items()}
        self._epoch = int(initial_epoch)

    def _next_epoch(self, name: str) -> int:
        # The file number is the epoch (count of save() calls), so a value
        # logged in some epochs only keeps its epoch; a name logged twice
        # before a save() moves on to the next free number, as in delve.
        last = self.epoch_counter.get(name, -1)
        self.epoch_counter[name] = max(self._epoch, last + 1)
        return self.epoch_counter[name]

    def file_for(self, name: str, epoch: int) -> str:
        """Path of the file holding ``name`` at ``epoch`` (with the ``.npy`` suffix)."""
        return os.path.join(self.savepath, name, f"{name}_epoch{epoch}.npy")

    def add_scalar(self, name: str, value: Any, **kwargs: Any) -> None:
        """Save ``value`` (a number or an array) to the next epoch file of ``name``."""
        epoch = self._next_epoch(name)
        path = self.file_for(name, epoch)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.save(path, np.asarray(_to_numpy(value)))

    def add_scalars(
        self,
        prefix: str,
        value_dict: Mapping[str, Any],
        sample_value_dict: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Save every entry as ``prefix + '_' + key``; per-sample data (``embed``) too."""
        for key, value in value_dict.items():
            self.add_scalar(f"{prefix}_{key}", value)
        for key, value in (sample_value_dict or {}).items():
            self.add_scalar(f"{prefix}_{key}", value)

    def save(self) -> None:
        """Write the epoch counters (and the zip archive when asked); the next values belong to the next epoch."""
        self._epoch += 1
        os.makedirs(self.savepath, exist_ok=True)
        with open(self._state_file, "wb") as fh:
            pickle.dump(self.epoch_counter, fh)
        if self.zip:
            root = os.path.abspath(self.savepath)
            shutil.make_archive(root, "zip", root_dir=os.path.dirname(root), base_dir=os.path.basename(root))

    def close(self) -> None:
        """Nothing to release."""
