"""Read delve-format CSV files and summarise them per layer and across epochs.

delve's ``csv`` and ``plot`` writers (and delve_fast's, which copy the layout)
write one row per ``add_saturations()`` call to a ``;``-separated file whose
first, unnamed column is the row number (the epoch).  Layer statistics live in
columns named ``<mode>-<statistic>_<layer>``, for example
``train-saturation_conv1`` or ``eval-intrinsic-dimensionality_fc2``; anything
else (``train_loss``, ``test_accuracy``, ...) is a free scalar logged with
``add_scalar``.

This module turns such a file into

* a per-layer table of the final values (:func:`layer_table`,
  :func:`format_table`), and
* one picture of a statistic for every layer and every epoch, a layers x
  epochs heat map with one panel per mode (:func:`plot_heatmap`).

Every problem with the input is raised as :class:`ReportError`, whose message
is a single line meant to be shown to the user as it is.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

#: Statistic names as they appear in delve's column names, with a short label for tables.
STAT_LABELS: dict[str, str] = {
    "saturation": "sat",
    "intrinsic-dimensionality": "idim",
    "covariance-trace": "trc",
    "diagonal-trace": "dtrc",
    "covariance-determinant": "det",
}

#: Colour-bar labels and one-sentence definitions shown under the heat map.
STAT_TITLES: dict[str, tuple[str, str]] = {
    "saturation": (
        "saturation",
        "saturation = (eigendirections needed to explain 99% of the variance) / (feature-space size); "
        "low values mean the layer uses few of its dimensions",
    ),
    "intrinsic-dimensionality": (
        "intrinsic dimensionality",
        "intrinsic dimensionality = number of eigendirections needed to explain 99% of the variance",
    ),
    "covariance-trace": ("covariance trace", "covariance trace = total variance of the layer's output"),
    "diagonal-trace": ("sum of eigenvalues", "sum of the (clamped) covariance eigenvalues"),
    "covariance-determinant": ("covariance determinant", "covariance determinant = generalised variance"),
}

_STAT_COLUMN = re.compile(
    r"^(?P<mode>[A-Za-z0-9]+)-(?P<stat>" + "|".join(map(re.escape, STAT_LABELS)) + r")_(?P<layer>.+)$"
)
_INDEX_NAMES = {"", "epoch", "index", "step"}
_MODE_ORDER = {"train": 0, "eval": 1}
_MODE_TITLES = {"train": "training pass (model.train())", "eval": "evaluation pass (model.eval())"}


class ReportError(ValueError):
    """A problem with a run file, described in one line for the user."""


@dataclass
class Run:
    """A delve-format run file, split into layer statistics and free scalars.

    Attributes
    ----------
    path : Path
        The CSV file the run was read from.
    epochs : list of int
        Row labels (epochs), in file order.
    layers : list of str
        Layer names in the order of their first column, which is the order in
        which the tracker registered them (the forward order for ordinary models).
    modes : list of str
        Recording modes found, ``train`` before ``eval``.
    stats : dict
        ``(mode, statistic) -> DataFrame`` with epochs as rows and layers as columns.
    scalars : DataFrame
        Every column that is not a layer statistic.
    """

    path: Path
    epochs: list[int]
    layers: list[str]
    modes: list[str]
    stats: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)
    scalars: pd.DataFrame = field(default_factory=pd.DataFrame)

    def has(self, stat: str) -> bool:
        """Whether any mode recorded the statistic ``stat`` (a delve statistic name)."""
        return any(s == stat for _, s in self.stats)

    def stat_names(self) -> list[str]:
        """Statistic names present, in the canonical order of :data:`STAT_LABELS`."""
        return [s for s in STAT_LABELS if self.has(s)]


def parse_column(name: str) -> tuple[str, str, str] | None:
    """Split a delve statistic column name into ``(mode, statistic, layer)``.

    Parameters
    ----------
    name : str
        A column header such as ``"eval-saturation_conv2"``.

    Returns
    -------
    tuple of str or None
        ``(mode, statistic, layer)``, or ``None`` for a free scalar column.
    """
    match = _STAT_COLUMN.match(name)
    if match is None:
        return None
    return match["mode"], match["stat"], match["layer"]


def load_run(path: str | Path) -> Run:
    """Read a delve-format CSV file.

    Parameters
    ----------
    path : str or Path
        The ``.csv`` file written by delve's or delve_fast's ``csv``/``plot`` writer.

    Returns
    -------
    Run
        The parsed run.

    Raises
    ------
    ReportError
        If the file is missing, unreadable, not ``;``-separated, has no layer
        statistic columns, or holds non-numeric statistic values.
    """
    path = Path(path)
    if not path.exists():
        raise ReportError(f"no such file: {path}")
    if path.is_dir():
        raise ReportError(f"{path} is a directory, expected a delve-format .csv file")
    try:
        frame = pd.read_csv(path, sep=";")
    except pd.errors.EmptyDataError:
        raise ReportError(f"{path} is empty, expected a delve-format .csv file") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReportError(f"{path} is not a readable ';'-separated CSV file ({first})") from None
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from None

    frame = _set_epoch_index(frame, path)

    layers: list[str] = []
    modes: list[str] = []
    columns: dict[tuple[str, str], dict[str, pd.Series]] = {}
    scalar_names: list[str] = []
    for name in frame.columns:
        parsed = parse_column(str(name))
        if parsed is None:
            scalar_names.append(name)
            continue
        mode, stat, layer = parsed
        values = pd.to_numeric(frame[name], errors="coerce")
        bad = values.isna() & frame[name].notna()
        if bad.any():
            sample = frame[name][bad].iloc[0]
            raise ReportError(f"{path}: column {name!r} holds a non-numeric value {str(sample)[:40]!r}")
        if layer not in layers:
            layers.append(layer)
        if mode not in modes:
            modes.append(mode)
        columns.setdefault((mode, stat), {})[layer] = values

    if not columns:
        hint = ""
        if len(frame.columns) <= 1:
            hint = " (is it ';'-separated?)"
        raise ReportError(
            f"{path} has no delve statistic columns such as 'train-saturation_<layer>'{hint}; "
            "expected a CSV written by SaturationTracker's csv or plot writer"
        )

    first_seen = list(modes)
    modes = sorted(modes, key=lambda m: (_MODE_ORDER.get(m, 2), first_seen.index(m)))
    stats = {key: pd.DataFrame(cols, index=frame.index).reindex(columns=layers) for key, cols in columns.items()}
    # Drop layers a mode never saw, but keep the global order.
    stats = {key: df[[c for c in layers if c in df.columns and df[c].notna().any()]] for key, df in stats.items()}
    return Run(
        path=path,
        epochs=[int(e) for e in frame.index],
        layers=layers,
        modes=modes,
        stats=stats,
        scalars=frame[scalar_names],
    )


def _set_epoch_index(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Use the first column as the epoch index when it is delve's unnamed row-number column."""
    if frame.shape[1] == 0:
        raise ReportError(f"{path} has no columns, expected a delve-format .csv file")
    first = str(frame.columns[0])
    if first.startswith("Unnamed: ") or first.strip().lower() in _INDEX_NAMES:
        index = pd.to_numeric(frame.iloc[:, 0], errors="coerce")
        if index.isna().any() or not np.all(np.equal(np.mod(index, 1), 0)):
            raise ReportError(f"{path}: the first (index) column must hold integer epoch numbers")
        frame = frame.iloc[:, 1:].copy()
        frame.index = index.astype(int).to_numpy()
    else:
        frame = frame.copy()
        frame.index = np.arange(len(frame))
    if len(frame) == 0:
        raise ReportError(f"{path} has a header but no rows")
    return frame


