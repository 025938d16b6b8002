"""CSV writer: one ``;``-separated file with one row per epoch."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from delve_fast.writers._atomic import atomic_path, remove_leftovers
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
    Each :meth:`save` (the tracker calls it once per ``add_saturations()``)
    closes exactly one row, even an empty one, so the row index is the epoch.
    A name added again within the same epoch replaces its value (the last
    value wins). Columns that get no value in a row are written as empty
    (NaN) cells, so a scalar logged in some epochs only never breaks the table.

    The file is rewritten whole at every :meth:`save`, into a temporary file
    beside it that then replaces it atomically: after a crash the CSV holds
    every row of the last completed save. Temporary files that a crash left
    behind are removed when the writer is created.

    Parameters
    ----------
    savepath : str
        The file is ``savepath + '.csv'``.
    fsync : bool, default True
        Force every file to disk before it replaces the previous one (safe
        against power cuts, not only killed processes). Each ``fsync`` costs
        milliseconds on most disks; ``False`` keeps the files safe against a
        killed process but not against an operating system crash.
    **kwargs
        Ignored (writers created from a string key all receive the same
        ``writer_args``).
    """

    commit_order = 1

    def __init__(self, savepath: str, fsync: bool = True, **kwargs: Any) -> None:
        super().__init__()
        self.savepath = os.fspath(savepath)
        self.fsync = bool(fsync)
        self.epoch_counter = 0
        self._columns: list[str] = []
        self._rows: list[dict[str, Any]] = []
        self._open: dict[str, Any] = {}
        folder, name = os.path.split(self.csv_path)
        remove_leftovers(folder or ".", target=lambda target: target == name)

    @property
    def csv_path(self) -> str:
        """Path of the CSV file."""
        return self.savepath + ".csv"

    # -- recording ---------------------------------------------------------
    def resume_from_saved_state(self, initial_epoch: int) -> None:
        """Reload the rows of an earlier run's CSV, as the first ``initial_epoch`` epochs.

        Rows numbered ``initial_epoch`` or higher belong to epochs the resumed
        run records again, so they are dropped; missing rows (a CSV shorter
        than ``initial_epoch``) become empty rows, so the row index stays the
        epoch. Either case is logged as a warning.
        """
        self.epoch_counter = int(initial_epoch)
        self._open = {}
        if not self._check_savestate_ok(self.csv_path):
            self._rows = [{} for _ in range(self.epoch_counter)]
            return
        df = self._read_complete_rows()
        self._columns = [str(c) for c in df.columns]
        rows = [
            {str(k): v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
            for row in df.to_dict("records")
        ]
        if len(rows) != initial_epoch:
            log.warning(
                "%s holds %d rows but the run resumes at initial_epoch=%d: %s",
                self.csv_path,
                len(rows),
                initial_epoch,
                "rows from that epoch on are dropped" if len(rows) > initial_epoch else "the missing rows are empty",
            )
        self._rows = rows[: self.epoch_counter] + [{} for _ in range(self.epoch_counter - len(rows))]

    def _read_complete_rows(self) -> pd.DataFrame:
        """Read the CSV, leaving out a last line that a killed writer left unfinished.

        Every CSV this writer (or delve's, or pandas) writes ends with a
        newline, so a file that does not was cut mid-line (delve writes in
        place, and a copy can be cut short): that line's numbers may be cut
        mid-digit, so the line is dropped with a warning rather than read as
        wrong values. A file cut inside its header holds no row.
        """
        import io

        import pandas as pd

        with open(self.csv_path, encoding="utf-8", newline="") as fh:
            text = fh.read()
        if text and not text.endswith("\n"):
            complete, _, partial = text.rpartition("\n")
            warnings.warn(
                f"{self.csv_path!r} ends in an unfinished line (the run that wrote it was killed mid-write?): "
                f"{partial[:60]!r} is left out",
                RuntimeWarning,
                stacklevel=3,
            )
            text = complete + "\n" if complete else ""
        if not text.strip():  # empty, or cut inside the header: no row (the caller warns about the count)
            return pd.DataFrame()
        return pd.read_csv(io.StringIO(text), sep=";", index_col=0)

    def add_scalar(self, name: str, value: Any, **kwargs: Any) -> None:
        """Put ``value`` in column ``name`` of the open row (the last value of an epoch wins).

        Covariance matrices and other non-scalar values are skipped (only the
        npy writer stores them). ``global_step`` and other keywords are
        ignored: the row is the epoch.
        """
        if is_array_name(name) or not is_scalar_value(value):
            return
        if name not in self._columns:
            self._columns.append(name)
        self._open[name] = _to_cell(value)

    def add_scalars(self, prefix: str, value_dict: Mapping[str, Any], **kwargs: Any) -> None:
        """Add every entry of ``value_dict``; like delve, ``prefix`` is not used in column names."""
        for name, value in value_dict.items():
            self.add_scalar(name, value)

    def _close_row(self) -> None:
        self._rows.append(self._open)
        self._open = {}

    # -- checkpoint ----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Columns, closed rows, the open row and the epoch: the CSV written after a restore is the same."""
        return {
            "epoch": self.epoch_counter,
            "columns": list(self._columns),
            "rows": [dict(row) for row in self._rows],
            "open": dict(self._open),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; the file is rewritten at the next :meth:`save`."""
        self.epoch_counter = int(state["epoch"])
        self._columns = [str(c) for c in state["columns"]]
        self._rows = [dict(row) for row in state["rows"]]
        self._open = dict(state["open"])

    # -- output ------------------------------------------------------------
    def to_dataframe(self) -> pd.DataFrame:
        """Return the table: saved rows plus the open one, NaN where a value is missing."""
        import pandas as pd

        rows = self._rows + ([self._open] if self._open else [])
        if rows and not self._columns:
            # from_records drops rows that have no column; the index alone keeps one row per epoch.
            return pd.DataFrame(index=range(len(rows)))
        return pd.DataFrame.from_records(rows, columns=self._columns) if rows else pd.DataFrame(columns=self._columns)

    @property
    def value_dict(self) -> dict[str, list[Any]]:
        """Column name to list of values (padded with NaN), as delve exposes it."""
        return self.to_dataframe().to_dict("list")

    def save(self) -> None:
        """Close the epoch's row (empty if nothing was added) and rewrite the CSV file atomically."""
        self._close_row()
        self.epoch_counter += 1
        folder = os.path.dirname(self.csv_path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        table = self.to_dataframe()
        with atomic_path(self.csv_path, fsync=self.fsync) as tmp:
            table.to_csv(tmp, sep=";")

    def close(self) -> None:
        """Nothing to release; the file is complete after every :meth:`save`."""
