"""CSV writer that also draws one plot per stat and mode after every epoch."""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from delve_fast.stats import STATMAP
from delve_fast.writers._atomic import atomic_path, remove_leftovers
from delve_fast.writers.base import log
from delve_fast.writers.csv_writer import CSVWriter

__all__ = ["CSVandPlottingWriter", "PLOTTED_STATS"]

#: Stats drawn as "value per layer" plots, in delve's order.
PLOTTED_STATS: tuple[str, ...] = ("lsat", "idim", "det", "trc", "dtrc")

#: Stats that are whole numbers: their plots get integer ticks only.
INTEGER_STATS: frozenset[str] = frozenset({"idim"})


def axis_label(stat: str) -> str:
    """The y label of a stat's plot: its delve name in words, on two lines when long.

    A 16 pt label longer than the axes are tall would stick out of the figure, so
    names such as ``intrinsic-dimensionality`` are broken at a space.
    """
    return textwrap.fill(STATMAP[stat].replace("-", " "), width=16)


class CSVandPlottingWriter(CSVWriter):
    """Write the CSV and, on each :meth:`save`, a PNG per stat and mode.

    Files are named as delve names them:
    ``<savepath>_<stat>_<mode>_epoch_<epoch>.png``, where ``stat`` is the short
    key (``lsat``, ``idim``, ``det``, ``trc``, ``dtrc``), ``mode`` is ``train``
    or ``eval`` and ``epoch`` is the epoch (the CSV row index). Each plot shows the value of
    every layer, in forward-pass order, for the epoch just saved. With the
    ``embed`` stat, ``<savepath>_embed_<mode>_epoch_<epoch>.png`` scatters the
    embedded samples of every layer. Each PNG is drawn into a temporary file
    beside it and then moved into place, so a crash never leaves half an image.

    Parameters
    ----------
    savepath : str
        CSV path without ``.csv``; plots go beside it.
    plot_manipulation_func : callable, optional
        Called with each plot's :class:`matplotlib.axes.Axes` before saving; it
        may change it in place and/or return it.
    primary_metric : str, optional
        Name of a scalar column to print on every plot (for example ``accuracy``).
    fontsize : int, default 16
    figsize : tuple of float, optional
    fsync : bool, default True
        As for :class:`CSVWriter`; applies to the PNGs too.
    **kwargs
        Ignored.
    """

    def __init__(
        self,
        savepath: str,
        plot_manipulation_func: Callable[[Any], Any] | None = None,
        primary_metric: str | None = None,
        fontsize: int = 16,
        figsize: tuple[float, float] | None = None,
        fsync: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(savepath, fsync=fsync)
        if plot_manipulation_func is not None and not callable(plot_manipulation_func):
            raise TypeError(f"plot_manipulation_func must be callable, got {type(plot_manipulation_func).__name__}")
        self.plot_man_func = plot_manipulation_func
        self.primary_metric = primary_metric
        self.fontsize = fontsize
        self.figsize = figsize
        self.sample_value_dict: dict[str, Any] = {}
        self.written_plots: list[str] = []
        folder, stem = os.path.split(self.savepath)
        remove_leftovers(folder or ".", target=lambda name: name.startswith(stem + "_") and name.endswith(".png"))

    def state_dict(self) -> dict[str, Any]:
        """The CSV state plus the per-sample data waiting for this epoch's plot."""
        state = super().state_dict()
        state["samples"] = {k: np.array(v, copy=True) for k, v in self.sample_value_dict.items()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        super().load_state_dict(state)
        self.sample_value_dict = {k: np.asarray(v, dtype=np.float64) for k, v in state.get("samples", {}).items()}

    def add_sample_scalar(self, name: str, value: Any, **kwargs: Any) -> None:
        """Keep per-sample data (the ``embed`` coordinates) for the next plot."""
        self.sample_value_dict[name] = np.asarray(value, dtype=np.float64)

    def add_scalars(
        self,
        prefix: str,
        value_dict: Mapping[str, Any],
        sample_value_dict: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Add scalars to the CSV and remember per-sample data for plotting."""
        super().add_scalars(prefix, value_dict)
        for name, value in (sample_value_dict or {}).items():
            self.add_sample_scalar(name, value)

    def save(self) -> None:
        """Write the CSV, then the plots of the row just closed."""
        super().save()
        epoch = self.epoch_counter - 1
        row = self._rows[-1]
        self.written_plots = []
        for stat in PLOTTED_STATS:
            for mode in ("train", "eval"):
                prefix = f"{mode}-{STATMAP[stat]}_"
                cols = [c for c in self._columns if c.startswith(prefix)]
                values = [float(row.get(c, math.nan)) for c in cols]
                if not values or all(math.isnan(v) for v in values):
                    continue
                labels = [c[len(prefix) :] for c in cols]
                path = f"{self.savepath}_{stat}_{mode}_epoch_{epoch}.png"
                self._plot_layers(path, stat, mode, epoch, labels, values, row)
        for mode in ("train", "eval"):
            prefix = f"{mode}-{STATMAP['embed']}_"
            series = {k[len(prefix) :]: v for k, v in self.sample_value_dict.items() if k.startswith(prefix)}
            if series:
                self._plot_embedding(f"{self.savepath}_embed_{mode}_epoch_{epoch}.png", mode, epoch, series)
        self.sample_value_dict = {}

    # -- drawing -------------------------------------------------------------
    def _new_axes(self) -> tuple[Any, Any]:
        from matplotlib.figure import Figure

        # Constrained layout makes room for every label when the figure is drawn, after
        # plot_manipulation_func has had its say (tight_layout ran before and could fail).
        fig = Figure(figsize=self.figsize, layout="constrained")
        return fig, fig.add_subplot(1, 1, 1)

    def _finish(self, fig: Any, ax: Any, path: str) -> None:
        if self.plot_man_func is not None:
            returned = self.plot_man_func(ax)
            if returned is not None and hasattr(returned, "figure"):
                fig = returned.figure
        with atomic_path(path, fsync=self.fsync) as tmp:
            fig.savefig(tmp, format="png")
        self.written_plots.append(path)
        log.info("saved plot %s", path)

    def _title(self, mode: str, epoch: int) -> str:
        return f"{os.path.basename(self.savepath).replace('_', ' ')} ({mode}) epoch: {epoch}"

    def _plot_layers(
        self,
        path: str,
        stat: str,
        mode: str,
        epoch: int,
        labels: list[str],
        values: list[float],
        row: Mapping[str, Any],
    ) -> None:
        fig, ax = self._new_axes()
        xs = list(range(len(values)))
        ax.plot(xs, values, alpha=0.6)
        ax.scatter(xs, values)
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=90)
        if stat == "lsat":
            ax.set_ylim(0.0, 1.0)
        if stat in INTEGER_STATS:
            from matplotlib.ticker import MaxNLocator

            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layers", fontsize=self.fontsize)
        ax.set_ylabel(axis_label(stat), fontsize=self.fontsize)
        ax.tick_params(axis="y", labelsize=self.fontsize)
        ax.set_title(self._title(mode, epoch), fontsize=self.fontsize)
        if self.primary_metric is not None and self.primary_metric in row:
            ax.text(0.7, 0.8, f"{self.primary_metric}: {row[self.primary_metric]}", transform=ax.transAxes)
        ax.grid(True)
        self._finish(fig, ax, path)

    def _plot_embedding(self, path: str, mode: str, epoch: int, series: Mapping[str, np.ndarray]) -> None:
        fig, ax = self._new_axes()
        for layer, coords in series.items():
            coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
            ax.scatter(coords[:, 0], coords[:, 1], s=6, alpha=0.7, label=layer)
        ax.set_xlabel("eigendirection 1", fontsize=self.fontsize)
        ax.set_ylabel("eigendirection 2", fontsize=self.fontsize)
        ax.set_title(self._title(mode, epoch), fontsize=self.fontsize)
        ax.legend(fontsize="small")
        ax.grid(True)
        self._finish(fig, ax, path)
