"""Offline helpers for files written by the tracker."""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from delve_fast import ops
from delve_fast import stats as S
from delve_fast.metrics import compute_intrinsic_dimensionality, compute_saturation
from delve_fast.writers.npy_writer import read_npy_state

if TYPE_CHECKING:  # imported on first use: `import delve_fast` should not pay for pandas
    import pandas as pd

__all__ = [
    "reconstruct_csv_from_npy_data",
    "RECOMPUTABLE_STATS",
    # delve.tools imports these two; kept at the same path.
    "compute_intrinsic_dimensionality",
    "compute_saturation",
]

#: Stats that can be recomputed from a stored covariance matrix.
RECOMPUTABLE_STATS: tuple[str, ...] = ("lsat", "idim", "trc", "dtrc", "det", "logdet")

_EPOCH_FILE = re.compile(r"^(?P<name>.+)_epoch(?P<epoch>\d+)\.npy$")
_MODE_PREFIX = re.compile(r"^_(?=(train|eval)-)")


def _column_name(folder: str) -> str:
    # The tracker hands the npy writer an empty prefix, so its folders are
    # "_train-..."/"_eval-..."; the CSV writer's columns have no underscore.
    return _MODE_PREFIX.sub("", folder)


def _collect(root: str) -> dict[str, dict[int, Path]]:
    """Folder name -> {epoch: file} for every ``<name>/<name>_epoch<k>.npy`` of a complete epoch below ``root``.

    The npy writer records how many epochs it completed (``read_npy_state``);
    files of later epochs belong to an epoch that was open when the run
    stopped (or crashed), and are left out with a warning. A folder without
    that record (written by another program) is read whole.
    """
    committed = read_npy_state(root)
    complete = None if committed is None else committed[0]
    found: dict[str, dict[int, Path]] = {}
    skipped: set[int] = set()
    for path in Path(root).rglob("*.npy"):
        match = _EPOCH_FILE.match(path.name)
        if match is None or match.group("name") != path.parent.name:
            continue
        epoch = int(match.group("epoch"))
        if complete is not None and epoch >= complete:
            skipped.add(epoch)
            continue
        found.setdefault(path.parent.name, {})[epoch] = path
    if skipped:
        warnings.warn(
            f"{root!r} holds {complete} complete epochs; the files of epochs {sorted(skipped)} were written by "
            "an epoch that never finished and are not in the table",
            RuntimeWarning,
            stacklevel=3,
        )
    return found


def _scalar(value: np.ndarray) -> float | None:
    return value.reshape(()).item() if value.size == 1 else None


def _recompute(cov_files: dict[int, Path], stat: str, thresh: float) -> dict[int, float]:
    epochs = sorted(cov_files)
    covs = [torch.from_numpy(np.load(cov_files[k])).to(torch.float64) for k in epochs]
    eigs = ops.eigvalsh_desc(covs)
    out: dict[int, float] = {}
    for k, cov, lam in zip(epochs, covs, eigs, strict=True):
        if stat == "lsat":
            out[k] = S.saturation(lam, thresh)
        elif stat == "idim":
            out[k] = S.intrinsic_dimensionality(lam, thresh)
        elif stat == "trc":
            out[k] = S.covariance_trace(cov)
        elif stat == "dtrc":
            out[k] = S.diagonal_trace(lam)
        elif stat == "det":
            out[k] = S.determinant(lam)
        else:
            out[k] = S.log_determinant(lam)
    return out


def reconstruct_csv_from_npy_data(
    npywriter_out_path: str,
    savefile: str | None = None,
    thresh: float | None = None,
    stats: Sequence[str] = ("lsat", "idim"),
) -> pd.DataFrame:
    """Rebuild the CSV writer's table from the npy writer's folder, complete epochs only.

    Without ``thresh`` the stored values are read back. With ``thresh`` the
    statistics in ``stats`` are recomputed from the stored covariance matrices
    (record with ``stats=[..., 'cov']`` and ``save_to=[..., 'npy']``), for
    example to try another saturation threshold without re-running training.

    Parameters
    ----------
    npywriter_out_path : str
        Folder the npy writer wrote (the tracker's ``savefile``).
    savefile : str, optional
        If given, the table is also written there (``;``-separated, like the
        CSV writer). The name is used as is; no ``.csv`` is appended.
    thresh : float, optional
        Saturation threshold for recomputing ``stats`` from covariance matrices.
    stats : sequence of str, default ('lsat', 'idim')
        Without ``thresh``: stats expected among the stored values (a warning
        names any that is missing). With ``thresh``: stats to recompute, any of
        ``lsat``, ``idim``, ``trc``, ``dtrc``, ``det`` and ``logdet``.

    Returns
    -------
    pandas.DataFrame
        One row per epoch (integer index), one column per scalar, named as the
        CSV writer names them (``train-saturation_<layer>``, ``loss``, ...).
        Epochs where a value is missing hold NaN.

    Raises
    ------
    FileNotFoundError
        If ``thresh`` is given but no covariance matrix was stored, or the
        folder does not exist.
    ValueError
        If a stat cannot be recomputed, or the npy writer's record of its
        complete epochs exists but cannot be read.

    Warns
    -----
    RuntimeWarning
        When files of an epoch that never finished (after the last complete
        one in the npy writer's record) are left out.
    """
    import pandas as pd

    if not os.path.isdir(npywriter_out_path):
        raise FileNotFoundError(f"{npywriter_out_path!r} is not a folder written by the npy writer")
    stats = [stats] if isinstance(stats, str) else list(stats)
    files = _collect(npywriter_out_path)
    columns: dict[str, dict[int, float]] = {}
    cov_tag = S.STATMAP["cov"]

    if thresh is None:
        for stat in stats:
            key = S.STATMAP.get(stat, stat)
            if not any(key in folder for folder in files):
                warnings.warn(f"no .npy file holds {key!r}; it is not in the table", RuntimeWarning, stacklevel=2)
    else:
        if not any(cov_tag in folder for folder in files):
            raise FileNotFoundError(
                f"no covariance matrix under {npywriter_out_path!r}; record stats=['cov'] with the 'npy' writer "
                "to recompute statistics"
            )
        bad = [s for s in stats if s not in RECOMPUTABLE_STATS]
        if bad:
            raise ValueError(f"cannot recompute {bad} from a covariance; choose from {', '.join(RECOMPUTABLE_STATS)}")

    recomputed = {S.STATMAP[s] for s in stats} if thresh is not None else set()
    for folder in sorted(files):
        by_epoch = files[folder]
        if cov_tag in folder:
            if thresh is not None:
                for stat in stats:
                    name = _column_name(folder).replace(cov_tag, S.STATMAP[stat])
                    columns[name] = _recompute(by_epoch, stat, float(thresh))
            continue
        if any(tag in folder for tag in recomputed):
            continue  # replaced by the recomputed values
        values: dict[int, float] = {}
        for epoch, path in by_epoch.items():
            value = _scalar(np.load(path))
            if value is not None:
                values[epoch] = value
        if values:
            columns[_column_name(folder)] = values

    epochs = sorted({k for col in columns.values() for k in col})
    table = pd.DataFrame(
        {name: [col.get(k, math.nan) for k in epochs] for name, col in columns.items()},
        index=pd.Index(epochs, dtype="int64"),
    )
    if savefile is not None:
        table.to_csv(savefile, sep=";")
    return table
