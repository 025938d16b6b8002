"""CSV writer that also draws one plot per stat and mode after every epoch."""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from delve_fast.stats import STATMAP, STATS
from delve_fast.writers._atomic import atomic_path, remove_leftovers
from delve_fast.writers.base import SPECTRUM_TAG, log
from delve_fast.writers.csv_writer import CSVWriter

__all__ = ["CSVandPlottingWriter", "PLOTTED_STATS", "INTEGER_STATS"]

#: Stats drawn as "value per layer" plots: delve's five in delve's order, then every other scalar stat.
PLOTTED_STATS: tuple[str, ...] = ("lsat", "idim", "det", "trc", "dtrc") + tuple(
    key
    for key, stat in STATS.items()
    if key not in ("lsat", "idim", "det", "trc", "dtrc") and not stat.array and not stat.per_sample
)

#: Stats that are whole numbers: their plots get integer ticks only.
INTEGER_STATS: frozenset[str] = frozenset({"idim", "count"})

_MODES = ("train", "eval")


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
    embedded samples of every layer; with the ``spectrum`` stat,
    ``<savepath>_spectrum_<mode>_epoch_<epoch>.png`` draws every layer's
    normalised eigenvalues against their rank, log-log. With ``heatmaps``,
    :meth:`close` also draws ``<savepath>_<stat>_heatmap.png``: one stat for
    every layer and epoch, train and eval side by side. Each PNG is drawn into
    a temporary file beside it and then moved into place, so a crash never
    leaves half an image.

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
    heatmaps : bool or sequence of str, default False
        Draw layers x epochs heat maps on :meth:`close` (or
        :meth:`plot_heatmaps`): True for every plotted stat that was
        recorded, or a list of stat keys (for example ``["lsat", "erank"]``).
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
        heatmaps: bool | Sequence[str] = False,
        fsync: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(savepath, fsync=fsync)
        if isinstance(heatmaps, str) or not isinstance(heatmaps, (bool, Sequence)):
            raise TypeError(f"heatmaps must be a bool or a list of stat keys, got {heatmaps!r}")
        if not isinstance(heatmaps, bool):
            unknown = [k for k in heatmaps if k not in PLOTTED_STATS]
            if unknown:
                raise ValueError(f"heatmaps: unknown stat keys {unknown}; choose from {', '.join(PLOTTED_STATS)}")
        self.heatmaps: tuple[str, ...] = (
            tuple(heatmaps) if not isinstance(heatmaps, bool) else (PLOTTED_STATS if heatmaps else ())
        )
        self.spectra: dict[str, np.ndarray] = {}
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
        """Add scalars to the CSV and remember per-sample data and spectra for plotting."""
        super().add_scalars(prefix, value_dict)
        for name, value in value_dict.items():
            if SPECTRUM_TAG in name:
                self.spectra[name] = np.asarray(value, dtype=np.float64).reshape(-1)
        for name, value in (sample_value_dict or {}).items():
            self.add_sample_scalar(name, value)

    def save(self) -> None:
        """Write the CSV, then the plots of the row just closed."""
        super().save()
        self.written_plots = []
        if not self._rows:
            return
        # Every epoch closes one row, so the epoch just saved is the last row's index.
        epoch = self.epoch_counter - 1
        row = self._rows[-1]
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
        for mode in _MODES:
            prefix = f"{mode}-{SPECTRUM_TAG}_"
            layers = [(k[len(prefix) :], v) for k, v in self.spectra.items() if k.startswith(prefix)]
            if layers:
                self._plot_spectrum(f"{self.savepath}_spectrum_{mode}_epoch_{epoch}.png", mode, epoch, layers)
        self.sample_value_dict = {}
        self.spectra = {}

    def close(self) -> None:
        """Draw the heat maps asked for with ``heatmaps``."""
        self.plot_heatmaps()

    def plot_heatmaps(self) -> list[str]:
        """Draw ``<savepath>_<stat>_heatmap.png`` for each ``heatmaps`` stat recorded so far.

        Returns
        -------
        list of str
            The files written.
        """
        rows = self._rows + ([self._open] if self._open else [])
        written = []
        for stat in self.heatmaps:
            panels, layers = [], []
            for mode in _MODES:
                prefix = f"{mode}-{STATMAP[stat]}_"
                cols = [c for c in self._columns if c.startswith(prefix)]
                grid = np.array([[float(row.get(c, math.nan)) for row in rows] for c in cols], dtype=float)
                if not cols or np.isnan(grid).all():
                    continue
                names = [c[len(prefix) :] for c in cols]
                layers += [n for n in names if n not in layers]
                panels.append((mode, names, grid))
            if not panels:
                continue
            aligned = []
            for mode, names, grid in panels:
                full = np.full((len(layers), len(rows)), math.nan)
                for i, name in enumerate(names):
                    full[layers.index(name)] = grid[i]
                aligned.append((mode, full))
            path = f"{self.savepath}_{stat}_heatmap.png"
            self._draw_heatmap(path, stat, layers, aligned, len(rows))
            written.append(path)
        return written

    # -- drawing -------------------------------------------------------------
    def _draw_heatmap(self, path: str, stat: str, layers: list[str], panels: list, n_rows: int) -> None:
        from delve_fast.plots import heatmap_figure
        from delve_fast.report import stat_title

        label, definition = stat_title(STATMAP[stat])
        fig = heatmap_figure(
            panels,
            layers,
            list(range(n_rows)),
            label=label,
            definition=definition,
            title=f"{label} per layer and epoch - {os.path.basename(self.savepath)}",
            value_range=(0.0, 1.0) if stat == "lsat" else None,
            integer=stat in INTEGER_STATS,
        )
        with atomic_path(path, fsync=self.fsync) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        self.written_plots.append(path)
        log.info("saved plot %s", path)

    def _plot_spectrum(self, path: str, mode: str, epoch: int, layers: list[tuple[str, np.ndarray]]) -> None:
        from delve_fast.plots import spectrum_figure

        fig = spectrum_figure([(mode, layers)], self._title(mode, epoch), figsize=self.figsize, fontsize=self.fontsize)
        ax = fig.axes[0]
        self._finish(fig, ax, path)

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
            finite = [v for v in values if math.isfinite(v)]
            lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
            if hi - lo < 2:
                # The locator keeps to integers only when the view holds at least two of them;
                # widen a flat line (every layer at the same idim) to show its neighbours.
                ax.set_ylim(lo - 1 if lo >= 1 else lo - 0.5, hi + 1)
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
