"""Checks of the tracker's arguments: each names the bad value and the valid choices.

Pure functions: each returns the normalised value or raises ``TypeError`` /
``ValueError``. :func:`make_writer` also turns ``save_to`` into a writer.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from delve_fast.stats import MODES, STATS
from delve_fast.writers import WRITERS, AbstractWriter, CompositWriter, NPYWriter

__all__ = [
    "check_int",
    "check_choice",
    "check_threshold",
    "check_savefile",
    "check_stats",
    "check_writer_args",
    "make_writer",
    "warn_if_covariance_not_saveable",
]


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int, which must be ``>= minimum`` (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value``, which must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(map(repr, choices))}")
    return value


def check_threshold(value: Any, name: str = "sat_threshold") -> float:
    """A share of variance in ``(0, 1]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{name} must be a float in (0, 1], got {value!r}")
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return float(value)


def check_savefile(savefile: Any) -> str:
    """A non-empty str (a path-like is converted)."""
    if isinstance(savefile, os.PathLike):
        savefile = os.fspath(savefile)
    if not isinstance(savefile, str) or not savefile:
        raise TypeError(f"savefile must be a non-empty str or path, got {savefile!r}")
    return savefile


def check_writer_args(writer_args: Any) -> dict[str, Any]:
    """A copy of ``writer_args`` (None is an empty dict)."""
    if writer_args is not None and not isinstance(writer_args, Mapping):
        raise TypeError(f"writer_args must be a dict or None, got {type(writer_args).__name__}")
    return dict(writer_args or {})


def check_stats(stats: str | Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Parse ``stats``: the list as given, and each mode's stat keys (a ``_train``/``_eval`` suffix picks one mode).

    Returns
    -------
    stats : list of str
    per_mode : dict
        ``{"train": [...], "eval": [...]}``, each key once, in the order given.
    """
    if isinstance(stats, str):
        stats = [stats]
    try:
        stats = list(stats)
    except TypeError:
        raise TypeError(f"stats must be a str or a list of str, got {type(stats).__name__}") from None
    per_mode: dict[str, list[str]] = {m: [] for m in MODES}
    supported = tuple(STATS)  # read now, so a stat added to the table is accepted
    for stat in stats:
        if not isinstance(stat, str):
            raise TypeError(f"every stat must be a str, got {stat!r}")
        base, _, mode = stat.partition("_")
        if base not in supported or (mode and mode not in MODES):
            raise ValueError(
                f"stat {stat!r} is not supported; choose from {', '.join(supported)}, "
                "optionally suffixed with '_train' or '_eval'"
            )
        for m in (mode,) if mode else MODES:
            if base not in per_mode[m]:
                per_mode[m].append(base)
    return stats, per_mode


def make_writer(save_to: Any, writer_args: dict[str, Any]) -> AbstractWriter:
    """Turn ``save_to`` (a key of :data:`delve_fast.writers.WRITERS`, a writer, or a list) into one writer."""
    if isinstance(save_to, AbstractWriter):
        return save_to
    if isinstance(save_to, (list, tuple)):
        return CompositWriter([make_writer(s, writer_args) for s in save_to])
    if isinstance(save_to, str) and save_to in WRITERS:
        return WRITERS[save_to](**writer_args)
    raise ValueError(
        f"save_to={save_to!r} is not supported; use one of {', '.join(map(repr, WRITERS))}, "
        "an AbstractWriter instance, or a list of these"
    )


def warn_if_covariance_not_saveable(writer: AbstractWriter, per_mode: Mapping[str, Sequence[str]]) -> None:
    """Warn when ``cov`` is requested but no writer stores matrices (only NPYWriter does)."""
    if not any("cov" in stats for stats in per_mode.values()):
        return
    writers = writer.writers if isinstance(writer, CompositWriter) else [writer]
    if not any(isinstance(w, NPYWriter) for w in writers):
        warnings.warn(
            "stat 'cov' was requested, but only the 'npy' writer (NPYWriter) stores covariance matrices and "
            "none is in save_to; the matrices will not be saved (pass a list such as ['csv', 'npy'])",
            RuntimeWarning,
            stacklevel=3,
        )


def tracker_settings(
    *,
    savefile: Any,
    log_interval: Any,
    max_samples: Any,
    conv_method: Any,
    timeseries_method: Any,
    sat_threshold: Any,
    initial_epoch: Any,
    interpolation_strategy: Any,
    interpolation_downsampling: Any,
    ignore_layer_names: Any,
    max_saved_samples: Any,
    idim_rule: Any,
    stats: Any,
) -> dict[str, Any]:
    """Check the tracker's arguments and return its settings, by attribute name.

    The keys are delve's attribute names (``threshold`` for ``sat_threshold``,
    ``interval`` as an alias of ``log_interval``) plus ``_mode_stats``, each
    mode's stat keys (see :func:`check_stats`).
    """
    from delve_fast.stats import IDIM_RULES
    from delve_fast.views import CONV_METHODS, INTERPOLATION_MODES, TIMESERIES_METHODS

    if interpolation_strategy is not None:
        check_choice("interpolation_strategy", interpolation_strategy, INTERPOLATION_MODES)
    interval = check_int("log_interval", log_interval, 1)
    stat_list, per_mode = check_stats(stats)
    return {
        "savefile": check_savefile(savefile),
        "log_interval": interval,
        "interval": interval,
        "max_samples": None if max_samples is None else check_int("max_samples", max_samples, 1),
        "conv_method": check_choice("conv_method", conv_method, CONV_METHODS),
        "timeseries_method": check_choice("timeseries_method", timeseries_method, TIMESERIES_METHODS),
        "threshold": check_threshold(sat_threshold),
        "initial_epoch": check_int("initial_epoch", initial_epoch, 0),
        "interpolation_strategy": interpolation_strategy,
        "interpolation_downsampling": check_int("interpolation_downsampling", interpolation_downsampling, 1),
        "ignore_layer_names": [ignore_layer_names] if isinstance(ignore_layer_names, str) else list(ignore_layer_names),
        "max_saved_samples": check_int("max_saved_samples", max_saved_samples, 0),
        "idim_rule": check_choice("idim_rule", idim_rule, IDIM_RULES),
        "stats": stat_list,
        "_mode_stats": per_mode,
    }