def _last_valid(series: pd.Series | None) -> float:
    if series is None:
        return math.nan
    valid = series.dropna()
    return float(valid.iloc[-1]) if len(valid) else math.nan


def layer_table(run: Run, feature_sizes: Mapping[str, int] | None = None) -> pd.DataFrame:
    """Final value of every recorded statistic, one row per layer.

    "Final" is the last non-empty value in each column, normally the last epoch.

    Parameters
    ----------
    run : Run
        A run from :func:`load_run`.
    feature_sizes : mapping, optional
        Known feature-space sizes (channels or output features) per layer. When a
        layer is missing here, the size is recovered from the CSV as
        ``intrinsic dimensionality / saturation`` (delve's definition of
        saturation), if both were recorded.

    Returns
    -------
    DataFrame
        Indexed by layer, with a ``features`` column (``<NA>`` when unknown) and
        one ``<mode> <label>`` column per recorded statistic and mode, e.g.
        ``train sat``, ``eval sat``, ``train idim``.
    """
    rows: dict[str, dict[str, float]] = {}
    for layer in run.layers:
        row: dict[str, float] = {}
        for stat in run.stat_names():
            for mode in run.modes:
                df = run.stats.get((mode, stat))
                if df is None:
                    continue
                row[f"{mode} {STAT_LABELS[stat]}"] = _last_valid(df.get(layer))
        rows[layer] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "layer"

    sizes = []
    for layer in run.layers:
        size = None if feature_sizes is None else feature_sizes.get(layer)
        if size is None:
            size = _infer_feature_size(run, layer)
        sizes.append(size)
    table.insert(0, "features", pd.array(sizes, dtype="Int64"))
    return table


