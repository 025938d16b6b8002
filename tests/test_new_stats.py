"""Rank and spectrum-shape statistics (erank, rankme, pr, srank, alpha), the spectrum and count stats.

Every value is checked against a NumPy float64 computation from ``np.cov`` (or,
for RankMe, the SVD of the uncentred samples), with full-rank and
rank-deficient layers.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from delve_fast import SaturationTracker, ops
from delve_fast import stats as S
from delve_fast.writers.base import SPECTRUM_TAG

EPS = np.finfo(np.float64).eps
NEW_STATS = ["erank", "rankme", "pr", "srank", "alpha"]


# ------------------------------------------------------------ NumPy oracles
def np_spectrum(x: np.ndarray) -> np.ndarray:
    """Descending, clamped eigenvalues of the population covariance of the rows of ``x``."""
    cov = np.cov(x, rowvar=False, bias=True)
    return np.clip(np.linalg.eigvalsh(np.atleast_2d(cov))[::-1], 0.0, None)


def np_erank(lam: np.ndarray) -> float:
    p = lam / lam.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def np_rankme(x: np.ndarray, eps: float = 1e-7) -> float:
    """RankMe as Garrido et al. define it: singular values of the uncentred (n, C) samples, padded to C."""
    sigma = np.linalg.svd(x, compute_uv=False)
    sigma = np.concatenate([sigma, np.zeros(x.shape[1] - sigma.shape[0])])
    p = sigma / sigma.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def np_alpha(lam: np.ndarray, rank: int, first: int = 10, last: int = 100) -> float:
    i = np.arange(first, min(last, rank) + 1)
    slope, _ = np.polyfit(np.log(i), np.log(lam[i - 1]), 1)
    return float(-slope)


def power_law_layer(c: int, alpha: float, seed: int) -> nn.Linear:
    """A Linear(c, c) whose output covariance on white input has eigenvalues ~ i^-alpha, and a nonzero mean."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(c, c, generator=gen, dtype=torch.float64))
    scale = torch.arange(1, c + 1, dtype=torch.float64) ** (-alpha / 2)
    layer = nn.Linear(c, c).double()
    with torch.no_grad():
        layer.weight.copy_(q * scale)  # W W^T = Q diag(i^-alpha) Q^T
        layer.bias.copy_(torch.randn(c, generator=gen, dtype=torch.float64))  # centred != uncentred
    return layer


def run_tracker(tmp_path, layer: nn.Module, batches, stats, save_to="csv", **kwargs):
    tracker = SaturationTracker(
        str(tmp_path / "run"), save_to=save_to, modules=layer, device="cpu", stats=stats, **kwargs
    )
    outputs = []
    with torch.no_grad():
        for x in batches:
            outputs.append(layer(x).double().numpy())
    values = tracker.add_saturations()
    tracker.close()
    return values, np.concatenate(outputs)


