"""npy writer: one folder per value name, one ``.npy`` file per epoch."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from delve_fast.writers._atomic import atomic_write, is_temporary, remove_leftovers
from delve_fast.writers.base import AbstractWriter, log

__all__ = ["NPYWriter", "STATE_FILE", "LEGACY_STATE_FILE", "read_npy_state"]

#: The commit record of an npy folder (JSON): which epochs are complete.
STATE_FILE = "epoch_counter.json"
#: delve's pickled ``{name: last epoch}`` counter, still read when resuming an old folder.
LEGACY_STATE_FILE = "epoch_counter.pkl"
_STATE_FORMAT = "delve_fast-npy-epochs"
_STATE_VERSION = 1


def _to_numpy(value: Any) -> np.ndarray:
    try:
        import torch

        if isinstance(value, torch.Tensor):
            return value.detach().cpu().numpy().copy()
    except ImportError:  # pragma: no cover
        pass
    # A copy: the value is written at save(), and the caller may change its array before then.
    return np.array(value, copy=True)


def read_npy_state(savepath: str) -> tuple[int, dict[str, int]] | None:
    """Read the commit record of an npy folder.

    Parameters
    ----------
    savepath : str
        The npy writer's root folder.

    Returns
    -------
    (epochs, counter) or None
        ``epochs``: the number of complete epochs (files ``_epoch0`` to
        ``_epoch<epochs-1>``); ``counter``: each name's last epoch file.
        ``None`` when the folder has no record. A delve-style
        ``epoch_counter.pkl`` counts as complete up to its highest epoch.

    Raises
    ------
    ValueError
        If the record exists but cannot be read.
    """
    path = os.path.join(savepath, STATE_FILE)
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            if data.get("format") != _STATE_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {_STATE_FORMAT!r}")
            return int(data["epochs"]), {str(k): int(v) for k, v in data["counter"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"cannot read the npy writer's state {path!r}: {exc}") from None
    legacy = os.path.join(savepath, LEGACY_STATE_FILE)
    if os.path.exists(legacy):
        try:
            with open(legacy, "rb") as fh:
                loaded = pickle.load(fh)
            counter = {str(k): int(v) for k, v in loaded.items()}
        except Exception as exc:  # an empty or truncated pickle raises EOFError, UnpicklingError, ...
            raise ValueError(f"cannot read the npy writer's state {legacy!r}: {type(exc).__name__}: {exc}") from None
        return (max(counter.values()) + 1 if counter else 0), counter
    return None


class NPYWriter(AbstractWriter):
    """Save each value as ``<savepath>/<name>/<name>_epoch<k>.npy``.

    This is the only writer that keeps the full covariance matrix (stat
    ``cov``), so stats can be recomputed later with other thresholds by
    :func:`delve_fast.tools.reconstruct_csv_from_npy_data`. The folder layout
    and the file names match delve's. The number ``k`` is the epoch (the
    number of earlier :meth:`save` calls, from ``initial_epoch``), so a value
    logged only in some epochs keeps its epoch number; a name added several
    times within one epoch keeps its last value. As in delve, values from
    :meth:`add_scalars` are named ``prefix + '_' + key`` (the tracker's
    prefix is empty, so its folders start with ``_``).

    Crash safety: values are held in memory until :meth:`save`, which writes
    each file atomically (temporary file, then rename) and then replaces
    ``epoch_counter.json``, the commit record: an epoch is complete once the
    record counts it. Files of an epoch that a crash left uncommitted, and
    temporary files, are removed when the run resumes (``initial_epoch``);
    temporary files also when a writer starts.

    Parameters
    ----------
    savepath : str
        Root folder.
    zip : bool, default False
        After each :meth:`save`, also write ``<savepath>.zip`` with the folder
        (atomically, after the commit record).
    fsync : bool, default True
        Force every file to disk before it is moved into place (see
        :class:`~delve_fast.writers.CSVWriter`); ``False`` is much faster when
        an epoch writes many files, and still safe against a killed process.
    **kwargs
        Ignored.
    """

    commit_order = -1

    def __init__(  # noqa: A002 - zip is delve's name
        self, savepath: str, zip: bool = False, fsync: bool = True, **kwargs: Any
    ) -> None:
        super().__init__()
        self.savepath = os.fspath(savepath)
        self.fsync = bool(fsync)
        self.zip = bool(zip)
        #: Each name's last epoch file.
        self.epoch_counter: dict[str, int] = {}
        self._epoch = 0
        self._pending: dict[str, np.ndarray] = {}
        self._record_checked = False
        remove_leftovers(self.savepath, recursive=True)
        parent, stem = os.path.split(os.path.abspath(self.savepath))
        remove_leftovers(parent, target=lambda name: name == stem + ".zip")

    @property
    def _state_file(self) -> str:
        return os.path.join(self.savepath, STATE_FILE)

    @property
    def epoch(self) -> int:
        """The open epoch: the number its files will carry."""
        return self._epoch

    def file_for(self, name: str, epoch: int) -> str:
        """Path of the file holding ``name`` at ``epoch`` (with the ``.npy`` suffix)."""
        return os.path.join(self.savepath, name, f"{name}_epoch{epoch}.npy")

    # -- resume ----------------------------------------------------------------
    def _epoch_files(self) -> dict[str, dict[int, str]]:
        """``{name: {epoch: path}}`` of every epoch file on disk."""
        found: dict[str, dict[int, str]] = {}
        if not os.path.isdir(self.savepath):
            return found
        for name in sorted(os.listdir(self.savepath)):
            folder = os.path.join(self.savepath, name)
            if not os.path.isdir(folder):
                continue
            pattern = re.compile(re.escape(name) + r"_epoch(\d+)\.npy")
            for filename in os.listdir(folder):
                match = pattern.fullmatch(filename)
                if match is not None and not is_temporary(filename):
                    found.setdefault(name, {})[int(match.group(1))] = os.path.join(folder, filename)
        return found

    def resume_from_saved_state(self, initial_epoch: int) -> None:
        """Continue at ``initial_epoch``: files of that epoch and later are deleted, the counter rebuilt.

        Those files belong to epochs the resumed run records again (or to an
        epoch a crash left half-written), so keeping them would give folders
        with different epochs. Epochs below ``initial_epoch`` that were never
        committed are reported with a warning.
        """
        initial_epoch = int(initial_epoch)
        state = read_npy_state(self.savepath) if os.path.isdir(self.savepath) else None
        if state is None:
            self._check_savestate_ok(self._state_file)
        committed = 0 if state is None else state[0]
        if committed < initial_epoch and state is not None:
            log.warning(
                "%s holds %d complete epochs but the run resumes at initial_epoch=%d; epochs %d to %d are missing",
                self.savepath,
                committed,
                initial_epoch,
                committed,
                initial_epoch - 1,
            )
        self._epoch = initial_epoch
        self._pending = {}
        self._discard_from(initial_epoch, committed, write_record=state is not None)
        self._record_checked = True

    def _discard_from(self, epoch: int, committed: int, write_record: bool = True) -> None:
        """Delete the files of ``epoch`` and later; rebuild the counter from the files kept.

        The commit record is rewritten first (to ``min(committed, epoch)``
        epochs), so a crash halfway through the deletion leaves only files
        beyond the record, which the next resume deletes.
        """
        files = self._epoch_files()
        self.epoch_counter = {}
        for name, by_epoch in files.items():
            kept = [k for k in by_epoch if k < epoch]
            if kept:
                self.epoch_counter[name] = max(kept)
        if write_record:
            self._write_state(min(committed, epoch))
        doomed = [path for by_epoch in files.values() for k, path in by_epoch.items() if k >= epoch]
        for path in doomed:
            os.remove(path)
        if doomed:
            log.warning("%s: removed %d files of epochs >= %d before resuming", self.savepath, len(doomed), epoch)

    # -- recording ---------------------------------------------------------------
    def add_scalar(self, name: str, value: Any, **kwargs: Any) -> None:
        """Keep ``value`` (a number or an array) as this epoch's value of ``name`` (the last one wins).

        ``global_step`` and other keywords are ignored: the file number is the epoch.
        """
        self._pending[str(name)] = _to_numpy(value)

    def add_scalars(
        self,
        prefix: str,
        value_dict: Mapping[str, Any],
        sample_value_dict: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Keep every entry as ``prefix + '_' + key``; per-sample data (``embed``) too."""
        for key, value in value_dict.items():
            self.add_scalar(f"{prefix}_{key}", value)
        for key, value in (sample_value_dict or {}).items():
            self.add_scalar(f"{prefix}_{key}", value)

    # -- checkpoint ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The open epoch, the counters and the values waiting for the next :meth:`save`."""
        return {
            "epoch": self._epoch,
            "counter": dict(self.epoch_counter),
            "pending": {k: v.copy() for k, v in self._pending.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; the next :meth:`save` lowers a commit record that counts later epochs."""
        self._epoch = int(state["epoch"])
        self.epoch_counter = {str(k): int(v) for k, v in state["counter"].items()}
        self._pending = {str(k): np.array(v, copy=True) for k, v in state["pending"].items()}
        self._record_checked = False

    # -- output --------------------------------------------------------------------
    def _write_state(self, epochs: int) -> None:
        record = {"format": _STATE_FORMAT, "version": _STATE_VERSION, "epochs": epochs, "counter": self.epoch_counter}
        text = json.dumps(record, indent=1, sort_keys=True).encode("utf-8")
        os.makedirs(self.savepath, exist_ok=True)
        atomic_write(self._state_file, lambda fh: fh.write(text), fsync=self.fsync)

    def _write_zip(self) -> None:
        root = os.path.abspath(self.savepath)
        base = os.path.basename(root)

        def write(fh: io.BufferedWriter) -> None:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for folder, dirs, files in os.walk(root):
                    dirs.sort()
                    for filename in sorted(files):
                        if is_temporary(filename):
                            continue
                        path = os.path.join(folder, filename)
                        archive.write(path, os.path.join(base, os.path.relpath(path, root)))

        atomic_write(root + ".zip", write, fsync=self.fsync)

    def save(self) -> None:
        """Close the epoch: write its files, then commit them in ``epoch_counter.json`` (then the zip, if asked)."""
        if not self._record_checked:
            # A record left by an earlier run (or by this run after the checkpoint we were restored
            # from) may count epochs this writer is about to write again: lower it before touching
            # their files, so that a crash halfway through this save never leaves a record that
            # vouches for a half-rewritten epoch. Files beyond the record are not part of the run.
            self._record_checked = True
            state = read_npy_state(self.savepath) if os.path.isdir(self.savepath) else None
            if state is not None and state[0] > self._epoch:
                self._write_state(self._epoch)
        for name, value in self._pending.items():
            path = self.file_for(name, self._epoch)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write(path, lambda fh, value=value: np.save(fh, value), fsync=self.fsync)
            self.epoch_counter[name] = self._epoch
        self._pending = {}
        self._epoch += 1
        self._write_state(self._epoch)
        if self.zip:
            self._write_zip()

    def close(self) -> None:
        """Nothing to release; values added after the last :meth:`save` belong to no epoch and are not written."""
