"""delve's plotting helpers for result tables (``delve.writers.plot_stat`` and friends).

They read the table the CSV writer writes (``;``-separated, one row per
epoch, columns ``<mode>-<stat name>_<layer>``) and draw one statistic of every
layer for one epoch, with delve's signatures and file names. pandas and
matplotlib are imported when a function is called, not with delve_fast.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Any

import numpy as np

from delve_fast.stats import STATMAP
from delve_fast.writers.base import log

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["extract_layer_stat", "plot_stat", "plot_stat_level_from_results", "plot_scatter_from_results"]


def extract_layer_stat(
    df: pd.DataFrame,
    epoch: int = 19,
    primary_metric: str | None = None,
    stat: str = "saturation",
    state_mode: str = "train",
) -> tuple[pd.DataFrame, Any]:
    """One epoch's values of one statistic, every layer, from a CSV writer table.

    Parameters
    ----------
    df : pandas.DataFrame
        The table (index: epoch).
    epoch : int, default 19
        Row to take.
    primary_metric : str, optional
        Column whose value in that row is returned as well (for example ``accuracy``).
    stat : str, default 'saturation'
        Substring of the columns to keep: a stat's column name such as
        ``saturation`` or ``intrinsic-dimensionality``.
    state_mode : str, default 'train'
        Substring a kept column must contain (``train`` or ``eval``).

    Returns
    -------
    epoch_df : pandas.DataFrame
        One row, the matching columns (those with ``accuracy`` in the name excluded).
    pm : scalar or None
        The primary metric of that epoch, or None.

    Raises
    ------
    ValueError
        If the table has no row ``epoch``.
    """
    if not np.any(df.index.values == epoch):
        raise ValueError(f"epoch {epoch} is not in the table; its epochs are {list(df.index.values)}")
    cols = [c for c in df.columns if state_mode in c and "accuracy" not in c and stat in c]
    row = df[df.index.values == epoch]
    pm = None if primary_metric is None else row[primary_metric].values[0]
    return row[cols], pm


def _is_sample_row(values: np.ndarray) -> bool:
    """Whether a row holds per-sample coordinates (the ``embed`` stat) rather than numbers."""
    return len(values) > 0 and not np.isscalar(values[0]) and np.ndim(values[0]) > 0


def plot_stat(
    df: pd.DataFrame,
    stat: str,
    pm: Any = -1,
    savepath: str = "run.png",
    epoch: int = 0,
    primary_metric: str | None = None,
    fontsize: int = 16,
    figsize: tuple[float, float] | None = None,
    line: bool = True,
    scatter: bool = True,
    ylim: tuple[float, float] | None = (0, 1.0),
    alpha_line: float = 0.6,
    alpha_scatter: float = 1.0,
    color_line: Any = None,
    color_scatter: Any = None,
    primary_metric_loc: tuple[float, float] = (0.7, 0.8),
    show_col_label_x: bool = True,
    show_col_label_y: bool = True,
    show_grid: bool = True,
    save: bool = True,
    samples: bool = False,
    stat_mode: str = "train",
) -> Any:
    """Plot one row of layer values (from :func:`extract_layer_stat`) against the layers.

    Draws on a fresh pyplot figure, so ``plt.gcf()`` is the plot afterwards.

    Parameters
    ----------
    df : pandas.DataFrame
        One row; each column a layer (``<mode>-<stat name>_<layer>``). With
        ``samples=True`` the first cell holds ``(x, y)`` pairs to scatter.
    stat : str
        Short key (``lsat``, ``idim``, ...) or a label; a key is shown by its delve name.
    pm : scalar, default -1
        Value of ``primary_metric`` to print on the plot.
    savepath : str, default 'run.png'
        ``.csv`` in it is replaced by ``_<stat>_<stat_mode>_epoch_<epoch>.png``
        to name the file written when ``save``; the title is its file name.
    epoch : int, default 0
        ``-1`` means the table's last row.
    primary_metric : str, optional
        Name printed with ``pm`` at ``primary_metric_loc`` (data coordinates, as delve).
    fontsize, figsize, line, scatter, ylim, alpha_line, alpha_scatter, color_line, color_scatter
        Appearance; ``ylim=None`` leaves the y range to matplotlib.
    show_col_label_x, show_col_label_y, show_grid : bool
        Axis labels ("layers" and the stat's name) and grid.
    save : bool, default True
        Write the PNG.
    samples : bool, default False
        Scatter the coordinates of the first cell instead of one value per layer.
    stat_mode : str, default 'train'
        Used in the file name.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on (also when the row is all NaN and nothing is drawn).
    """
    import matplotlib.pyplot as plt

    plt.close("all")
    if epoch == -1:
        epoch = df.index.values[-1]
    plt.figure(figsize=figsize)
    ax = plt.gca()
    names = list(df.columns)
    values = df.values[0] if len(df) else np.array([])
    if not samples and not _is_sample_row(values) and len(values) and np.all(np.isnan(values.astype(float))):
        return ax
    xs = list(range(len(names)))
    if line and not samples:
        ax.plot(xs, values, alpha=alpha_line, color=color_line)
    if scatter:
        if samples:
            coords = np.asarray(values[0], dtype=np.float64).reshape(-1, 2)
            ax.scatter(coords[:, 0], coords[:, 1], alpha=alpha_scatter, color=color_scatter)
        else:
            ax.scatter(xs, values, alpha=alpha_scatter, color=color_scatter)
    if not samples:
        ax.set_xticks(xs)
        ax.set_xticklabels([name.split("_", 1)[1] if "_" in name else name for name in names], rotation=90)
    if ylim is not None:
        ax.set_ylim(ylim)
    if primary_metric is not None:
        ax.text(primary_metric_loc[0], primary_metric_loc[1], f"{primary_metric}: {pm}")
    ax.tick_params(axis="y", labelsize=fontsize)
    if show_col_label_x:
        ax.set_xlabel("layers", fontsize=fontsize)
    ax.set_title(pathlib.Path(savepath).name.replace("_", " ").replace(".csv", f" epoch: {epoch}"), fontsize=fontsize)
    if show_col_label_y:
        ax.set_ylabel(STATMAP.get(stat, stat), rotation="vertical", fontsize=fontsize)
    if show_grid:
        ax.grid(True)
    plt.tight_layout()
    if save:
        path = str(savepath).replace(".csv", f"_{stat}_{stat_mode}_epoch_{epoch}.png")
        plt.savefig(path)
        log.info("saved plot %s", path)
    return ax


def _split_stat(stat: str, stat_mode: str) -> tuple[str, str]:
    """``'lsat_eval'`` -> ``('lsat', 'eval')``; a bare key keeps ``stat_mode``."""
    if "_" in stat:
        stat, stat_mode = stat.split("_", 1)
    if stat not in STATMAP:
        raise ValueError(f"stat={stat!r} is not a statistic; choose one of {', '.join(map(repr, STATMAP))}")
    return stat, stat_mode


def plot_stat_level_from_results(
    savepath: str,
    epoch: int,
    stat: str,
    primary_metric: str | None = None,
    fontsize: int = 16,
    figsize: tuple[float, float] | None = None,
    line: bool = True,
    scatter: bool = True,
    ylim: tuple[float, float] | None = (0, 1.0),
    alpha_line: float = 0.6,
    alpha_scatter: float = 1.0,
    color_line: Any = None,
    color_scatter: Any = None,
    primary_metric_loc: tuple[float, float] = (0.7, 0.8),
    show_col_label_x: bool = True,
    show_col_label_y: bool = True,
    show_grid: bool = True,
    save: bool = True,
    stat_mode: str = "train",
) -> Any:
    """Read a CSV writer file and plot one statistic of every layer for one epoch.

    Parameters
    ----------
    savepath : str
        The ``.csv`` file; the PNG goes beside it as
        ``<name>_<stat>_<mode>_epoch_<epoch>.png``.
    epoch : int
        Row of the table; ``-1`` for the last.
    stat : str
        Short key (``lsat``, ``idim``, ``trc``, ...), optionally with a mode:
        ``lsat_eval``.
    primary_metric : str, optional
        Column printed on the plot (for example ``accuracy``).
    ylim : tuple, default (0, 1.0)
        Accepted for delve's signature; as in delve, the range is (0, 1) for
        ``lsat`` and matplotlib's own for other stats.
    stat_mode : str, default 'train'
        Mode when ``stat`` names none.
    Other parameters are passed to :func:`plot_stat`.

    Returns
    -------
    matplotlib.axes.Axes
    """
    import pandas as pd

    df = pd.read_csv(savepath, sep=";", index_col=0)
    stat, stat_mode = _split_stat(stat, stat_mode)
    if epoch == -1:
        epoch = df.index.values[-1]
    epoch_df, pm = extract_layer_stat(
        df, epoch=epoch, primary_metric=primary_metric, stat=STATMAP[stat], state_mode=stat_mode
    )
    return plot_stat(
        df=epoch_df, stat=stat, pm=pm, savepath=savepath, epoch=epoch, primary_metric=primary_metric,
        fontsize=fontsize, figsize=figsize, line=line, scatter=scatter, ylim=(0, 1.0) if stat == "lsat" else None,
        alpha_line=alpha_line, alpha_scatter=alpha_scatter, color_line=color_line, color_scatter=color_scatter,
        primary_metric_loc=primary_metric_loc, show_col_label_x=show_col_label_x, show_col_label_y=show_col_label_y,
        show_grid=show_grid, save=save, stat_mode=stat_mode,
    )  # fmt: skip


def plot_scatter_from_results(savepath: str, epoch: int, stat: str, df: pd.DataFrame) -> Any:
    """Scatter per-sample coordinates (the ``embed`` stat) held in the first cell of ``df``.

    Parameters
    ----------
    savepath : str
        Names the PNG as in :func:`plot_stat`.
    epoch : int
    stat : str
        ``embed`` (a ``_<mode>`` suffix is dropped).
    df : pandas.DataFrame
        One row whose first cell is a sequence of ``(x, y)`` pairs.

    Returns
    -------
    matplotlib.axes.Axes or None
        None when ``df`` is empty.
    """
    if len(df) == 0:
        return None
    return plot_stat(
        df=df, savepath=savepath, epoch=epoch, stat=stat.split("_")[0], line=False, save=True, samples=True, ylim=None
    )