# ------------------------------------------------------ against np.cov / SVD
@pytest.mark.parametrize(
    ("n_rows", "c"),
    [
        pytest.param(600, 48, id="full-rank"),
        pytest.param(40, 64, id="rank-deficient"),  # rank n - 1 = 39 < C
    ],
)
def test_stats_match_numpy_from_np_cov(tmp_path, n_rows, c):
    layer = power_law_layer(c, alpha=1.3, seed=c)
    gen = torch.Generator().manual_seed(7)
    batches = [torch.randn(n_rows // 2, c, generator=gen, dtype=torch.float64) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", S.FewSamplesWarning)  # tested on its own below
        values, x = run_tracker(tmp_path, layer, batches, NEW_STATS + ["count"])
    name = "Module-0-Linear"
    lam = np_spectrum(x)
    rank = min(n_rows - 1, c)
    assert S.numerical_rank(lam) == rank  # the generic data have exactly this rank

    # The covariance agrees with np.cov to ~1e-12 relative (docs/precision.md), and each solver's
    # eigenvalues carry an absolute error of about C * eps * l_1. erank, pr and srank are sums of
    # C normalised eigenvalues (or of p ln p, which has derivative |ln p| + 1 < 40 above
    # p = 1e-17), so their relative error is at most ~C * 40 * (1e-12 + C * eps) < 3e-9 here.
    rtol = c * 40 * (1e-12 + c * EPS) * 10
    assert values[f"train-effective-rank_{name}"] == pytest.approx(np_erank(lam), rel=rtol)
    assert values[f"train-participation-ratio_{name}"] == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=rtol)
    assert values[f"train-stable-rank_{name}"] == pytest.approx(lam.sum() / lam[0], rel=rtol)

    # RankMe from eigenvalues of sum(x x^T): a zero singular value comes out as sqrt of a rounding
    # error, up to sqrt(C * eps) * s_1, so its p moves from eps=1e-7 by up to sqrt(C * eps); with
    # d(p ln p)/dp = ln p + 1 bounded by |ln 1e-7| + 1 there, the entropy (and the relative
    # error of its exponential) moves by at most C * sqrt(C * eps) * (|ln 1e-7| + 1).
    rankme_tol = c * math.sqrt(c * EPS) * (abs(math.log(1e-7)) + 1) + 1e-9
    assert values[f"train-rankme_{name}"] == pytest.approx(np_rankme(x), rel=rankme_tol)

    # alpha: each log l_i moves by at most (C * eps * l_1) / l_i + 1e-12; a least-squares slope
    # moves by at most max|d log l| * sum|x - mean| / sum (x - mean)^2 over the fitted log ranks.
    i = np.arange(10, min(100, rank) + 1)
    xs = np.log(i) - np.log(i).mean()
    delta = float(np.max(c * EPS * lam[0] / lam[i - 1] + 1e-12))
    alpha_tol = 10 * delta * np.abs(xs).sum() / (xs**2).sum()
    assert values[f"train-spectrum-alpha_{name}"] == pytest.approx(np_alpha(lam, rank), abs=alpha_tol)
    if n_rows > 10 * c:  # enough samples for the sample spectrum to keep the shape the layer was built with
        assert values[f"train-spectrum-alpha_{name}"] == pytest.approx(1.3, abs=0.3)

    assert values[f"train-sample-count_{name}"] == n_rows


def test_rankme_of_conv_layer_counts_every_position(tmp_path):
    """channelwise conv: every (n, h, w) position is a sample of C channels, uncentred."""
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 6, 3).double()
    x = torch.randn(4, 3, 7, 7, dtype=torch.float64)
    values, out = run_tracker(tmp_path, conv, [x], ["rankme", "erank", "count"])
    samples = out.transpose(0, 2, 3, 1).reshape(-1, 6)
    assert values["train-sample-count_Module-0-Conv2d"] == samples.shape[0] == 4 * 5 * 5
    rtol = 6 * math.sqrt(6 * EPS) * 18 + 1e-9  # as in the test above, for C = 6
    assert values["train-rankme_Module-0-Conv2d"] == pytest.approx(np_rankme(samples), rel=rtol)
    assert values["train-effective-rank_Module-0-Conv2d"] == pytest.approx(np_erank(np_spectrum(samples)), rel=1e-9)


# ------------------------------------------------------------ exact values
def test_known_spectra():
    flat = np.ones(8)
    assert S.effective_rank(flat) == pytest.approx(8.0, rel=1e-14)
    assert S.participation_ratio(flat) == pytest.approx(8.0, rel=1e-14)
    assert S.stable_rank(flat) == pytest.approx(8.0, rel=1e-14)
    spike = np.array([5.0, 0.0, 0.0, 0.0])
    assert S.effective_rank(spike) == 1.0
    assert S.participation_ratio(spike) == 1.0
    assert S.stable_rank(spike) == 1.0
    # Two equal directions of four: erank = pr = srank = 2.
    two = np.array([3.0, 3.0, 0.0, 0.0])
    assert (S.effective_rank(two), S.participation_ratio(two), S.stable_rank(two)) == pytest.approx((2, 2, 2))
    # RankMe of 4 equal singular values: p = 1/4 + eps each.
    p = 0.25 + 1e-7
    assert S.rankme(np.ones(4)) == pytest.approx(math.exp(-4 * p * math.log(p)), rel=1e-14)
    # Zero directions still count through the epsilon: a single nonzero value of C = 3.
    expected = math.exp(-((1 + 1e-7) * math.log(1 + 1e-7) + 2 * 1e-7 * math.log(1e-7)))
    assert S.rankme(np.array([2.0, 0.0, 0.0])) == pytest.approx(expected, rel=1e-14)
    assert S.rankme(np.array([2.0, 0.0, 0.0]), eps=0.0) == 1.0


