"""Statistics that never stop a run: NaN cells and a warning instead of an exception.

:func:`compute_layers_safely` wraps :func:`delve_fast.stats.compute_layers`
for the tracker. A layer whose state holds no valid sample (every batch held a
NaN or an Inf), whose covariance is not finite, or whose eigenvalue solve
fails gets NaN in each of its cells, with a :class:`RuntimeWarning` that says
why; every other layer gets its numbers as usual. Skipped batches are reported
once per affected layer and mode, with their count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from delve_fast import stats as S
from delve_fast._warn import warn_user

__all__ = ["compute_layers_safely", "nan_cells", "NUMERIC_ERRORS"]

#: ``(mode, layer, state, to_delve_order)``, as :func:`delve_fast.stats.compute_layers` takes them.
Entry = tuple[str, str, Any, Callable[[torch.Tensor], torch.Tensor]]

#: What a failing statistic may raise: torch.linalg.LinAlgError is a RuntimeError,
#: NumPy's is its own class; a ValueError comes from shape checks on odd input.
NUMERIC_ERRORS = (RuntimeError, ValueError, ArithmeticError, np.linalg.LinAlgError)


def nan_cells(mode: str, layer: str, n_features: int | None, keys: Sequence[str]) -> dict[str, Any]:
    """NaN for every scalar statistic ``keys`` of one layer and mode (a NaN matrix for ``cov``).

    Per-sample statistics (``embed``) are left out: there is no sample to report.
    """
    cells: dict[str, Any] = {}
    for key in keys:
        stat = S.STATS[key]
        if stat.per_sample:
            continue
        value: Any = np.nan
        if key == "cov" and n_features:
            value = np.full((n_features, n_features), np.nan)
        cells[f"{mode}-{stat.name}_{layer}"] = value
    return cells


def _warn(message: str) -> None:
    warn_user(f"delve_fast: {message}", RuntimeWarning)


def _counts(entries: Sequence[Entry]) -> list[tuple[int, int, bool]]:
    """``(samples, skipped batches, state finite)`` per entry, with one host transfer per device."""
    out: list[tuple[int, int, bool] | None] = [None] * len(entries)
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, _, state, _) in enumerate(entries):
        by_device.setdefault(state.state.counts.device, []).append(i)
    for idx in by_device.values():
        rows = []
        for i in idx:
            st = entries[i][2].state
            finite = torch.isfinite(st.m2).all() & torch.isfinite(st.mean).all()
            rows.append(torch.cat([st.counts, finite.to(torch.float64).reshape(1)]))
        for i, (samples, skipped, finite) in zip(idx, torch.stack(rows).tolist(), strict=True):
            out[i] = (int(samples), int(skipped), bool(finite))
    return out  # type: ignore[return-value]


def compute_layers_safely(
    entries: Sequence[Entry],
    mode_stats: dict[str, Sequence[str]],
    threshold: float,
    rule: str = "delve",
    *,
    average: bool = False,
    backend: str | None = None,
    warned: set[tuple[str, str]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`delve_fast.stats.compute_layers`, with NaN cells where a layer's statistics cannot be computed.

    Parameters are those of :func:`delve_fast.stats.compute_layers`; a state
    may hold zero samples here (all its batches were skipped).

    Returns
    -------
    values, samples : dict
        As :func:`delve_fast.stats.compute_layers`. Layers with NaN cells are
        left out of ``average-<mode>-sat``, which is NaN when no layer of that
        mode has numbers.

    Warns
    -----
    RuntimeWarning
        Once per layer and mode that skipped batches (with their count), and
        once per layer and mode whose statistics are NaN, with the reason.
    """
    good: list[Entry] = []
    broken: list[Entry] = []
    for entry, (samples, skipped, finite) in zip(entries, _counts(entries), strict=True):
        mode, layer = entry[0], entry[1]
        if skipped:
            if samples == 0:
                _warn(
                    f"layer {layer!r} ({mode}): all {skipped} recorded batch(es) since the covariance was last "
                    "reset held NaN or Inf and were left out; its statistics are NaN"
                )
            else:
                _warn(
                    f"layer {layer!r} ({mode}): {skipped} batch(es) holding NaN or Inf were left out since the "
                    f"covariance was last reset; its statistics use the other {samples} samples"
                )
        if samples == 0:
            broken.append(entry)
        elif not finite:
            _warn(f"layer {layer!r} ({mode}): its covariance holds NaN or Inf; its statistics are NaN")
            broken.append(entry)
        else:
            good.append(entry)

    def run(subset: Sequence[Entry], with_average: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        return S.compute_layers(
            subset, mode_stats, threshold, rule, average=with_average, backend=backend, warned=warned
        )

    try:
        values, samples = run(good, average) if good else ({}, {})
    except NUMERIC_ERRORS:
        # Find the layers that fail on their own; the rest are computed together again.
        survivors = []
        for entry in good:
            try:
                run([entry], False)
            except NUMERIC_ERRORS as exc:
                _warn(
                    f"layer {entry[1]!r} ({entry[0]}): its statistics could not be computed "
                    f"({type(exc).__name__}: {exc}); its statistics are NaN"
                )
                broken.append(entry)
            else:
                survivors.append(entry)
        try:
            values, samples = run(survivors, average) if survivors else ({}, {})
        except NUMERIC_ERRORS as exc:
            _warn(f"the statistics could not be computed ({type(exc).__name__}: {exc}); every cell is NaN")
            broken.extend(survivors)
            values, samples = {}, {}
    for mode, layer, state, _ in broken:
        values.update(nan_cells(mode, layer, state.dim, mode_stats[mode]))
    if average:
        for mode in S.MODES:
            key = f"average-{mode}-sat"
            if key not in values and any(e[0] == mode for e in entries):
                values[key] = float("nan")
    return values, samples
