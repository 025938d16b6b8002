"""The demo entry point: one short epoch on a subset of the digits, checked end to end."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd
import pytest

from delve_fast.cli import main
from delve_fast.demo import RUN_NAME, DigitsCNN, feature_sizes, show_bars

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIZES = feature_sizes(DigitsCNN())
STATS = ("saturation", "intrinsic-dimensionality")
MODES = ("train", "eval")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """Run ``delve-fast demo`` for 1 epoch on 200 images; return (output folder, stdout)."""
    out_dir = tmp_path_factory.mktemp("demo")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(["demo", "--epochs", "1", "--subset", "200", "--output", str(out_dir), "--no-progress"])
    assert rc == 0, stdout.getvalue()
    return out_dir, stdout.getvalue()


@pytest.fixture(scope="module")
def demo_csv(demo_run) -> pd.DataFrame:
    out_dir, _ = demo_run
    return pd.read_csv(out_dir / f"{RUN_NAME}.csv", sep=";", index_col=0)


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = mpimg.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 100
    assert image.std() > 0


def test_model_has_several_conv_and_linear_layers():
    names = list(SIZES)
    assert sum(n.startswith("conv") for n in names) >= 3
    assert sum(n.startswith("fc") for n in names) >= 2


def test_csv_has_one_row_and_every_layer_stat_column(demo_csv):
    assert list(demo_csv.index) == [0]
    expected = {f"{mode}-{stat}_{layer}" for mode in MODES for stat in STATS for layer in SIZES}
    assert expected <= set(demo_csv.columns)
    extra = set(demo_csv.columns) - expected
    assert extra == {"train_loss", "test_loss", "test_accuracy"}


@pytest.mark.parametrize("mode", MODES)
def test_saturation_and_idim_in_range(demo_csv, mode):
    for layer, size in SIZES.items():
        sat = demo_csv[f"{mode}-saturation_{layer}"].iloc[-1]
        idim = demo_csv[f"{mode}-intrinsic-dimensionality_{layer}"].iloc[-1]
        assert 0 < sat <= 1, (layer, sat)
        assert float(idim).is_integer() and 1 <= idim <= size, (layer, idim)
        # delve's definition: saturation = intrinsic dimensionality / feature-space size
        assert sat == pytest.approx(idim / size)


def test_scalars_are_plausible(demo_csv):
    assert demo_csv["train_loss"].iloc[-1] > 0
    assert 0 <= demo_csv["test_accuracy"].iloc[-1] <= 1


def test_pngs_exist_and_are_images(demo_run):
    out_dir, _ = demo_run
    assert_png(out_dir / f"{RUN_NAME}_saturation_heatmap.png")
    for stat in ("lsat", "idim"):
        for mode in MODES:
            assert_png(out_dir / f"{RUN_NAME}_{stat}_{mode}_epoch_0.png")


def test_printed_table_and_paths(demo_run, demo_csv):
    out_dir, stdout = demo_run
    rows = {line.split()[0]: line.split() for line in stdout.splitlines() if line.split()}
    for layer, size in SIZES.items():
        row = rows[layer]
        # layer, features, train sat, eval sat, train idim, eval idim
        assert int(row[1]) == size
        assert float(row[2]) == pytest.approx(demo_csv[f"train-saturation_{layer}"].iloc[-1], abs=6e-4)
        assert float(row[3]) == pytest.approx(demo_csv[f"eval-saturation_{layer}"].iloc[-1], abs=6e-4)
        assert int(row[4]) == demo_csv[f"train-intrinsic-dimensionality_{layer}"].iloc[-1]
        assert int(row[5]) == demo_csv[f"eval-intrinsic-dimensionality_{layer}"].iloc[-1]
    assert str(out_dir / f"{RUN_NAME}.csv") in stdout
    assert str(out_dir / f"{RUN_NAME}_saturation_heatmap.png") in stdout


def test_report_on_demo_csv(demo_run, tmp_path, capsys):
    out_dir, _ = demo_run
    assert main(["report", str(out_dir / f"{RUN_NAME}.csv"), "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    for layer, size in SIZES.items():
        assert int(rows[layer][1]) == size  # recovered from idim / saturation
    assert_png(tmp_path / f"{RUN_NAME}_saturation_heatmap.png")


def test_report_on_demo_csv_via_python_dash_m(demo_run, tmp_path):
    out_dir, _ = demo_run
    proc = subprocess.run(
        [sys.executable, "-m", "delve_fast", "report", str(out_dir / f"{RUN_NAME}.csv"), "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for layer in SIZES:
        assert layer in proc.stdout
    assert_png(tmp_path / f"{RUN_NAME}_saturation_heatmap.png")


# --------------------------------------------------------------------------- progress output and the demo extra


def test_redirected_output_has_no_progress_bar_redraws(tmp_path):
    # Progress is on (no --no-progress), but stderr is a pipe, as when a cluster job logs to a file.
    proc = subprocess.run(
        [sys.executable, "-m", "delve_fast", "demo", "--epochs", "2", "--subset", "60", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "\r" not in proc.stdout
    # One plain line per epoch instead of the bars.
    epoch_lines = [line for line in proc.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epoch_lines] == ["epoch 1/2", "epoch 2/2"]


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.mark.parametrize(
    ("progress", "tty", "expected"), [(True, True, True), (True, False, False), (False, True, False)]
)
def test_bars_only_on_a_terminal_and_when_asked(progress, tty, expected):
    assert show_bars(progress, _Stream(tty)) is expected


def test_closed_stream_means_no_bars():
    stream = io.StringIO()
    stream.close()  # isatty() on a closed stream raises ValueError
    assert show_bars(True, stream) is False


def test_missing_demo_extra_is_one_line_error_with_the_install_command(tmp_path):
    code = (
        "import sys; sys.modules['sklearn'] = None; "  # makes `import sklearn` raise ImportError
        "from delve_fast.cli import main; "
        f"sys.exit(main(['demo', '--output', {str(tmp_path)!r}, '--no-progress']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "scikit-learn" in proc.stderr and "delve_fast[demo]" in proc.stderr
    assert "tqdm" not in proc.stderr.split("needs", 1)[1].split(",")[0]  # tqdm is installed: only sklearn is named


# --------------------------------------------------------------------------- the per-epoch plots' layout


def _draw_epoch_plots(tmp_path, idim_values):
    """Save one epoch of the plot writer with the demo's layers; return {stat: (figure, axes)} as drawn."""
    from delve_fast.writers import CSVandPlottingWriter

    drawn = {}
    writer = CSVandPlottingWriter(
        str(tmp_path / RUN_NAME), plot_manipulation_func=lambda ax: drawn.setdefault(ax.get_ylabel(), ax)
    )
    for layer, idim in zip(SIZES, idim_values, strict=True):
        writer.add_scalar(f"train-intrinsic-dimensionality_{layer}", float(idim))
        writer.add_scalar(f"train-saturation_{layer}", idim / SIZES[layer])
    writer.save()
    return drawn


