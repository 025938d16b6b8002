"""Saved spectra: the npy layout, ``delve-fast report --threshold`` and its errors."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from delve_fast import SaturationTracker
from delve_fast import report as R
from delve_fast import stats as S
from delve_fast.cli import main

TAG = S.STATMAP["spectrum"]
assert TAG == R.SPECTRUM_TAG  # the report reads the folders the npy writer names after the stat


def np_idim(x: np.ndarray, threshold: float) -> int:
    """delve's rule from np.cov: count of cumulative shares below the threshold."""
    lam = np.clip(np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True))[::-1], 0, None)
    return int((np.cumsum(lam) / lam.sum() < threshold).sum())


@pytest.fixture
def saved_run(tmp_path):
    """Two epochs of a 3-layer net with csv + npy and the spectrum; returns (csv path, eval outputs per epoch)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 20), nn.Tanh(), nn.Linear(20, 12), nn.Tanh(), nn.Linear(12, 4))
    tracker = SaturationTracker(
        str(tmp_path / "run"), save_to=["csv", "npy"], modules=net, device="cpu", stats=["lsat", "idim", "spectrum"]
    )
    captured: dict[str, list[np.ndarray]] = {}
    net[2].register_forward_hook(lambda m, i, o: captured.setdefault("eval", []).append(o.double().numpy()))
    for _ in range(2):
        net.train()
        with torch.no_grad():
            net(torch.randn(64, 6))
        net.eval()
        with torch.no_grad():
            net(torch.randn(80, 6))
        tracker.add_saturations()
    tracker.close()
    # The hook above also saw the train pass: keep the eval outputs (every second call).
    return tmp_path / "run.csv", captured["eval"][1::2]


def test_spectra_are_saved_per_epoch_and_loaded(saved_run):
    csv, _ = saved_run
    spectra = R.load_spectra(csv.with_suffix(""))
    assert sorted(spectra) == [(m, layer) for m in ("eval", "train") for layer in ("0", "2", "4")]
    assert all(sorted(per) == [0, 1] for per in spectra.values())
    assert spectra[("train", "2")][1].shape == (12,)
    assert R.load_spectra(csv.parent / "nowhere") == {}


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.95])
def test_report_threshold_recomputes_idim_from_spectra(saved_run, capsys, threshold):
    csv, eval_outputs = saved_run
    assert main(["report", str(csv), "--threshold", str(threshold), "--stat", "intrinsic-dimensionality"]) == 0
    out = capsys.readouterr().out
    assert f"at threshold {threshold:g}" in out
    line = next(row for row in out.splitlines() if row.startswith("2 "))
    header = re.split(r"\s{2,}", out.splitlines()[3].strip())  # headers such as "eval idim" hold one space
    cells = dict(zip(header, line.split(), strict=True))
    expected = np_idim(eval_outputs[-1], threshold)
    assert int(cells["eval idim"]) == expected
    assert float(cells["eval sat"]) == pytest.approx(expected / 12, abs=5e-4)  # printed with 3 decimals
    assert int(cells["features"]) == 12  # from the spectrum length
    assert (csv.parent / "run_spectrum.png").stat().st_size > 0
    assert (csv.parent / "run_intrinsic-dimensionality_heatmap.png").stat().st_size > 0


def test_apply_threshold_every_epoch(saved_run):
    csv, eval_outputs = saved_run
    run = R.attach_spectra(R.load_run(csv), R.load_spectra(csv.with_suffix("")))
    R.apply_threshold(run, 0.9)
    idim = run.stats[("eval", "intrinsic-dimensionality")]["2"]
    assert list(idim) == [np_idim(x, 0.9) for x in eval_outputs]
    # At the tracker's own threshold the recomputation gives back the CSV's numbers exactly.
    table = pd.read_csv(csv, sep=";", index_col=0)
    R.apply_threshold(run, 0.99)
    for mode in ("train", "eval"):
        for layer in ("0", "2", "4"):
            got = run.stats[(mode, "saturation")][layer].to_numpy()
            np.testing.assert_array_equal(got, table[f"{mode}-saturation_{layer}"].to_numpy())


def test_threshold_without_spectra_is_a_one_line_error(tmp_path, capsys):
    net = nn.Linear(3, 4)
    t = SaturationTracker(str(tmp_path / "plain"), save_to="csv", modules=net, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", S.FewSamplesWarning)
        net(torch.randn(3, 3))
        t.add_saturations()
    t.close()
    assert main(["report", str(tmp_path / "plain.csv"), "--threshold", "0.9"]) == 1
    err = capsys.readouterr().err
    assert "--threshold needs the run's saved spectra" in err and "stats=['spectrum']" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["0", "1.5", "abc", "-0.2"])
def test_threshold_out_of_range_is_a_usage_error(saved_run, capsys, value):
    csv, _ = saved_run
    with pytest.raises(SystemExit) as exc:
        main(["report", str(csv), "--threshold", value])
    assert exc.value.code == 2
    assert "share of variance" in capsys.readouterr().err


def test_spectra_folder_option(saved_run, tmp_path, capsys):
    csv, _ = saved_run
    moved = tmp_path / "elsewhere"
    csv.with_suffix("").rename(moved)
    assert main(["report", str(csv), "--threshold", "0.9"]) == 1  # the default folder is gone
    capsys.readouterr()
    assert main(["report", str(csv), "--threshold", "0.9", "--spectra", str(moved)]) == 0
    assert "spectrum plot written to" in capsys.readouterr().out
    assert main(["report", str(csv), "--spectra", str(tmp_path / "missing")]) == 1
    assert "no such spectra folder" in capsys.readouterr().err


def test_bad_spectrum_file_is_named(saved_run, capsys):
    csv, _ = saved_run
    folder = csv.with_suffix("") / f"_train-{TAG}_0"
    np.save(folder / f"_train-{TAG}_0_epoch1.npy", np.ones((2, 2)))
    assert main(["report", str(csv)]) == 1
    assert f"_train-{TAG}_0_epoch1.npy holds an array of shape (2, 2)" in capsys.readouterr().err


def test_report_without_spectra_draws_no_spectrum(tmp_path, capsys):
    fixture = Path(__file__).parent / "data" / "delve_format_run.csv"
    copy = tmp_path / "copy.csv"
    copy.write_text(fixture.read_text())
    assert main(["report", str(copy)]) == 0
    assert "spectrum" not in capsys.readouterr().out
    assert not (tmp_path / "copy_spectrum.png").exists()
