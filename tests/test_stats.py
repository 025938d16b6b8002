"""Statistics computed from eigenvalues: idim/lsat rule, det without underflow, embed."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from delve_fast import stats as S


@pytest.mark.parametrize(
    ("eigenvalues", "threshold", "expected"),
    [
        ([4.0, 3.0, 2.0, 1.0], 0.99, 3),  # shares .4 .7 .9 1.0
        ([4.0, 3.0, 2.0, 1.0], 0.5, 1),  # only .4 is below .5
        ([4.0, 3.0, 2.0, 1.0], 0.35, 0),  # nothing below: delve 0.1.50 reports 0
        ([98.0, 1.0, 1.0], 0.99, 1),  # .99 is not below .99
        ([1.0, 1.0, 1.0, 1.0], 1.0, 3),  # shares .25 .5 .75 1.0
        ([5.0], 0.99, 0),
        ([0.0, 0.0, 0.0], 0.99, 0),  # zero variance: delve's NaN shares count nothing
    ],
)
def test_intrinsic_dimensionality_rule_of_delve(eigenvalues, threshold, expected):
    assert S.intrinsic_dimensionality(np.array(eigenvalues), threshold) == expected
    assert S.saturation(np.array(eigenvalues), threshold) == expected / len(eigenvalues)


@pytest.mark.parametrize(
    ("eigenvalues", "expected"),
    [
        ([4.0, 3.0, 2.0, 1.0], 4),  # last share .9 is short of .99 by .09 > .02: one more
        ([60.0, 38.5, 1.5], 2),  # shares .6 .985: short by .005, nothing added
        ([99.5, 0.5], 1),  # nothing below: at least 1, no extra direction
        ([1.0, 1.0], 2),  # .5 short by .49: add one, capped at 2
        ([0.0, 0.0], 1),
    ],
)
def test_gap_rule_of_pca_layers(eigenvalues, expected):
    assert S.intrinsic_dimensionality(np.array(eigenvalues), 0.99, rule="gap") == expected
    assert S.saturation(np.array(eigenvalues), 0.99, rule="gap") == expected / len(eigenvalues)
    with pytest.raises(ValueError, match="'nope'"):
        S.intrinsic_dimensionality(np.array(eigenvalues), rule="nope")


def test_idim_accepts_tensors_and_rejects_bad_shapes():
    assert S.intrinsic_dimensionality(torch.tensor([3.0, 1.0], dtype=torch.float64), 0.8) == 1
    with pytest.raises(ValueError):
        S.intrinsic_dimensionality(np.ones((2, 2)))
    with pytest.raises(ValueError):
        S.intrinsic_dimensionality(np.array([]))


@pytest.mark.delve
def test_idim_matches_delve_metric_on_random_spectra():
    metrics = pytest.importorskip("delve.metrics", reason="delve==0.1.50 is not installed")
    rng = np.random.default_rng(0)
    for trial in range(150):
        dim = int(rng.integers(2, 24))
        # Spectra from flat to steeply decaying, some rank deficient.
        lam = np.sort(rng.gamma(0.3 + trial % 5, size=dim))[::-1] ** (1 + trial % 4)
        lam[int(rng.integers(1, dim + 1)) :] *= trial % 2
        q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
        cov = torch.from_numpy((q * lam) @ q.T)
        thresh = float(rng.choice([0.9, 0.95, 0.99, 0.999]))
        ours = S.intrinsic_dimensionality(np.sort(np.clip(np.linalg.eigvalsh(cov.numpy()), 0, None))[::-1], thresh)
        assert ours == metrics.compute_intrinsic_dimensionality(cov.clone(), thresh), (trial, lam, thresh)


def test_traces():
    cov = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    assert S.covariance_trace(cov) == 3.0
    assert S.covariance_trace(cov.numpy()) == 3.0
    lam = np.linalg.eigvalsh(cov.numpy())
    assert S.diagonal_trace(lam) == pytest.approx(3.0, rel=1e-14)


def test_determinant_matches_numpy_when_representable():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 6))
    cov = a @ a.T + np.eye(6)
    lam = np.linalg.eigvalsh(cov)
    assert S.determinant(lam) == pytest.approx(np.linalg.det(cov), rel=1e-10)
    assert S.log_determinant(lam) == pytest.approx(np.linalg.slogdet(cov)[1], rel=1e-12)


def test_determinant_does_not_underflow_in_partial_products():
    lam = np.array([1e250, 1e-200, 1e-200])
    # Multiplying the two small ones first underflows to 0; the true value is 1e-150.
    assert lam[1] * lam[2] * lam[0] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert S.determinant(lam) == pytest.approx(1e-150, rel=1e-10)


def test_determinant_underflow_and_overflow_are_not_silent():
    tiny = np.full(4, 1e-200)
    with pytest.warns(RuntimeWarning, match="underflows"):
        assert S.determinant(tiny, name="train layer") == 0.0
    assert S.log_determinant(tiny) == pytest.approx(4 * -200 * math.log(10), rel=1e-12)
    with pytest.warns(RuntimeWarning, match="overflows"):
        assert math.isinf(S.determinant(np.full(3, 1e200)))


def test_singular_determinant_is_exact_zero_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert S.determinant(np.array([3.0, 2.0, 0.0])) == 0.0
    assert S.log_determinant(np.array([3.0, 0.0])) == -math.inf


def test_embed_uses_top_two_eigenvectors():
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    n = 400
    data = 7.0 + rng.normal(size=(n, 1)) * 10 * q[:, 0] + rng.normal(size=(n, 1)) * 3 * q[:, 1]
    data += rng.normal(size=(n, 5)) * 1e-3
    x = torch.from_numpy(data)
    cov = np.cov(data, rowvar=False, bias=True)
    _, vecs = torch.linalg.eigh(torch.from_numpy(cov))
    coords = S.embed(x, x.mean(0), vecs.flip(-1))
    assert coords.shape == (n, 2)
    # Independent oracle: NumPy's top-2 eigenvectors of the sample covariance (signs are arbitrary).
    w, v = np.linalg.eigh(cov)
    top = v[:, np.argsort(w)[::-1][:2]]
    centred = data - data.mean(0)
    np.testing.assert_allclose(np.abs(coords), np.abs(centred @ top), rtol=1e-8, atol=1e-8)
    # Most of the spread lies along the planted directions.
    assert np.std(coords[:, 0]) == pytest.approx(10, rel=0.15)
    assert np.std(coords[:, 1]) == pytest.approx(3, rel=0.15)
    # A single feature leaves the second coordinate at zero.
    one = S.embed(x[:, :1], x[:, :1].mean(0), torch.ones(1, 1, dtype=torch.float64))
    assert np.all(one[:, 1] == 0)


def test_matrix_helpers_named_like_delve():
    cov = torch.diag(torch.tensor([5.0, 4.0, 0.1], dtype=torch.float64))
    # shares .549 .989 1.0
    assert S.compute_intrinsic_dimensionality(cov, 0.99) == 2
    assert S.compute_intrinsic_dimensionality(cov, 0.9) == 1
    assert S.compute_saturation(cov, 0.99) == 2 / 3


# ----------------------------------------------------------------- the table
def test_table_names_are_delves():
    delves = {
        k: v for k, v in S.STATMAP.items() if k in ("idim", "lsat", "cov", "det", "trc", "dtrc", "embed", "logdet")
    }
    assert delves == {
        "idim": "intrinsic-dimensionality",
        "lsat": "saturation",
        "cov": "covariance-matrix",
        "det": "covariance-determinant",
        "trc": "covariance-trace",
        "dtrc": "diagonal-trace",
        "embed": "embedded-sample",
        "logdet": "covariance-log-determinant",
    }
    # The rank statistics, spectrum and count are checked in test_new_stats.py; no name is used twice.
    assert len(set(S.STATMAP.values())) == len(S.STATMAP)
    assert set(S.SUPPORTED_STATS) == set(S.STATS)


def _context(cov: np.ndarray, **kwargs) -> S.StatContext:
    lam = np.sort(np.linalg.eigvalsh(cov))[::-1].clip(0)
    return S.StatContext(lam, torch.from_numpy(cov), float(np.trace(cov)), None, **kwargs)


def test_compute_names_columns_and_evaluates_each_entry():
    cov = np.diag([4.0, 1.0, 0.25])
    values, samples = S.compute(_context(cov, threshold=0.9, mode="eval", layer="fc"), ["lsat", "idim", "trc", "det"])
    assert samples == {}
    # shares 4/5.25 = 0.76, 5/5.25 = 0.95: one share below 0.9
    assert values == {
        "eval-saturation_fc": pytest.approx(1 / 3),
        "eval-intrinsic-dimensionality_fc": 1,
        "eval-covariance-trace_fc": 5.25,
        "eval-covariance-determinant_fc": pytest.approx(1.0, rel=1e-12),
    }


def test_cov_entry_uses_the_delve_order_hook():
    cov = np.arange(4.0).reshape(2, 2)
    cov = cov + cov.T + 5 * np.eye(2)
    flipped = _context(cov, to_delve_order=lambda c: c.flip(0).flip(1))
    values, _ = S.compute(flipped, ["cov"])
    np.testing.assert_array_equal(values["train-covariance-matrix_"], cov[::-1, ::-1])


def test_a_new_stat_is_one_table_entry(tmp_path, monkeypatch):
    from torch import nn

    from delve_fast import SaturationTracker

    monkeypatch.setitem(S.STATS, "maxeig", S.Stat("max-eigenvalue", lambda c: float(c.eigenvalues[0])))
    layer = nn.Linear(4, 4)
    t = SaturationTracker(str(tmp_path / "run"), save_to="csv", modules=layer, stats=["maxeig"], device="cpu")
    with torch.no_grad():
        out = layer(torch.randn(200, 4, generator=torch.Generator().manual_seed(0)))
    values = t.add_saturations()
    t.close()
    rows = out.double().numpy()
    top = np.linalg.eigvalsh(np.cov(rows, rowvar=False, bias=True))[-1]
    # float64 covariance of 200 rows and an eigen-solve: ~1e-13 relative, 1e-10 is safe.
    assert values["train-max-eigenvalue_Module-0-Linear"] == pytest.approx(top, rel=1e-10)
