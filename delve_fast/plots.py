"""Figures shared by the plot writer and ``delve-fast report``: stat heat maps and eigenvalue spectra.

Both functions return a :class:`matplotlib.figure.Figure` built without
``pyplot`` (no global figure state, safe off the main thread); the caller saves
it. matplotlib is imported when a figure is drawn, never with delve_fast.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from delve_fast.stats import numerical_rank

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["heatmap_figure", "spectrum_figure", "normalised_spectrum", "LEGEND_MAX_LAYERS"]

#: Up to this many layers a spectrum plot has a legend; more get a colour bar of layer names.
LEGEND_MAX_LAYERS = 10

_MODE_TITLES = {"train": "training pass (model.train())", "eval": "evaluation pass (model.eval())"}


def mode_title(mode: str) -> str:
    """Panel title of a recording mode."""
    return _MODE_TITLES.get(mode, f"{mode} mode")


def heatmap_figure(
    panels: Sequence[tuple[str, np.ndarray]],
    layers: Sequence[str],
    epochs: Sequence[int],
    *,
    label: str,
    definition: str,
    title: str,
    value_range: tuple[float, float] | None = None,
    integer: bool = False,
    annotate: bool | None = None,
) -> Figure:
    """A layers x epochs heat map of one statistic, one panel per mode, sharing a colour bar.

    Parameters
    ----------
    panels : sequence of (mode, grid)
        ``grid`` is ``(len(layers), len(epochs))``; NaN cells are drawn grey.
    layers, epochs : sequence
        Row labels (input side first) and column labels.
    label : str
        Colour-bar label.
    definition : str
        One sentence shown under the panels.
    title : str
        Figure title.
    value_range : (float, float), optional
        Fixed colour scale (saturation uses ``(0, 1)``); default the finite data range.
    integer : bool, default False
        Write cell values as whole numbers.
    annotate : bool, optional
        Write the value into every cell; default only when the grid stays legible
        (at most 25 epochs and 30 layers).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib
    from matplotlib.figure import Figure

    n_epochs, n_layers = len(epochs), len(layers)
    if annotate is None:
        annotate = n_epochs <= 25 and n_layers <= 30
    if value_range is not None:
        vmin, vmax = value_range
    else:
        values = np.concatenate([np.asarray(g, dtype=float).ravel() for _, g in panels])
        values = values[np.isfinite(values)]
        vmin, vmax = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5

    panel_w = min(9.0, 1.6 + 0.55 * n_epochs)
    fig_h = min(12.0, 2.7 + 0.42 * n_layers)
    fig = Figure(figsize=(panel_w * len(panels) + 1.6 + 0.07 * max(map(len, layers), default=0), fig_h))
    fig.set_layout_engine("constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = None
    label_size = 8 if n_layers > 20 else 10
    for ax, (mode, grid) in zip(axes, panels, strict=True):
        grid = np.asarray(grid, dtype=float)
        image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
        step = max(1, math.ceil(n_epochs / 30))
        ax.set_xticks(range(0, n_epochs, step))
        ax.set_xticklabels([str(e) for e in list(epochs)[::step]], fontsize=8 if n_epochs > 20 else 10)
        ax.set_yticks(range(n_layers))
        ax.set_yticklabels(list(layers) if ax is axes[0] else [""] * n_layers, fontsize=label_size)
        ax.set_xlabel("epoch")
        if ax is axes[0]:
            ax.set_ylabel("layer (input side at the top)")
        ax.set_title(mode_title(mode))
        if annotate:
            for i in range(n_layers):
                for j in range(n_epochs):
                    v = grid[i, j]
                    if not np.isfinite(v):
                        continue
                    text = f"{v:.0f}" if integer else (f"{v:.2f}" if value_range == (0.0, 1.0) else f"{v:.3g}")
                    shade = (v - vmin) / (vmax - vmin)
                    ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if shade > 0.6 else "white")
    bar = fig.colorbar(image, ax=list(axes), fraction=0.05, pad=0.02)
    bar.set_label(label)
    if integer:
        from matplotlib.ticker import MaxNLocator

        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
    fig.supxlabel(textwrap.fill(definition, width=int(fig.get_figwidth() * 12), break_on_hyphens=False), fontsize=9)
    fig.suptitle(title)
    return fig


