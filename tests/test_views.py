"""The pure view functions: each layer output's samples equal the documented samples, built in NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from delve_fast import views
from delve_fast.testing import samples_f64
from delve_fast.views import ViewOptions, as_channel_view, conv_view, linear_view, lstm_view


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _same_samples(batch: views.Batch, expected: np.ndarray) -> None:
    # Selections, transposes and reshapes copy values exactly: compare bit for bit.
    np.testing.assert_array_equal(samples_f64(batch.view), expected)


def test_as_channel_view_shapes_share_storage():
    x4 = _x(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    v = as_channel_view(x4)
    assert v.shape == (2, 3, 20) and v.data_ptr() == x4.data_ptr()
    assert as_channel_view(_x(7, 3)).shape == (7, 3, 1)
    assert as_channel_view(_x(3)).shape == (1, 3, 1)
    with pytest.raises(ValueError, match=r"rank 1 to 4.*\(1, 2, 3, 4, 5\)"):
        as_channel_view(_x(1, 2, 3, 4, 5))


def test_old_import_path_still_works():
    from delve_fast._reference import as_channel_view as old

    assert old is as_channel_view


def test_linear_rows_and_single_sample():
    y = _x(6, 4)
    b = linear_view(y)
    assert b.rows == 6
    _same_samples(b, y.numpy())
    one = linear_view(_x(4, seed=1))
    assert one.rows == 1
    _same_samples(one, _x(4, seed=1).numpy()[None, :])


def test_linear_tokens_every_token_is_a_sample():
    y = _x(3, 5, 4)  # (B, T, C)
    b = linear_view(y)
    assert b.rows == 3 and b.view.shape == (3, 4, 5)
    _same_samples(b, y.numpy().reshape(15, 4))
    deep = _x(2, 3, 5, 4)  # higher rank: every leading index is a sample
    _same_samples(linear_view(deep), deep.numpy().reshape(-1, 4))


def test_linear_room_keeps_the_first_rows():
    y = _x(10, 3)
    b = linear_view(y, room=4)
    assert b.rows == 4
    _same_samples(b, y.numpy()[:4])
    assert linear_view(y, room=50).rows == 10


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_channelwise(channels_last):
    y = _x(2, 3, 4, 5)
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
    b = conv_view(y)
    assert b.rows == 2 and b.view.data_ptr() == y.data_ptr()  # a view, no copy
    _same_samples(b, y.numpy().transpose(0, 2, 3, 1).reshape(-1, 3))  # one sample per position


def test_conv_pooling_methods():
    y = _x(4, 3, 5, 6)
    a = y.numpy().reshape(4, 3, 30)
    for method, expected in (("max", a.max(axis=2)), ("median", None), ("mean", a.mean(axis=2))):
        b = conv_view(y, ViewOptions(conv_method=method))
        assert b.rows == 4 and b.view.shape == (4, 3, 1)
        if method == "median":
            # torch's median of an even count is the lower middle value (delve uses torch's).
            expected = np.sort(a, axis=2)[:, :, 14]
        if method == "mean":
            # Two float64 sums of 30 terms: at most ~30 eps apart relative to the summed magnitudes.
            np.testing.assert_allclose(samples_f64(b.view), expected, rtol=0, atol=30 * 2.2e-16 * np.abs(a).max())
        else:
            _same_samples(b, expected)


def test_conv_flatten_orders():
    y = _x(3, 2, 3, 4)
    b = conv_view(y, ViewOptions(conv_method="flatten"))
    assert b.flatten_order == ("chw", (2, 3, 4))
    _same_samples(b, y.numpy().reshape(3, -1))  # delve's (C, H, W) feature order
    cl = y.contiguous(memory_format=torch.channels_last)
    b_cl = conv_view(cl, ViewOptions(conv_method="flatten"))
    assert b_cl.flatten_order == ("hwc", (2, 3, 4)) and b_cl.view.data_ptr() == cl.data_ptr()
    _same_samples(b_cl, y.numpy().transpose(0, 2, 3, 1).reshape(3, -1))
    # A later NCHW batch keeps the order the state started with.
    again = conv_view(y, ViewOptions(conv_method="flatten"), flatten_order=b_cl.flatten_order)
    _same_samples(again, y.numpy().transpose(0, 2, 3, 1).reshape(3, -1))


def test_covariance_in_chw_order_undoes_the_hwc_order():
    y = _x(50, 2, 2, 3)
    hwc = y.numpy().transpose(0, 2, 3, 1).reshape(50, -1)
    cov_hwc = torch.from_numpy(np.cov(hwc, rowvar=False, bias=True))
    back = views.covariance_in_chw_order(cov_hwc, ("hwc", (2, 2, 3)))
    np.testing.assert_array_equal(back.numpy(), np.cov(hwc, rowvar=False, bias=True)[np.ix_(_perm(), _perm())])
    # ... which is the covariance in (C, H, W) order, entry for entry (NumPy's two
    # products may block differently: ~K * eps = 1e-14 apart for K = 50 unit samples).
    chw = y.numpy().reshape(50, -1)
    np.testing.assert_allclose(back.numpy(), np.cov(chw, rowvar=False, bias=True), rtol=1e-13, atol=1e-13)
    assert views.covariance_in_chw_order(cov_hwc, ("chw", (2, 2, 3))) is cov_hwc


def _perm() -> np.ndarray:
    # Position of (c, h, w) in HWC order is h*W*C + w*C + c, for C=2, H=2, W=3.
    return np.array([h * 6 + w * 2 + c for c in range(2) for h in range(2) for w in range(3)])


def test_conv_unbatched_room_and_interpolation():
    y = _x(3, 4, 4)  # unbatched (C, H, W)
    b = conv_view(y)
    assert b.rows == 1 and b.view.shape == (1, 3, 16)
    big = _x(5, 2, 8, 8)
    sliced = conv_view(big, room=2)
    assert sliced.rows == 2 and sliced.view.shape == (2, 2, 64)
    opts = ViewOptions(interpolation_strategy="nearest", interpolation_downsampling=4)
    shrunk = conv_view(big, opts)
    _same_samples(shrunk, big.numpy()[:, :, ::2, ::2].transpose(0, 2, 3, 1).reshape(-1, 2))
    with pytest.raises(ValueError, match="'avg'"):
        conv_view(big, ViewOptions(conv_method="avg"))


@pytest.mark.parametrize("batch_first", [True, False])
def test_lstm_last_timestep_and_timestepwise(batch_first):
    bt = _x(3, 5, 4)  # (B, T, U)
    out = bt if batch_first else bt.transpose(0, 1).contiguous()
    last = lstm_view(out, batch_first, "last_timestep")
    assert last.rows == 3
    _same_samples(last, bt.numpy()[:, -1, :])
    every = lstm_view(out, batch_first, "timestepwise", room=2)
    assert every.rows == 2
    _same_samples(every, bt.numpy()[:2].reshape(-1, 4))


def test_lstm_unbatched_and_packed():
    seq = _x(5, 4)  # unbatched (T, U)
    _same_samples(lstm_view(seq, False, "last_timestep"), seq.numpy()[-1:])
    padded = _x(3, 4, 2)
    lengths = torch.tensor([4, 2, 3])
    packed = pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=False)
    last = lstm_view(packed, True, "last_timestep")
    assert last.rows == 3
    expected = np.stack([padded.numpy()[i, n - 1] for i, n in enumerate(lengths.tolist())])
    _same_samples(last, expected)
    every = lstm_view(packed, True, "timestepwise")
    valid = np.concatenate([padded.numpy()[i, :n] for i, n in enumerate(lengths.tolist())])
    got = samples_f64(every.view)
    assert got.shape == valid.shape  # every valid step once, no padding
    np.testing.assert_array_equal(got[np.lexsort(got.T)], valid[np.lexsort(valid.T)])


def test_module_adapters_pick_the_tensor_from_tuples():
    lstm = nn.LSTM(4, 3, batch_first=True).double()
    x = _x(2, 6, 4)
    output = lstm(x)
    b = views.VIEWS["lstm"](lstm, output, ViewOptions(), None, None)
    _same_samples(b, output[0].detach().numpy()[:, -1, :])
    assert views.VIEWS["linear"](nn.Identity(), ("not a tensor",), ViewOptions(), None, None) is None
    assert views.VIEWS["conv"](nn.Identity(), None, ViewOptions(), None, None) is None
    assert views.VIEWS["lstm"](lstm, [None], ViewOptions(), None, None) is None