def _infer_feature_size(run: Run, layer: str) -> int | None:
    """Feature-space size from ``idim / saturation`` in any mode and epoch where both exist."""
    for mode in run.modes:
        sat = run.stats.get((mode, "saturation"))
        idim = run.stats.get((mode, "intrinsic-dimensionality"))
        if sat is None or idim is None or layer not in sat or layer not in idim:
            continue
        ratio = (idim[layer] / sat[layer]).replace([np.inf, -np.inf], np.nan).dropna()
        if len(ratio):
            value = float(ratio.iloc[-1])
            if value > 0 and abs(value - round(value)) < 1e-3 * max(1.0, value):
                return int(round(value))
    return None


def _fmt(value: object, column: str) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column.endswith(" sat"):
        return f"{float(value):.3f}"
    if column.endswith(" idim") or column == "features":
        return f"{int(round(float(value)))}"
    return f"{float(value):.4g}"


def format_table(table: pd.DataFrame) -> str:
    """Render :func:`layer_table`'s result as an aligned plain-text table.

    Parameters
    ----------
    table : DataFrame
        The per-layer table.

    Returns
    -------
    str
        The table, header first, without a trailing newline.
    """
    headers = ["layer", *table.columns]
    body = [[str(layer), *(_fmt(table.at[layer, c], c) for c in table.columns)] for layer in table.index]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    lines = [
        "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True)))
    ]
    lines.append("  ".join("-" * w for w in widths))
    for row in body:
        lines.append(
            "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True)))
        )
    return "\n".join(lines)


def format_scalars(run: Run) -> str:
    """One line with the last value of every free scalar column (empty string if none)."""
    parts = []
    for name in run.scalars.columns:
        values = pd.to_numeric(run.scalars[name], errors="coerce").dropna()
        if len(values):
            parts.append(f"{name} = {float(values.iloc[-1]):.4g}")
    return ", ".join(parts)