def test_alpha_of_an_exact_power_law_and_the_fit_window():
    lam = np.arange(1, 201, dtype=np.float64) ** -1.7
    assert S.spectrum_alpha(lam) == pytest.approx(1.7, abs=1e-12)
    # Only ranks 10..100 count: bending the spectrum outside them changes nothing.
    bent = lam.copy()
    bent[:9] *= 50.0
    bent[100:] *= 1e-3
    assert S.spectrum_alpha(bent) == pytest.approx(1.7, abs=1e-12)
    assert S.spectrum_alpha(bent, first=1, last=100) != pytest.approx(1.7, abs=0.05)
    # Cut at the nonzero eigenvalues: 18 nonzero leave ranks 10..18 (9 < 10): NaN; 19 leave 10.
    for nonzero, finite in ((18, False), (19, True)):
        cut = lam.copy()
        cut[nonzero:] = 0.0
        assert math.isfinite(S.spectrum_alpha(cut)) is finite, nonzero
    assert math.isnan(S.spectrum_alpha(lam[:18]))
    assert S.spectrum_alpha(lam[:19]) == pytest.approx(1.7, abs=1e-12)
    assert S.spectrum_alpha(lam, first=2, last=5, min_ranks=3) == pytest.approx(1.7, abs=1e-12)


def test_alpha_rejects_bad_windows():
    with pytest.raises(ValueError, match="first=0"):
        S.spectrum_alpha(np.ones(5), first=0)
    with pytest.raises(ValueError, match="first=20, last=10"):
        S.spectrum_alpha(np.ones(5), first=20, last=10)
    with pytest.raises(ValueError, match="min_ranks"):
        S.spectrum_alpha(np.ones(5), min_ranks=1)


@pytest.mark.parametrize("scale", [1e-300, 1.0, 1e300])
def test_scale_invariant_without_overflow(scale):
    lam = np.linspace(3.0, 0.1, 30) ** 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn in (S.effective_rank, S.participation_ratio, S.stable_rank, S.rankme, S.spectrum_alpha):
            assert fn(lam * scale) == pytest.approx(fn(lam), rel=1e-12), fn.__name__


@pytest.mark.parametrize(
    "bad", [np.zeros(5), np.array([np.nan, 1.0, 0.5]), np.array([np.inf, 1.0]), np.zeros(0)], ids=str
)
def test_zero_or_non_finite_spectrum_is_nan_without_warnings(bad):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn in (S.effective_rank, S.participation_ratio, S.stable_rank, S.rankme, S.spectrum_alpha):
            assert math.isnan(fn(bad)), fn.__name__
        assert S.numerical_rank(bad) == 0


def test_tensor_input():
    lam = torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)
    assert S.effective_rank(lam) == pytest.approx(np_erank(lam.numpy()), rel=1e-14)


def test_all_zero_layer_gives_nan_not_a_warning(tmp_path):
    layer = nn.Linear(3, 4)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values, _ = run_tracker(tmp_path, layer, [torch.randn(20, 3)], NEW_STATS)
    assert {k.split("_")[0] for k in values} == {f"train-{S.STATMAP[k]}" for k in NEW_STATS}
    assert all(math.isnan(v) for v in values.values())
    table = pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0)
    assert table.isna().all().all()  # empty cells, read back as NaN


# ------------------------------------------------ the tracker and the writers
def test_rankme_adds_its_matrices_to_the_one_solve_only_when_requested(tmp_path, monkeypatch):
    calls = []
    real = ops.eigvalsh_desc

    def counting(mats, *args, **kwargs):
        calls.append(len(list(mats)) if not isinstance(mats, torch.Tensor) else 1)
        return real(mats, *args, **kwargs)

    monkeypatch.setattr(ops, "eigvalsh_desc", counting)
    net = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3))
    for stats, expected in ((["lsat", "erank", "pr", "srank", "alpha"], [4]), (["lsat", "rankme_eval"], [6])):
        calls.clear()
        t = SaturationTracker(str(tmp_path / "r"), save_to="csv", modules=net, device="cpu", stats=stats)
        net.train()
        net(torch.randn(30, 4))
        net.eval()
        net(torch.randn(30, 4))
        values = t.add_saturations()
        t.close()
        assert calls == expected, stats  # one batched solve; the eval layers' second moments join it
    assert sorted(k for k in values if "rankme" in k) == ["eval-rankme_0", "eval-rankme_1"]


