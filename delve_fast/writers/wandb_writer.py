"""Weights & Biases writer: every value into a W&B run, with the epoch as its step, and the heat map as an image."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from delve_fast.writers.base import COVARIANCE_TAG, AbstractWriter, is_scalar_value, log

__all__ = ["WandbWriter"]


def _import_wandb() -> Any:
    from delve_fast.integrations._common import require

    return require("wandb", "wandb", "the 'wandb' writer (save_to='wandb')")


def _run_from_rows(path: Path, epochs: list[int], rows: list[dict[str, float]]) -> Any:
    """A :class:`delve_fast.report.Run` built from rows in memory, for :func:`~delve_fast.report.plot_heatmap`."""
    import pandas as pd  # only when a heat map is drawn: import delve_fast stays light

    from delve_fast.report import run_from_frame

    return run_from_frame(pd.DataFrame.from_records(rows, index=epochs), path)


class WandbWriter(AbstractWriter):
    """Log every scalar to a Weights & Biases run, one ``wandb.log`` call per epoch.

    Values are logged under ``<wandb_prefix><column>`` (for example
    ``delve/train-saturation_fc1``) together with ``<wandb_prefix>epoch``,
    which is declared as their step (``wandb.define_metric``), so the charts
    show epochs on the x axis without disturbing the step of anything else
    logged to the same run (a Trainer's loss, for instance). After each epoch
    the layers x epochs heat map of saturation (of the first statistic
    recorded, when saturation is not) is drawn with
    :func:`delve_fast.report.plot_heatmap`, saved as
    ``<savepath>_<stat>_heatmap.png`` and logged as a ``wandb.Image`` under
    ``<wandb_prefix><stat>_heatmap``.

    The writer logs into the active run (``wandb.run``) when there is one,
    else starts one with ``wandb.init(**wandb_init)`` and finishes it at
    :meth:`close`. Offline runs (``WANDB_MODE=offline``) work as usual.

    Parameters
    ----------
    savepath : str
        File stem of the heat-map PNG.
    wandb_init : dict, optional
        Keyword arguments for ``wandb.init`` (``project``, ``name``,
        ``config``, ``mode``, ``dir``, ...), used only when no run is active.
    wandb_run : wandb Run, optional
        Log into this run instead of the active one.
    wandb_prefix : str, default "delve/"
        Prefix of every key (W&B groups charts by the part before ``/``).
    wandb_images : bool, default True
        Draw and log the heat map after every epoch.
    **kwargs
        Ignored (writers created from a string key all receive the same
        ``writer_args``).
    """

    def __init__(
        self,
        savepath: str,
        wandb_init: Mapping[str, Any] | None = None,
        wandb_run: Any = None,
        wandb_prefix: str = "delve/",
        wandb_images: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if wandb_init is not None and not isinstance(wandb_init, Mapping):
            raise TypeError(f"wandb_init must be a dict of wandb.init arguments, got {type(wandb_init).__name__}")
        if not isinstance(wandb_prefix, str):
            raise TypeError(f"wandb_prefix must be a str, got {wandb_prefix!r}")
        self.wandb = _import_wandb()
        self.savepath = os.fspath(savepath)
        self.prefix = wandb_prefix
        self.images = bool(wandb_images)
        self._owns_run = False
        if wandb_run is not None:
            self.run = wandb_run
        elif self.wandb.run is not None:
            self.run = self.wandb.run
        else:
            self.run = self.wandb.init(**dict(wandb_init or {}))
            self._owns_run = True
        self.step_key = f"{self.prefix}epoch"
        self.run.define_metric(self.step_key)
        self.run.define_metric(f"{self.prefix}*", step_metric=self.step_key)
        self.epoch = 0
        self._open: dict[str, float] = {}
        self._open_step: int | None = None
        self._epochs: list[int] = []
        self._rows: list[dict[str, float]] = []
        self.heatmap_paths: list[str] = []
        self._closed = False

    def resume_from_saved_state(self, initial_epoch: int) -> None:
        """Continue at ``initial_epoch``; the heat map then starts at that epoch too."""
        self.epoch = int(initial_epoch)

    def add_scalar(self, name: str, value: Any, global_step: int | None = None, **kwargs: Any) -> None:
        """Keep one scalar for this epoch's ``wandb.log``; matrices and other non-scalars are skipped."""
        if COVARIANCE_TAG in name or not is_scalar_value(value):
            return
        if name in self._open:  # a second value for the same name starts the next epoch, as in the CSV
            self.save()
        self._open[name] = float(value)
        if global_step is not None:
            self._open_step = int(global_step)

    def add_scalars(
        self, prefix: str, value_dict: Mapping[str, Any], global_step: int | None = None, **kwargs: Any
    ) -> None:
        """Keep every entry (``prefix/`` + name when a prefix is given)."""
        for key, value in value_dict.items():
            self.add_scalar(f"{prefix}/{key}" if prefix else key, value, global_step=global_step)

    def save(self) -> None:
        """Log the epoch's values (and heat map) in one ``wandb.log`` call."""
        if not self._open:
            return
        step = self.epoch if self._open_step is None else self._open_step
        row, self._open, self._open_step = self._open, {}, None
        self._epochs.append(step)
        self._rows.append(row)
        payload: dict[str, Any] = {f"{self.prefix}{name}": value for name, value in row.items()}
        payload[self.step_key] = step
        if self.images:
            image = self._heatmap()
            if image is not None:
                stat, path = image
                payload[f"{self.prefix}{stat}_heatmap"] = self.wandb.Image(path)
        self.run.log(payload)
        self.epoch = step + 1

    def _heatmap(self) -> tuple[str, str] | None:
        from delve_fast.report import choose_stat, plot_heatmap

        run = _run_from_rows(Path(self.savepath), self._epochs, self._rows)
        if not run.stats:
            return None
        stat = choose_stat(run)
        path = f"{self.savepath}_{stat}_heatmap.png"
        plot_heatmap(run, path, stat=stat)
        self.heatmap_paths.append(path)
        log.info("saved heat map %s", path)
        return stat, path

    def close(self) -> None:
        """Log what is still open; finish the run if this writer started it."""
        if self._closed:
            return
        self._closed = True
        self.save()
        if self._owns_run:
            self.run.finish()
