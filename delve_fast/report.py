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
  epochs heat map with one panel per mode (:func:`plot_heatmap`), and
* when the run also saved its eigenvalue spectra (stat ``spectrum`` with the
  ``npy`` writer): a spectrum plot of the last epoch (:func:`plot_spectra`) and
  ``idim`` / ``lsat`` recomputed at another threshold (:func:`apply_threshold`).

Every problem with the input is raised as :class:`ReportError`, whose message
is a single line meant to be shown to the user as it is.
"""

from __future__ import annotations

import math
import re
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
    "covariance-log-determinant": "logdet",
    "effective-rank": "erank",
    "rankme": "rankme",
    "participation-ratio": "pr",
    "stable-rank": "srank",
    "spectrum-alpha": "alpha",
    "sample-count": "n",
}

#: Colour-bar labels and one-sentence definitions shown under the heat map; ``{share}`` is the threshold.
STAT_TITLES: dict[str, tuple[str, str]] = {
    "saturation": (
        "saturation",
        "saturation = (eigendirections needed to explain {share} of the variance) / (feature-space size); "
        "low values mean the layer uses few of its dimensions",
    ),
    "intrinsic-dimensionality": (
        "intrinsic dimensionality",
        "intrinsic dimensionality = number of eigendirections needed to explain {share} of the variance",
    ),
    "covariance-trace": ("covariance trace", "covariance trace = total variance of the layer's output"),
    "diagonal-trace": ("sum of eigenvalues", "sum of the (clamped) covariance eigenvalues"),
    "covariance-determinant": ("covariance determinant", "covariance determinant = generalised variance"),
    "covariance-log-determinant": ("log-determinant", "natural log of the covariance determinant"),
    "effective-rank": (
        "effective rank",
        "effective rank = exp(entropy of the normalised eigenvalues) (Roy & Vetterli 2007); "
        "between 1 and the feature-space size",
    ),
    "rankme": (
        "RankMe",
        "RankMe = exp(entropy of the normalised singular values of the uncentred samples, + 1e-7) "
        "(Garrido et al. 2023); low values signal collapse",
    ),
    "participation-ratio": ("participation ratio", "participation ratio = (sum of eigenvalues)^2 / sum of squares"),
    "stable-rank": ("stable rank", "stable rank = sum of eigenvalues / largest eigenvalue"),
    "spectrum-alpha": (
        "spectrum decay alpha",
        "alpha of eigenvalue_i ~ i^-alpha, fitted over ranks 10 to 100; larger means faster decay",
    ),
    "sample-count": (
        "samples",
        "samples that entered the covariance; with no more samples than features, the rank is capped by the samples",
    ),
}

#: Folder-name tag of saved spectra (the npy writer names folders ``_<mode>-<tag>_<layer>``).
SPECTRUM_TAG = "eigenvalue-spectrum"


def stat_title(stat: str, threshold: float | None = None) -> tuple[str, str]:
    """Colour-bar label and one-sentence definition of ``stat`` (a delve statistic name).

    Parameters
    ----------
    stat : str
        A key of :data:`STAT_TITLES`.
    threshold : float, optional
        The variance share behind ``idim`` and ``lsat``; default 0.99 (the tracker's default).
    """
    label, definition = STAT_TITLES[stat]
    share = 0.99 if threshold is None else threshold
    return label, definition.format(share=f"{share * 100:g}%")


_STAT_COLUMN = re.compile(
    r"^(?P<mode>[A-Za-z0-9]+)-(?P<stat>" + "|".join(map(re.escape, STAT_LABELS)) + r")_(?P<layer>.+)$"
)
_INDEX_NAMES = {"", "epoch", "index", "step"}
_MODE_ORDER = {"train": 0, "eval": 1}
_SPECTRUM_FOLDER = re.compile(r"^_(?P<mode>[A-Za-z0-9]+)-" + re.escape(SPECTRUM_TAG) + r"_(?P<layer>.+)$")
_EPOCH_FILE = re.compile(r"_epoch(?P<epoch>[0-9]+)\.npy$")


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
    spectra : dict
        ``(mode, layer) -> {epoch: eigenvalues}`` saved by the npy writer, when attached.
    threshold : float or None
        The threshold ``idim`` and ``lsat`` were recomputed at, if they were.
    """

    path: Path
    epochs: list[int]
    layers: list[str]
    modes: list[str]
    stats: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)
    scalars: pd.DataFrame = field(default_factory=pd.DataFrame)
    spectra: dict[tuple[str, str], dict[int, np.ndarray]] = field(default_factory=dict)
    threshold: float | None = None

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
    run = run_from_frame(frame, path)
    if not run.stats:
        hint = ""
        if len(frame.columns) <= 1:
            hint = " (is it ';'-separated?)"
        raise ReportError(
            f"{path} has no delve statistic columns such as 'train-saturation_<layer>'{hint}; "
            "expected a CSV written by SaturationTracker's csv or plot writer"
        )
    return run