def test_every_writer_gets_the_new_stats_and_only_npy_the_spectrum(tmp_path, capsys):
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 1))  # a width-1 layer: spectrum of length 1
    stats = NEW_STATS + ["spectrum", "count"]
    t = SaturationTracker(
        str(tmp_path / "run"), save_to=["csv", "npy", "print", "tb"], modules=net, device="cpu", stats=stats
    )
    for _ in range(2):
        net(torch.randn(40, 6))
        t.add_saturations()
    t.close()
    columns = pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0).columns
    expected = {f"train-{S.STATMAP[k]}_{layer}" for k in NEW_STATS + ["count"] for layer in ("0", "2")}
    assert set(columns) == expected
    assert not [c for c in columns if SPECTRUM_TAG in c]

    folder = tmp_path / "run" / f"_train-{SPECTRUM_TAG}_2"
    assert sorted(os.listdir(folder)) == [f"_train-{SPECTRUM_TAG}_2_epoch{e}.npy" for e in (0, 1)]
    assert np.load(folder / f"_train-{SPECTRUM_TAG}_2_epoch1.npy").shape == (1,)
    wide = np.load(tmp_path / "run" / f"_train-{SPECTRUM_TAG}_0" / f"_train-{SPECTRUM_TAG}_0_epoch1.npy")
    assert wide.shape == (12,) and np.all(np.diff(wide) <= 0) and wide.min() >= 0

    out = capsys.readouterr().out
    assert "train-sample-count_0 : 40" in out
    assert f"train-{SPECTRUM_TAG}_0 : <ndarray of shape (12,)>" in out

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert "train-rankme_0" in tags and "train-sample-count_2" in tags
    assert not [tag for tag in tags if SPECTRUM_TAG in tag]


def test_spectrum_matches_np_cov(tmp_path):
    layer = power_law_layer(16, alpha=1.0, seed=1)
    gen = torch.Generator().manual_seed(2)
    values, x = run_tracker(tmp_path, layer, [torch.randn(200, 16, generator=gen, dtype=torch.float64)], ["spectrum"])
    spectrum = values[f"train-{SPECTRUM_TAG}_Module-0-Linear"]
    lam = np_spectrum(x)
    # Backward-stable solvers on covariances equal to ~1e-12: eigenvalues agree within C * eps * l_1 + 1e-12 * l_1.
    np.testing.assert_allclose(spectrum, lam, rtol=0, atol=lam[0] * (16 * EPS * 10 + 1e-11))


def test_stat_suffixes_and_names():
    assert {k: S.STATMAP[k] for k in NEW_STATS + ["spectrum", "count"]} == {
        "erank": "effective-rank",
        "rankme": "rankme",
        "pr": "participation-ratio",
        "srank": "stable-rank",
        "alpha": "spectrum-alpha",
        "spectrum": SPECTRUM_TAG,
        "count": "sample-count",
    }
    assert S.ARRAY_STATS == {"covariance-matrix", SPECTRUM_TAG}


# ------------------------------------------------------------ sample count
def test_few_samples_warn_once_per_layer_and_mode(tmp_path):
    net = nn.Sequential(nn.Linear(3, 16), nn.Linear(16, 4))
    t = SaturationTracker(str(tmp_path / "r"), save_to="csv", modules=net, device="cpu", stats=["lsat"])
    with pytest.warns(S.FewSamplesWarning) as record:
        net(torch.randn(10, 3))  # 10 samples: layer 0 (16 wide) is capped, layer 1 (4 wide) is not
        t.add_saturations()
    assert len(record) == 1
    message = str(record[0].message)
    assert "'0' (train) saw 10 samples for 16 features" in message and "rank at most 9" in message
    assert record[0].filename == __file__  # points at the add_saturations() call
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net(torch.randn(10, 3))
        t.add_saturations()  # the same layer and mode again: no second warning
    net.eval()
    with pytest.warns(S.FewSamplesWarning, match=r"'0' \(eval\)"):
        net(torch.randn(16, 3))  # n == C is capped too: rank at most C - 1
        t.add_saturations()
    t.close()


def test_enough_samples_do_not_warn(tmp_path):
    net = nn.Linear(3, 16)
    t = SaturationTracker(str(tmp_path / "r"), save_to="csv", modules=net, device="cpu", stats=["lsat"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            net(torch.randn(10, 3))  # 20 samples over two batches > 16 features
        t.add_saturations()
    t.close()


def test_warn_few_samples_function():
    class State:
        def __init__(self, n, dim):
            self.n_samples, self.dim = n, dim

    warned: set = set()
    entries = [("train", "a", State(3, 5)), ("eval", "a", State(9, 5)), ("train", "b", State(5, 5))]
    with pytest.warns(S.FewSamplesWarning):
        assert S.warn_few_samples(entries, warned) == [("train", "a"), ("train", "b")]
    assert warned == {("train", "a"), ("train", "b")}
    assert S.warn_few_samples(entries, warned) == []
