"""CovarianceState: update, Chan merge, covariance, reset and state_dict, against NumPy float64."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch

import delve_fast
from delve_fast import CovarianceState
from delve_fast.testing import assert_cov_close, np_mean_cov, samples_f64
from delve_fast.views import as_channel_view

# Every path here is float64 end to end. A sum of K float64 terms carries a
# relative error of at most about K * eps (eps = 2.2e-16) of the summed
# magnitudes; with K <= 2000 samples that is 4.4e-13, so 1e-11 leaves a
# margin of 20 for the op's tiling and the merge's few extra roundings.
RTOL = 1e-11


def _rows(n: int, c: int, seed: int, offset: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=g, dtype=torch.float64)
    return (torch.randn(n, c, generator=g, dtype=torch.float64) @ mix) * scale + offset


def test_is_the_public_tool():
    assert delve_fast.CovarianceState is CovarianceState
    assert "CovarianceState" in delve_fast.__all__


@pytest.mark.parametrize("shape", ["rows", "ncs", "sample"])
def test_update_matches_numpy(shape):
    x = _rows(300, 5, seed=0, offset=2.0)
    state = CovarianceState()
    if shape == "rows":
        batches = [x[:120], x[120:]]
    elif shape == "ncs":  # (N, C, S): 30 entries of 10 samples each
        batches = [x.reshape(30, 10, 5).transpose(1, 2)]
    else:
        batches = list(x)
    for b in batches:
        state.update(b)
    mean, cov = np_mean_cov(x.numpy())
    assert state.count == 300 and state.n_features == 5
    np.testing.assert_allclose(state.mean.numpy(), mean, rtol=RTOL, atol=RTOL * np.abs(mean).max())
    assert_cov_close(state.covariance(), cov, rtol=RTOL)
    # Uncentred second moment: (1/n) sum x x^T, as delve's fix(center=False).
    second = x.numpy().T @ x.numpy() / 300
    assert_cov_close(state.covariance(center=False), second, rtol=RTOL)


def test_update_of_low_precision_and_integer_batches():
    x16 = _rows(64, 4, seed=1).to(torch.bfloat16)
    state = CovarianceState()
    state.update(x16)
    _, cov = np_mean_cov(x16.to(torch.float64).numpy())  # the upcast is exact
    assert state.m2.dtype == torch.float64
    assert_cov_close(state.covariance(), cov, rtol=RTOL)
    ints = CovarianceState()
    ints.update(torch.arange(12).reshape(4, 3))
    assert_cov_close(ints.covariance(), np_mean_cov(np.arange(12.0).reshape(4, 3))[1], rtol=RTOL)


def test_conv_map_through_as_channel_view():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 5, 6, generator=g).contiguous(memory_format=torch.channels_last)
    state = CovarianceState()
    state.update(as_channel_view(x))
    _, cov = np_mean_cov(samples_f64(as_channel_view(x)))
    assert state.count == 3 * 5 * 6
    assert_cov_close(state.covariance(), cov, rtol=RTOL)


@pytest.mark.parametrize("offsets", [(0.0, 0.0), (-1e3, 1e3), (1e6, 1e6 + 5.0)])
def test_merge_equals_one_state_over_all_samples(offsets):
    a_rows = _rows(700, 6, seed=3, offset=offsets[0])
    b_rows = _rows(450, 6, seed=4, offset=offsets[1], scale=0.1)
    a, b = CovarianceState(), CovarianceState()
    a.update(a_rows[:300])
    a.update(a_rows[300:])
    b.update(b_rows)
    assert a.merge(b) is a
    everything = torch.cat([a_rows, b_rows])
    mean, _ = np_mean_cov(everything.numpy())
    # NumPy's two-pass covariance of the data shifted by an exactly
    # representable offset (Sterbenz: x - offset is exact here) has no
    # cancellation, so it is the reference even at mean 1e6.
    shift = offsets[0]
    _, cov = np_mean_cov(everything.numpy() - shift)
    assert a.count == 1150 and b.count == 450
    np.testing.assert_allclose(a.mean.numpy(), mean, rtol=RTOL, atol=RTOL * np.abs(mean).max())
    # Relative to the covariance itself (not to mean**2): the merge keeps its digits.
    # At mean 1e6 each running mean is off by up to ~eps * 1e6 = 2.2e-10, which
    # enters the merge through delta (~5) as a relative error of ~1e-10 in the
    # delta delta^T term: hence 1e-9 there.
    assert_cov_close(a.covariance(), cov, rtol=1e-9 if abs(shift) >= 1e6 else RTOL)
    assert torch.equal(a.m2, a.m2.T)  # bit-symmetric after the merge


def test_merge_order_does_not_matter():
    parts = [_rows(n, 4, seed=10 + i, offset=3.0 * i) for i, n in enumerate((50, 1, 200, 17))]
    results = []
    for order in itertools.permutations(range(4)):
        states = []
        for i in order:
            s = CovarianceState()
            s.update(parts[i])
            states.append(s)
        total = states[0]
        for s in states[1:]:
            total.merge(s)
        results.append(total)
    _, cov = np_mean_cov(torch.cat(parts).numpy())
    for total in results:
        assert total.count == 268
        assert_cov_close(total.covariance(), cov, rtol=RTOL)
    # A tree of merges ((0+1)+(2+3)) agrees as well.
    s = [CovarianceState() for _ in parts]
    for st, p in zip(s, parts, strict=True):
        st.update(p)
    tree = s[0].merge(s[1]).merge(s[2].merge(s[3]))
    assert_cov_close(tree.covariance(), cov, rtol=RTOL)


def test_empty_merges():
    x = _rows(40, 3, seed=5, offset=1.0)
    full = CovarianceState()
    full.update(x)
    before = full.state_dict()
    full.merge(CovarianceState())  # an empty state changes nothing
    assert full.count == 40
    assert torch.equal(full.mean, before["mean"]) and torch.equal(full.m2, before["m2"])
    empty = CovarianceState()
    empty.merge(full)  # merging into an empty state copies
    assert empty.count == 40 and empty.n_features == 3
    assert torch.equal(empty.m2, full.m2) and torch.equal(empty.mean, full.mean)
    empty.update(x)  # ... and the copy is independent of the original
    assert full.count == 40 and not torch.equal(empty.m2, full.m2)
    both_empty = CovarianceState().merge(CovarianceState())
    assert both_empty.count == 0 and both_empty.n_features is None


def test_merge_with_itself_doubles_the_samples():
    x = _rows(30, 3, seed=6, offset=-2.0)
    s = CovarianceState()
    s.update(x)
    s.merge(s)
    _, cov = np_mean_cov(torch.cat([x, x]).numpy())
    assert s.count == 60
    assert_cov_close(s.covariance(), cov, rtol=RTOL)


def test_state_dict_round_trip_through_torch_save():
    x = _rows(90, 4, seed=7, offset=5.0)
    s = CovarianceState()
    s.update(x)
    saved = s.state_dict()
    s.update(x[:10])  # the saved dict is a copy, not a live view
    assert saved["count"] == 90
    buf = io.BytesIO()
    torch.save(saved, buf)
    buf.seek(0)
    restored = CovarianceState()
    restored.load_state_dict(torch.load(buf, weights_only=True))
    assert restored.count == 90
    ref = CovarianceState()
    ref.update(x)
    assert torch.equal(restored.m2, ref.m2) and torch.equal(restored.mean, ref.mean)
    # An empty state round-trips too.
    blank = CovarianceState(3)
    blank.load_state_dict(CovarianceState().state_dict())
    assert blank.count == 0 and blank.n_features == 3


def test_fixed_width_reset_and_errors():
    s = CovarianceState(4)
    assert s.n_features == 4 and s.count == 0
    m2 = s.m2
    s.update(_rows(10, 4, seed=8))
    s.reset()
    assert s.count == 0 and s.m2 is m2 and not m2.any()  # fixed width keeps its zeroed tensors
    with pytest.raises(ValueError, match="batch has 3 features but the state has 4"):
        s.update(torch.randn(5, 3))
    free = CovarianceState()
    free.update(torch.randn(5, 3))
    free.reset()
    assert free.n_features is None  # a learned width is forgotten
    free.update(torch.randn(5, 2))
    assert free.n_features == 2


def test_errors_name_the_problem():
    s = CovarianceState()
    with pytest.raises(RuntimeError, match="no samples"):
        s.covariance()
    with pytest.raises(ValueError, match=r"\(C,\), \(N, C\) or \(N, C, S\).*\(2, 3, 4, 5\)"):
        s.update(torch.randn(2, 3, 4, 5))
    with pytest.raises(TypeError, match="torch.Tensor"):
        s.update(np.zeros((2, 3)))
    a, b = CovarianceState(), CovarianceState()
    a.update(torch.randn(4, 3))
    b.update(torch.randn(4, 5))
    with pytest.raises(ValueError, match="5 features but the state has 3"):
        a.merge(b)
    with pytest.raises(TypeError, match="CovarianceState"):
        a.merge(a.state_dict())
    with pytest.raises(ValueError, match="n_features"):
        CovarianceState(0)
    with pytest.raises(ValueError, match="precision='half'"):
        CovarianceState(precision="half")
    with pytest.raises(ValueError, match="banana"):
        CovarianceState(device="banana")


def test_load_state_dict_validates():
    good = CovarianceState()
    good.update(torch.randn(6, 3))
    sd = good.state_dict()
    with pytest.raises(KeyError, match="m2"):
        CovarianceState().load_state_dict({"count": 1, "mean": sd["mean"]})
    with pytest.raises(ValueError, match=r"mean \(3,\), m2 \(2, 2\)"):
        CovarianceState().load_state_dict({**sd, "m2": torch.zeros(2, 2, dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"3 features .* this state has 4"):
        CovarianceState(4).load_state_dict(sd)
    with pytest.raises(ValueError, match="count"):
        CovarianceState().load_state_dict({**sd, "count": -1})
    with pytest.raises(ValueError, match="count=5"):
        CovarianceState().load_state_dict({"count": 5, "mean": None, "m2": None})


def test_repr_and_to():
    s = CovarianceState(2)
    assert repr(s) == "CovarianceState(n_features=2, count=0, device=cpu)"
    s.update(torch.ones(3, 2))
    assert "count=3" in repr(s)
    assert s.to("cpu") is s and s.m2.device.type == "cpu"
