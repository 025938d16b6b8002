"""The ``delve-fast`` command line: ``report`` on hand-made and real delve CSVs, help, and error handling."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest
import torch

from delve_fast.cli import main
from delve_fast.report import load_run

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "delve_format_run.csv"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    """``path`` is a non-empty PNG that matplotlib can decode."""
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # not a blank canvas


def assert_one_line_error(err: str) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("delve-fast: error: ")


def run_module(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run(
        [sys.executable, "-m", "delve_fast", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


# --------------------------------------------------------------------------- report on a hand-made CSV


def test_report_handmade_fixture_prints_final_values(tmp_path, capsys):
    assert main(["report", str(FIXTURE), "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    # layer, features, train sat, eval sat, train idim, eval idim, train trc
    assert rows["features-0"] == ["features-0", "8", "0.625", "0.500", "5", "4", "3"]
    assert rows["block_1"][:6] == ["block_1", "32", "0.094", "0.062", "3", "2"]
    assert rows["classifier"][:6] == ["classifier", "10", "0.700", "0.600", "7", "6"]
    assert "test_accuracy = 0.91" in out
    png = tmp_path / "delve_format_run_saturation_heatmap.png"
    assert str(png) in out
    assert_png(png)


def test_report_parses_layer_names_with_dashes_and_underscores():
    run = load_run(FIXTURE)
    assert run.layers == ["features-0", "block_1", "classifier"]
    assert run.modes == ["train", "eval"]
    assert list(run.scalars.columns) == ["train_loss", "test_accuracy"]
    assert run.epochs == [0, 1, 2]
    assert run.stats[("eval", "saturation")]["block_1"].tolist() == [0.15625, 0.125, 0.0625]


def test_report_other_stat_and_default_output_folder(tmp_path, capsys):
    csv = tmp_path / "copy.csv"
    csv.write_text(FIXTURE.read_text())
    assert main(["report", str(csv), "--stat", "intrinsic-dimensionality"]) == 0
    assert_png(tmp_path / "copy_intrinsic-dimensionality_heatmap.png")


def test_report_via_python_dash_m(tmp_path):
    proc = run_module("report", str(FIXTURE), "--output", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "classifier" in proc.stdout and "Traceback" not in proc.stderr
    assert_png(tmp_path / "delve_format_run_saturation_heatmap.png")


# --------------------------------------------------------------------------- report on a CSV written by delve 0.1.50


@pytest.mark.delve
def test_report_reads_csv_written_by_real_delve(tmp_path, capsys):
    delve = pytest.importorskip("delve")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, 6),
    )
    tracker = delve.SaturationTracker(
        str(tmp_path / "delverun"), save_to="plotcsv", modules=model, stats=["lsat", "idim"], device="cpu"
    )
    for epoch in range(2):
        model.train()
        model(torch.randn(64, 1, 8, 8))
        model.eval()
        with torch.no_grad():
            model(torch.randn(64, 1, 8, 8))
        tracker.add_scalar("train_loss", 1.0 / (epoch + 1))
        tracker.add_saturations()
    tracker.close()
    csv = tmp_path / "delverun.csv"
    assert csv.is_file()

    assert main(["report", str(csv), "--output", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    # delve names Sequential children by index: layers "0" (conv, 4 channels) and "3" (linear, 6 features).
    assert rows["0"][1] == "4" and rows["3"][1] == "6"
    for layer, size in (("0", 4), ("3", 6)):
        sat_train, sat_eval, idim_train, idim_eval = rows[layer][2:6]
        assert 0 < float(sat_train) <= 1 and 0 < float(sat_eval) <= 1
        assert 1 <= int(idim_train) <= size and 1 <= int(idim_eval) <= size
    assert_png(tmp_path / "rep" / "delverun_saturation_heatmap.png")


# --------------------------------------------------------------------------- errors: one line, non-zero, no traceback


MALFORMED = {
    "empty": b"",
    "comma_separated": b",train-saturation_a,train-intrinsic-dimensionality_a\n0,0.5,2\n",
    "no_stat_columns": b";loss;accuracy\n0;1.0;0.5\n",
    "header_only": b";train-saturation_a\n",
    "non_numeric_value": b";train-saturation_a\n0;0.5\n1;lots\n",
    "ragged_rows": b";train-saturation_a\n0;0.5\n1;0.5;0.7;0.9\n",
    "bad_index": b";train-saturation_a\nfirst;0.5\n",
    "binary": bytes(range(256)) * 4,
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_report_malformed_csv_is_one_line_error(tmp_path, capsys, name):
    csv = tmp_path / f"{name}.csv"
    csv.write_bytes(MALFORMED[name])
    assert main(["report", str(csv)]) == 1
    captured = capsys.readouterr()
    assert_one_line_error(captured.err)
    assert str(csv) in captured.err
    assert not list(tmp_path.glob("*.png"))


def test_report_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope" / "run.csv"
    assert main(["report", str(missing)]) == 1
    err = capsys.readouterr().err
    assert_one_line_error(err)
    assert "no such file" in err


def test_report_directory_instead_of_file(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    assert_one_line_error(capsys.readouterr().err)


def test_report_stat_missing_from_csv_is_an_error_listing_present_stats(tmp_path, capsys):
    # The fixture records saturation, intrinsic dimensionality and covariance trace, no determinant.
    assert main(["report", str(FIXTURE), "--stat", "covariance-determinant", "--output", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert_one_line_error(captured.err)
    assert "'covariance-determinant'" in captured.err
    for present in ("saturation", "intrinsic-dimensionality", "covariance-trace"):
        assert present in captured.err
    assert not list(tmp_path.glob("*.png"))  # nothing drawn in its place
    assert captured.out == ""


def test_report_without_stat_falls_back_to_a_recorded_one(tmp_path, capsys):
    csv = tmp_path / "idim_only.csv"
    csv.write_text(";train-intrinsic-dimensionality_a;train-intrinsic-dimensionality_b\n0;3;4\n1;2;5\n")
    assert main(["report", str(csv)]) == 0
    assert_png(tmp_path / "idim_only_intrinsic-dimensionality_heatmap.png")


@pytest.mark.parametrize("where", ["file", "below_file"])
def test_report_output_error_names_the_path(tmp_path, capsys, where):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    output = blocker if where == "file" else blocker / "sub"
    assert main(["report", str(FIXTURE), "--output", str(output)]) == 1
    err = capsys.readouterr().err
    assert_one_line_error(err)
    assert str(output / "delve_format_run_saturation_heatmap.png") in err


def test_demo_output_that_is_a_file_names_the_path(tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    assert main(["demo", "--output", str(blocker), "--no-progress", "--subset", "40"]) == 1
    err = capsys.readouterr().err
    assert_one_line_error(err)
    assert str(blocker) in err


def test_report_error_via_python_dash_m(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("this is not a delve file\n")
    proc = run_module("report", str(bad))
    assert proc.returncode == 1
    assert_one_line_error(proc.stderr)
    assert proc.stdout == ""


# --------------------------------------------------------------------------- help and argument errors


def test_help_lists_both_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "report" in out


def test_demo_help_lists_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--epochs", "--device", "--backend", "--output", "--subset"):
        assert option in out


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--backend", "fortran"],
        ["demo", "--epochs", "0"],
        ["demo", "--epochs", "many"],
        ["report"],
        [],
    ],
)
def test_usage_errors_exit_2_without_traceback(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("device", ["nonsense", "cuda:7"])
def test_demo_bad_device_is_one_line_error(tmp_path, capsys, device):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("a CUDA device exists here")
    rc = main(["demo", "--device", device, "--output", str(tmp_path / "out"), "--no-progress"])
    assert rc == 1
    assert_one_line_error(capsys.readouterr().err)


def test_demo_too_small_subset_is_one_line_error(tmp_path, capsys):
    threads = torch.get_num_threads()
    rc = main(["demo", "--subset", "5", "--output", str(tmp_path / "out"), "--no-progress", "--threads", "1"])
    assert rc == 1
    assert_one_line_error(capsys.readouterr().err)
    assert torch.get_num_threads() == threads  # the demo restores torch's thread setting