def test_epoch_plot_labels_stay_inside_the_figure(tmp_path):
    # The values of a 5-epoch demo run: a span of 4-18 gave fractional ticks and a clipped label.
    drawn = _draw_epoch_plots(tmp_path, [6, 14, 17, 18, 5, 5, 4])
    assert len(drawn) == 2
    for ax in drawn.values():
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        fig = ax.figure
        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw(renderer)  # the layout as saved
        box = fig.bbox
        # Everything the axes draw (labels, tick labels, title); ticks outside the view are not drawn.
        for name, ext in (
            ("axes", ax.get_tightbbox(renderer)),
            ("y label", ax.yaxis.label.get_window_extent(renderer)),
        ):
            # Pixels; half a pixel of slack for anti-aliasing at the border.
            assert ext.x0 >= box.x0 - 0.5 and ext.x1 <= box.x1 + 0.5, (name, ax.get_ylabel(), ext)
            assert ext.y0 >= box.y0 - 0.5 and ext.y1 <= box.y1 + 0.5, (name, ax.get_ylabel(), ext)


@pytest.mark.parametrize("idim_values", [[6, 14, 17, 18, 5, 5, 4], [4, 5, 5, 6, 4, 5, 4], [1, 1, 1, 1, 1, 1, 1]])
def test_idim_plot_has_integer_ticks(tmp_path, idim_values):
    drawn = _draw_epoch_plots(tmp_path, idim_values)
    (idim_ax,) = [ax for label, ax in drawn.items() if "dimensionality" in label]
    ticks = [t for t in idim_ax.get_yticks() if idim_ax.get_ylim()[0] <= t <= idim_ax.get_ylim()[1]]
    assert len(ticks) >= 2
    assert all(float(t).is_integer() for t in ticks), ticks