def run_from_frame(frame: pd.DataFrame, path: str | Path) -> Run:
    """A :class:`Run` from a table of delve columns indexed by epoch (a read CSV, or rows kept in memory).

    Raises
    ------
    ReportError
        If a statistic column holds a non-numeric value. A table without
        statistic columns gives a run with no ``stats``.
    """
    path = Path(path)
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
            size = next(
                (len(lam) for (_, name), per in run.spectra.items() if name == layer for lam in per.values()), None
            )
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
    if column.endswith((" idim", " n")) or column == "features":
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
    from delve_fast.plots import heatmap_figure

    if stat not in STAT_LABELS:
        raise ReportError(f"unknown statistic {stat!r}; choose one of {', '.join(STAT_LABELS)}")
    modes = [m for m in (modes or run.modes) if (m, stat) in run.stats]
    if not modes:
        raise ReportError(f"{run.path} has no {stat!r} columns to draw")
    frames = [run.stats[(m, stat)].reindex(columns=run.layers) for m in modes]
    layers = [layer for layer in run.layers if any(layer in f and f[layer].notna().any() for f in frames)]
    epochs = list(frames[0].index)
    panels = [(m, f[layers].reindex(epochs).to_numpy(dtype=float).T) for m, f in zip(modes, frames, strict=True)]
    label, definition = stat_title(stat, run.threshold)
    fig = heatmap_figure(
        panels,
        layers,
        [int(e) for e in epochs],
        label=label,
        definition=definition,
        title=title or f"Layer {stat.replace('-', ' ')} per epoch - {run.path.name}",
        value_range=(0.0, 1.0) if stat == "saturation" else None,
        integer=stat in ("intrinsic-dimensionality", "sample-count"),
        annotate=annotate,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


# ----------------------------------------------------------------- spectra
def default_spectra_dir(csv_path: str | Path) -> Path:
    """The npy folder of a run: the CSV path without ``.csv`` (the tracker's ``savefile``)."""
    csv_path = Path(csv_path)
    return csv_path.with_suffix("") if csv_path.suffix == ".csv" else csv_path.parent / (csv_path.name + "_npy")


def load_spectra(folder: str | Path) -> dict[tuple[str, str], dict[int, np.ndarray]]:
    """Read the eigenvalue spectra the npy writer saved (stat ``spectrum``).

    Parameters
    ----------
    folder : str or Path
        The run's npy folder, holding ``_<mode>-eigenvalue-spectrum_<layer>/`` folders.

    Returns
    -------
    dict
        ``(mode, layer) -> {epoch: eigenvalues}``, layers in name order; empty
        when the folder holds no spectra (or does not exist).

    Raises
    ------
    ReportError
        If a spectrum file is unreadable or not a 1-D array.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    out: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        match = _SPECTRUM_FOLDER.match(sub.name)
        if match is None:
            continue
        per_epoch: dict[int, np.ndarray] = {}
        for file in sub.iterdir():
            found = _EPOCH_FILE.search(file.name)
            if found is None or not file.name.startswith(sub.name):
                continue
            try:
                values = np.load(file, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise ReportError(f"cannot read the spectrum {file}: {exc}") from None
            if values.ndim != 1 or values.size == 0:
                raise ReportError(f"{file} holds an array of shape {values.shape}, expected 1-D eigenvalues")
            per_epoch[int(found["epoch"])] = values.astype(np.float64)
        if per_epoch:
            out[(match["mode"], match["layer"])] = dict(sorted(per_epoch.items()))
    return out


def attach_spectra(run: Run, spectra: Mapping[tuple[str, str], Mapping[int, np.ndarray]]) -> Run:
    """Give ``run`` its saved spectra; layers only in the spectra join the layer list (at the end)."""
    run.spectra = {key: dict(value) for key, value in spectra.items()}
    for mode, layer in run.spectra:
        if layer not in run.layers:
            run.layers.append(layer)
        if mode not in run.modes:
            run.modes.append(mode)
    run.modes.sort(key=lambda m: _MODE_ORDER.get(m, 2))
    return run


def apply_threshold(run: Run, threshold: float, rule: str = "delve") -> Run:
    """Recompute ``idim`` and ``lsat`` of every saved spectrum at ``threshold``, in place of the CSV's.

    Parameters
    ----------
    run : Run
        A run with spectra (:func:`attach_spectra`).
    threshold : float
        Share of the variance in ``(0, 1]``.
    rule : {"delve", "gap"}, default "delve"
        See :func:`delve_fast.stats.intrinsic_dimensionality`.

    Returns
    -------
    Run
        ``run``, whose ``saturation`` and ``intrinsic-dimensionality`` tables
        now come from the spectra.

    Raises
    ------
    ReportError
        If the threshold is outside ``(0, 1]`` or the run has no spectra.
    """
    from delve_fast.stats import intrinsic_dimensionality

    if not (isinstance(threshold, (int, float)) and 0.0 < float(threshold) <= 1.0):
        raise ReportError(f"the threshold must be a share of variance in (0, 1], got {threshold!r}")
    if not run.spectra:
        raise ReportError(
            f"{run.path}: no saved spectra to recompute idim and lsat from; record stats=['spectrum'] "
            "with save_to including 'npy' (folders '_<mode>-eigenvalue-spectrum_<layer>')"
        )
    epochs = sorted(set(run.epochs) | {e for per in run.spectra.values() for e in per})
    for mode in sorted({m for m, _ in run.spectra}, key=lambda m: _MODE_ORDER.get(m, 2)):
        idim: dict[str, pd.Series] = {}
        sat: dict[str, pd.Series] = {}
        for (m, layer), per_epoch in run.spectra.items():
            if m != mode:
                continue
            dims = {e: intrinsic_dimensionality(lam, threshold, rule=rule) for e, lam in per_epoch.items()}
            idim[layer] = pd.Series(dims, dtype=float)
            sat[layer] = pd.Series({e: d / per_epoch[e].shape[0] for e, d in dims.items()}, dtype=float)
        order = [layer for layer in run.layers if layer in idim]
        run.stats[(mode, "intrinsic-dimensionality")] = pd.DataFrame(idim, index=epochs)[order]
        run.stats[(mode, "saturation")] = pd.DataFrame(sat, index=epochs)[order]
    run.epochs = epochs
    run.threshold = float(threshold)
    return run


def plot_spectra(run: Run, path: str | Path, epoch: int | None = None, title: str | None = None) -> Path:
    """Draw the saved spectra of one epoch: eigenvalue share against rank, log-log, one panel per mode.

    Parameters
    ----------
    run : Run
        A run with spectra (:func:`attach_spectra`).
    path : str or Path
        The PNG file to write.
    epoch : int, optional
        Default: each layer's last saved epoch.
    title : str, optional

    Returns
    -------
    Path

    Raises
    ------
    ReportError
        If the run has no spectra (at ``epoch``).
    """
    from delve_fast.plots import spectrum_figure

    panels = []
    for mode in run.modes:
        series = []
        for layer in run.layers:
            per_epoch = run.spectra.get((mode, layer))
            if not per_epoch:
                continue
            chosen = max(per_epoch) if epoch is None else epoch
            if chosen in per_epoch:
                series.append((layer, per_epoch[chosen]))
        if series:
            panels.append((mode, series))
    if not panels:
        raise ReportError(f"{run.path}: no saved spectra to draw" + ("" if epoch is None else f" at epoch {epoch}"))
    which = "last epoch" if epoch is None else f"epoch {epoch}"
    fig = spectrum_figure(panels, title or f"Eigenvalue spectrum of each layer ({which}) - {run.path.name}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
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
    threshold: float | None = None,
    spectra_dir: str | Path | None = None,
) -> tuple[str, Path]:
    """Summarise a run file: the text of the per-layer table and the heat map written.

    When the run saved its spectra (stat ``spectrum`` with the ``npy`` writer),
    a spectrum plot of the last epoch, ``<stem>_spectrum.png``, is drawn too and
    named in the text.

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
    threshold : float, optional
        Recompute ``idim`` and ``lsat`` from the saved spectra at this share of
        variance (see :func:`apply_threshold`); they must exist.
    spectra_dir : str or Path, optional
        The run's npy folder; default :func:`default_spectra_dir` of the CSV.

    Returns
    -------
    tuple of (str, Path)
        The text to print and the heat map written.

    Raises
    ------
    ReportError
        For an unreadable run, a ``stat`` the run does not hold, a threshold
        without saved spectra, or a picture that cannot be written (the
        message names the path).
    """
    if stat is not None and stat not in STAT_LABELS:
        raise ReportError(f"unknown statistic {stat!r}; choose one of {', '.join(STAT_LABELS)}")
    run = load_run(csv_path)
    folder = Path(spectra_dir) if spectra_dir is not None else default_spectra_dir(run.path)
    if spectra_dir is not None and not folder.is_dir():
        raise ReportError(f"no such spectra folder: {folder}")
    attach_spectra(run, load_spectra(folder))
    if threshold is not None:
        if not run.spectra:
            raise ReportError(
                f"--threshold needs the run's saved spectra, and {folder} holds none; record stats=['spectrum'] "
                "with save_to including 'npy', or pass the npy folder with --spectra"
            )
        apply_threshold(run, threshold)
    stat = choose_stat(run) if stat is None else require_stat(run, stat)
    last = run.epochs[-1]
    lines = [f"{run.path}: {len(run.layers)} layers, {len(run.epochs)} epochs, modes: {', '.join(run.modes)}"]
    if run.threshold is not None:
        lines.append(f"idim and sat recomputed from the spectra in {folder} at threshold {run.threshold:g}")
    lines += [f"final values (last recorded epoch, {last}):", format_table(layer_table(run, feature_sizes))]
    scalars = format_scalars(run)
    if scalars:
        lines.append(f"scalars at the last epoch: {scalars}")
    target = heatmap_path(run.path, output_dir, stat)
    png = _write_picture("heat map", target, lambda: plot_heatmap(run, target, stat=stat))
    if run.spectra:
        spectrum_png = heatmap_path(run.path, output_dir, "spectrum").with_name(f"{run.path.stem}_spectrum.png")
        _write_picture("spectrum plot", spectrum_png, lambda: plot_spectra(run, spectrum_png))
        lines.append(f"spectrum plot written to {spectrum_png}")
    return "\n".join(lines), png


def _write_picture(what: str, target: Path, draw) -> Path:
    try:
        return draw()
    except OSError as exc:
        # Name the picture, and also the folder that failed when it is another one (mkdir on a parent).
        failed = f" ({exc.filename})" if exc.filename and Path(exc.filename) != target else ""
        raise ReportError(f"cannot write the {what} {target}{failed}: {exc.strerror or exc}") from None