def plot_heatmap(
    run: Run,
    path: str | Path,
    stat: str = "saturation",
    modes: Sequence[str] | None = None,
    title: str | None = None,
    annotate: bool | None = None,
) -> Path:
    """Draw one statistic for every layer and epoch as a layers x epochs heat map.

    One panel per recording mode (train, eval) shares a colour bar. For
    saturation the colour scale is fixed to [0, 1] so runs can be compared.

    Parameters
    ----------
    run : Run
        A run from :func:`load_run`.
    path : str or Path
        The PNG file to write (parent folders are created).
    stat : str
        A delve statistic name, default ``"saturation"``.
    modes : sequence of str, optional
        Modes to draw; default all modes that recorded ``stat``.
    title : str, optional
        Figure title; default names the statistic and the CSV file.
    annotate : bool, optional
        Write the value into every cell; default only when the grid is small
        enough to stay legible.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ReportError
        If the run has no column for ``stat``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if stat not in STAT_LABELS:
        raise ReportError(f"unknown statistic {stat!r}; choose one of {', '.join(STAT_LABELS)}")
    modes = [m for m in (modes or run.modes) if (m, stat) in run.stats]
    if not modes:
        raise ReportError(f"{run.path} has no {stat!r} columns to draw")
    frames = [run.stats[(m, stat)].reindex(columns=run.layers) for m in modes]
    layers = [layer for layer in run.layers if any(layer in f and f[layer].notna().any() for f in frames)]
    frames = [f[layers] for f in frames]
    n_epochs, n_layers = len(run.epochs), len(layers)
    if annotate is None:
        annotate = n_epochs <= 25 and n_layers <= 30

    if stat == "saturation":
        vmin, vmax = 0.0, 1.0
    else:
        values = np.concatenate([f.to_numpy(dtype=float).ravel() for f in frames])
        values = values[np.isfinite(values)]
        vmin, vmax = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
        if vmin == vmax:
            vmin, vmax = vmin - 0.5, vmax + 0.5

    panel_w = min(9.0, 1.6 + 0.55 * n_epochs)
    fig_h = min(12.0, 2.7 + 0.42 * n_layers)
    fig, axes = plt.subplots(
        1, len(modes), figsize=(panel_w * len(modes) + 1.6, fig_h), squeeze=False, constrained_layout=True
    )
    image = None
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    for ax, mode, frame in zip(axes[0], modes, frames, strict=True):
        grid = frame.to_numpy(dtype=float).T  # layers x epochs
        image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
        step = max(1, math.ceil(n_epochs / 30))
        ax.set_xticks(range(0, n_epochs, step))
        ax.set_xticklabels([str(e) for e in run.epochs[::step]], fontsize=8 if n_epochs > 20 else 10)
        ax.set_yticks(range(n_layers))
        ax.set_yticklabels(layers if ax is axes[0][0] else [""] * n_layers)
        ax.set_xlabel("epoch")
        if ax is axes[0][0]:
            ax.set_ylabel("layer (input side at the top)")
        ax.set_title(_MODE_TITLES.get(mode, f"{mode} mode"))
        if annotate:
            for i in range(n_layers):
                for j in range(n_epochs):
                    v = grid[i, j]
                    if not np.isfinite(v):
                        continue
                    text = f"{v:.2f}" if stat == "saturation" else f"{v:.3g}"
                    shade = (v - vmin) / (vmax - vmin)
                    ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if shade > 0.6 else "white")
    bar = fig.colorbar(image, ax=axes[0].tolist(), fraction=0.05, pad=0.02)
    label, definition = STAT_TITLES[stat]
    bar.set_label(label)
    fig.supxlabel(textwrap.fill(definition, width=int(fig.get_figwidth() * 12), break_on_hyphens=False), fontsize=9)
    fig.suptitle(title or f"Layer {stat.replace('-', ' ')} per epoch - {run.path.name}")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def heatmap_path(csv_path: str | Path, output_dir: str | Path | None = None, stat: str = "saturation") -> Path:
    """Default file name of the heat map for ``csv_path``: ``<stem>_<stat>_heatmap.png``."""
    csv_path = Path(csv_path)
    folder = Path(output_dir) if output_dir is not None else csv_path.parent
    return folder / f"{csv_path.stem}_{stat}_heatmap.png"


def choose_stat(run: Run, preferred: str = "saturation") -> str:
    """``preferred`` if the run recorded it, otherwise the first statistic it did record."""
    return preferred if run.has(preferred) else run.stat_names()[0]


def require_stat(run: Run, stat: str) -> str:
    """Return ``stat`` if the run recorded it.

    Raises
    ------
    ReportError
        If ``stat`` is unknown, or absent from the run; the message lists the
        statistics the run does hold.
    """
    if stat not in STAT_LABELS:
        raise ReportError(f"unknown statistic {stat!r}; choose one of {', '.join(STAT_LABELS)}")
    if not run.has(stat):
        raise ReportError(
            f"{run.path} has no {stat!r} columns; the statistics it holds are: {', '.join(run.stat_names())}"
        )
    return stat


def report(
    csv_path: str | Path,
    output_dir: str | Path | None = None,
    stat: str | None = None,
    feature_sizes: Mapping[str, int] | None = None,
) -> tuple[str, Path]:
    """Summarise a run file: the text of the per-layer table and the heat map written.

    Parameters
    ----------
    csv_path : str or Path
        A delve-format CSV.
    output_dir : str or Path, optional
        Folder for the heat map; default the CSV's folder.
    stat : str, optional
        Statistic to draw; it must be in the run. Default: saturation, or the
        first recorded statistic when the run has no saturation.
    feature_sizes : mapping, optional
        Known feature-space sizes per layer (see :func:`layer_table`).

    Returns
    -------
    tuple of (str, Path)
        The text to print and the PNG written.

    Raises
    ------
    ReportError
        For an unreadable run, a ``stat`` the run does not hold, or a heat map
        that cannot be written (the message names the path).
    """
    if stat is not None and stat not in STAT_LABELS:
        raise ReportError(f"unknown statistic {stat!r}; choose one of {', '.join(STAT_LABELS)}")
    run = load_run(csv_path)
    stat = choose_stat(run) if stat is None else require_stat(run, stat)
    last = run.epochs[-1]
    lines = [
        f"{run.path}: {len(run.layers)} layers, {len(run.epochs)} epochs, modes: {', '.join(run.modes)}",
        f"final values (last recorded epoch, {last}):",
        format_table(layer_table(run, feature_sizes)),
    ]
    scalars = format_scalars(run)
    if scalars:
        lines.append(f"scalars at the last epoch: {scalars}")
    target = heatmap_path(run.path, output_dir, stat)
    try:
        png = plot_heatmap(run, target, stat=stat)
    except OSError as exc:
        # Name the heat map, and also the folder that failed when it is another one (mkdir on a parent).
        failed = f" ({exc.filename})" if exc.filename and Path(exc.filename) != target else ""
        raise ReportError(f"cannot write the heat map {target}{failed}: {exc.strerror or exc}") from None
    return "\n".join(lines), png
