"""Spectrum plots and stat heat maps: the plot writer's files and what the figures hold."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from delve_fast import SaturationTracker
from delve_fast import plots as P
from delve_fast import stats as S
from delve_fast.writers import CSVandPlottingWriter
from delve_fast.writers.plotting_writer import PLOTTED_STATS


def _train(tmp_path, stats, epochs=2, writer_args=None, width=6):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 3))
    t = SaturationTracker(
        str(tmp_path / "exp"), save_to="plot", modules=net, device="cpu", stats=stats, writer_args=writer_args
    )
    for _ in range(epochs):
        net.train()
        net(torch.randn(32, 4))
        net.eval()
        with torch.no_grad():
            net(torch.randn(32, 4))
        t.add_saturations()
    t.close()
    return sorted(p for p in os.listdir(tmp_path) if p.endswith(".png")), t


def test_spectrum_plot_per_mode_and_epoch(tmp_path):
    pngs, _ = _train(tmp_path, ["spectrum"])
    assert pngs == [f"exp_spectrum_{m}_epoch_{e}.png" for m in ("eval", "train") for e in (0, 1)]
    assert "spectrum" not in (tmp_path / "exp.csv").read_text()  # arrays never reach the CSV


def test_new_scalar_stats_get_per_layer_plots(tmp_path):
    pngs, _ = _train(tmp_path, ["erank_train", "count_train"], epochs=1)
    assert pngs == ["exp_count_train_epoch_0.png", "exp_erank_train_epoch_0.png"]
    assert {"erank", "rankme", "pr", "srank", "alpha", "count", "logdet"} <= set(PLOTTED_STATS)
    assert PLOTTED_STATS[:5] == ("lsat", "idim", "det", "trc", "dtrc")  # delve's order first
    assert not {"spectrum", "cov", "embed"} & set(PLOTTED_STATS)


def test_heatmaps_on_close(tmp_path):
    pngs, t = _train(tmp_path, ["lsat", "erank"], epochs=3, writer_args={"heatmaps": True})
    heatmaps = [p for p in pngs if p.endswith("_heatmap.png")]
    assert heatmaps == ["exp_erank_heatmap.png", "exp_lsat_heatmap.png"]  # only the stats recorded
    only, _ = _train(tmp_path / "b", ["lsat", "erank"], writer_args={"heatmaps": ["erank"]})
    assert [p for p in only if p.endswith("_heatmap.png")] == ["exp_erank_heatmap.png"]


def test_heatmaps_argument_errors(tmp_path):
    with pytest.raises(TypeError, match="heatmaps must be a bool or a list"):
        CSVandPlottingWriter(str(tmp_path / "x"), heatmaps="lsat")
    with pytest.raises(ValueError, match=r"unknown stat keys \['nope'\]; choose from lsat, idim"):
        CSVandPlottingWriter(str(tmp_path / "x"), heatmaps=["lsat", "nope"])


def test_heatmap_grid_holds_every_epoch_and_layer(tmp_path, monkeypatch):
    drawn = {}
    real = P.heatmap_figure

    def spy(panels, layers, epochs, **kwargs):
        drawn[kwargs["label"]] = (panels, layers, epochs, kwargs)
        return real(panels, layers, epochs, **kwargs)

    monkeypatch.setattr(P, "heatmap_figure", spy)
    w = CSVandPlottingWriter(str(tmp_path / "h"), heatmaps=["idim"])
    rows = [{"train-intrinsic-dimensionality_a": 3, "train-intrinsic-dimensionality_b": 1}, {}, {}]
    rows[1] = {"train-intrinsic-dimensionality_a": 4, "eval-intrinsic-dimensionality_b": 2}
    rows[2] = {"train-intrinsic-dimensionality_a": 5, "train-intrinsic-dimensionality_b": 2}
    for row in rows:
        w.add_scalars("", row)
        w.save()
    w.close()
    panels, layers, epochs, kwargs = drawn["intrinsic dimensionality"]
    assert layers == ["a", "b"] and epochs == [0, 1, 2]
    modes = dict(panels)
    np.testing.assert_array_equal(modes["train"], [[3, 4, 5], [1, np.nan, 2]])
    np.testing.assert_array_equal(modes["eval"], [[np.nan, np.nan, np.nan], [np.nan, 2, np.nan]])
    assert kwargs["integer"] is True
    assert (tmp_path / "h_idim_heatmap.png").exists()


def test_spectrum_figure_lines_hold_normalised_shares():
    lam_a = np.array([4.0, 2.0, 1.0, 1.0])
    lam_b = np.array([9.0, 1.0, 0.0])  # its zero has no place on a log axis
    fig = P.spectrum_figure([("train", [("a", lam_a), ("b", lam_b), ("dead", np.zeros(3))])], "t")
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert sorted(lines) == ["a", "b"]  # a layer without variance is left out
    np.testing.assert_allclose(lines["a"].get_ydata(), lam_a / 8.0)
    np.testing.assert_array_equal(lines["a"].get_xdata(), [1, 2, 3, 4])
    np.testing.assert_allclose(lines["b"].get_ydata(), [0.9, 0.1])
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert fig.legends and [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b"]


def test_spectrum_figure_with_many_layers_uses_a_named_colour_bar():
    rng = np.random.default_rng(0)
    names = [f"block{i}-conv" for i in range(24)]
    series = [(name, np.sort(rng.gamma(1.0, size=32))[::-1]) for name in names]
    fig = P.spectrum_figure([("train", series), ("eval", series[:20])], "t")
    assert not fig.legends
    bar_ax = fig.axes[-1]
    assert [t.get_text() for t in bar_ax.get_yticklabels()] == names
    assert len(fig.axes[0].get_lines()) == 24 and len(fig.axes[1].get_lines()) == 20
    # Same layer, same colour in both panels.
    assert fig.axes[0].get_lines()[5].get_color() == fig.axes[1].get_lines()[5].get_color()


def test_normalised_spectrum_drops_round_off():
    lam = np.array([1.0, 0.5, 1e-18, 0.0])  # 1e-18 is below C * eps * l_1
    np.testing.assert_allclose(P.normalised_spectrum(lam), [2 / 3, 1 / 3])
    assert P.normalised_spectrum(np.zeros(3)).size == 0


def test_heatmap_for_any_recorded_stat_from_the_report(tmp_path):
    from delve_fast import report as R

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", S.FewSamplesWarning)
        _train(tmp_path, ["lsat", "erank", "rankme", "alpha"], epochs=2)
    run = R.load_run(tmp_path / "exp.csv")
    assert {"effective-rank", "rankme", "spectrum-alpha"} <= set(run.stat_names())
    for stat in ("effective-rank", "rankme"):
        png = R.plot_heatmap(run, R.heatmap_path(run.path, tmp_path, stat), stat=stat)
        assert png.stat().st_size > 0
    label, definition = R.stat_title("saturation", 0.95)
    assert label == "saturation" and "95% of the variance" in definition