def normalised_spectrum(eigenvalues: np.ndarray) -> np.ndarray:
    """The nonzero eigenvalues (above the solver's round-off floor) divided by their sum.

    Zeros have no place on a log axis; rank ``i`` of the result is ``i + 1``.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    k = numerical_rank(lam)
    if k == 0:
        return np.zeros(0)
    top = lam[:k]
    return top / top.sum()


def spectrum_figure(
    panels: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]],
    title: str,
    *,
    figsize: tuple[float, float] | None = None,
    fontsize: float | None = None,
) -> Figure:
    """Normalised eigenvalue against rank, log-log, one line per layer, one panel per mode.

    Lines are coloured by layer order (input side dark). Up to
    :data:`LEGEND_MAX_LAYERS` layers get a legend; more get a colour bar whose
    ticks name the layers, which stays readable with dozens of layers.

    Parameters
    ----------
    panels : sequence of (mode, [(layer, eigenvalues), ...])
        Eigenvalues descending; a layer without positive variance is left out.
    title : str
        Figure title.
    figsize : (float, float), optional
    fontsize : float, optional
        Axis-label size.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib
    from matplotlib.colors import BoundaryNorm
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(layer for _, series in panels for layer, _ in series))
    n = len(names)
    width = 6.0 * len(panels) + (2.5 if n <= LEGEND_MAX_LAYERS else 1.5 + 0.07 * max(map(len, names), default=0))
    height = 5.0 if n <= 30 else min(12.0, 5.0 + 0.12 * (n - 30))
    fig = Figure(figsize=figsize or (width, height))
    fig.set_layout_engine("constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    cmap = matplotlib.colormaps["viridis"]
    colours = {name: cmap(i / max(1, n - 1) * 0.9) for i, name in enumerate(names)}  # skip the palest yellow
    shares = [[(layer, normalised_spectrum(lam)) for layer, lam in series] for _, series in panels]
    # Dots on every line when all are short (a handful of ranks), on none otherwise: one look per figure.
    marker = "." if max((p.size for per in shares for _, p in per), default=0) <= 20 else None
    for ax, (mode, _), series in zip(axes, panels, shares, strict=True):
        for layer, p in series:
            if p.size == 0:
                continue
            ax.loglog(np.arange(1, p.size + 1), p, color=colours[layer], lw=1.4, marker=marker, label=layer)
        ax.set_xlabel("rank i", fontsize=fontsize)
        if ax is axes[0]:
            ax.set_ylabel("eigenvalue share  \u03bb\u1d62 / \u03a3\u03bb", fontsize=fontsize)
        ax.set_title(mode_title(mode))
        ax.grid(True, which="major", alpha=0.5)
        ax.grid(True, which="minor", alpha=0.15)
    if n <= LEGEND_MAX_LAYERS:
        handles, labels = axes[0].get_legend_handles_labels()
        for ax in axes[1:]:
            more = ax.get_legend_handles_labels()
            for h, lab in zip(*more, strict=True):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        if handles:
            fig.legend(handles, labels, loc="outside right upper", title="layer", fontsize="small")
    else:
        norm = BoundaryNorm(np.arange(-0.5, n + 0.5), n)
        mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap.resampled(256))
        mappable.set_array([])
        # Colour i of the bar is the colour of layer i (both use i / (n - 1) * 0.9 of the map).
        mappable.set_cmap(matplotlib.colors.ListedColormap([colours[name] for name in names]))
        bar = fig.colorbar(mappable, ax=list(axes), fraction=0.04, pad=0.02)
        step = max(1, math.ceil(n / 40))
        bar.set_ticks(range(0, n, step))
        bar.set_ticklabels(names[::step], fontsize=7 if n > 24 else 8)
        bar.ax.invert_yaxis()  # input side at the top, as in the heat maps
        bar.set_label("layer (forward order)")
    fig.suptitle(title)
    return fig
