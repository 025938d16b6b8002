"""CSV writer: one ``;``-separated file with one row per epoch."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from delve_fast.writers.base import AbstractWriter, is_array_name, is_scalar_value, log

if TYPE_CHECKING:  # pandas is imported when a table is first read or written, not with delve_fast
    import pandas as pd

__all__ = ["CSVWriter"]


def _to_cell(value: Any) -> Any:
    """Turn a tensor or NumPy scalar into a plain Python number for the table."""
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.reshape(()).item()
    try:
        import torch

        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    return value


class CSVWriter(AbstractWriter):
    """Write every scalar into ``<savepath>.csv``, one row per epoch.

    The file uses ``;`` as separator and an integer index column, exactly as
    delve's CSV writer does, so scripts reading delve's files read these too.
    A row is closed by :meth:`save` (the tracker calls it once per
    ``add_saturations()``), or when a name that the open row already holds is
    added again. Columns that get no value in a row are written as empty
    (NaN) cells, so a scalar logged in some epochs only never breaks the table.

    Parameters
    ----------
    savepath : str
        The file is ``savepath + '.csv'``.
    **kwargs
        Ignored (writers created from a string key all receive the same
        ``writer_args``).
    """

    def __init__(self, savepath: str, **kwargs: Any) -> None:
        super().__init__()
        self.savepath = os.fspath(savepath)
        self.epoch_counter = 0
        self._columns: list[str] = []
        self._rows: list[dict[str, Any]] = []
        self._open: dict[str, Any] = {}

    @property
    def csv_path(self) -> str:
        """Path of the CSV file."""
        return self.savepath + ".csv"

    # -- recording ---------------------------------------------------------
    def resume_from_saved_state(self, initial_epoch: int) -> None:
        """Reload the rows of an earlier run's CSV so none is lost."""
        self.epoch_counter = initial_epoch
        if not self._check_savestate_ok(self.csv_path):
            return
        import pandas as pd

        df = pd.read_csv(self.csv_path, sep=";", index_col=0)
        self._columns = [str(c) for c in df.columns]
        self._rows = [
            {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
            for row in df.to_dict("records")
        ]
        self._open = {}
        if len(self._rows) != initial_epoch:
            log.info(
                "resumed %s with %d rows while initial_epoch=%d; all rows are kept",
                self.csv_path,
                len(self._rows),
                initial_epoch,
            )

    def add_scalar(self, name: str, value: Any, **kwargs: Any) -> None:
        """Put ``value`` in column ``name`` of the open row.

        Covariance matrices and other non-scalar values are skipped (only the
        npy writer stores them).
        """
        if is_array_name(name) or not is_scalar_value(value):
            return
        if name in self._open:
            self._close_row()
        if name not in self._columns:
            self._columns.append(name)
        self._open[name] = _to_cell(value)

    def add_scalars(self, prefix: str, value_dict: Mapping[str, Any], **kwargs: Any) -> None:
        """Add every entry of ``value_dict``; like delve, ``prefix`` is not used in column names."""
        for name, value in value_dict.items():
            self.add_scalar(name, value)

    def _close_row(self) -> None:
        if self._open:
            self._rows.append(self._open)
            self._open = {}

    # -- output ------------------------------------------------------------
    def to_dataframe(self) -> pd.DataFrame:
        """Return the table: saved rows plus the open one, NaN where a value is missing."""
        import pandas as pd

        rows = self._rows + ([self._open] if self._open else [])
        return pd.DataFrame.from_records(rows, columns=self._columns) if rows else pd.DataFrame(columns=self._columns)

    @property
    def value_dict(self) -> dict[str, list[Any]]:
        """Column name to list of values (padded with NaN), as delve exposes it."""
        return self.to_dataframe().to_dict("list")

    def save(self) -> None:
        """Close the open row and rewrite the CSV file."""
        self._close_row()
        folder = os.path.dirname(self.csv_path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        # Write beside the file and swap it in: a crash mid-write must never
        # leave a truncated CSV in place of the rows already saved.
        tmp = f"{self.csv_path}.tmp-{os.getpid()}"
        try:
            self.to_dataframe().to_csv(tmp, sep=";")
            os.replace(tmp, self.csv_path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        self.epoch_counter += 1

    def close(self) -> None:
        """Nothing to release; the file is complete after every :meth:`save`."""
