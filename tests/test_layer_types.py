"""The layer types beyond delve's three, and custom types, against a NumPy float64 covariance.

Every expected matrix is ``np.cov(bias=True)`` of the samples the docs define
for that type, taken from the layer's own output (float32 values upcast
exactly to float64). The tracker accumulates in float64 too, so both sides
carry only float64 rounding: a relative error of about ``n * eps`` (n <= a
few thousand samples, eps = 2.2e-16), far below the ``1e-9`` used here.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from delve_fast import SaturationTracker
from delve_fast import layers as L
from delve_fast.testing import assert_cov_close

RTOL = 1e-9  # float64 accumulation on both sides; see the module docstring


def _tracker(tmp_path, modules, **kwargs) -> SaturationTracker:
    kwargs.setdefault("save_to", "csv")
    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("stats", ["cov"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'cov' without the npy writer warns; values are read directly here
        return SaturationTracker(str(tmp_path / "run"), modules=modules, **kwargs)


def _covs(tracker: SaturationTracker) -> dict[str, np.ndarray]:
    values, _ = tracker.compute_saturations()
    return {k: np.asarray(v) for k, v in values.items() if "covariance-matrix" in k}


def _np_cov(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return np.atleast_2d(np.cov(rows, rowvar=False, bias=True))


def _channelwise(y: np.ndarray) -> np.ndarray:
    """(N, C, *spatial) -> (N * positions, C): every position of every entry is a sample."""
    n, c = y.shape[:2]
    return np.moveaxis(y.reshape(n, c, -1), 1, 2).reshape(-1, c)


CONV_CASES = {
    "Conv1d": (lambda: nn.Conv1d(3, 4, 3), (6, 3, 11)),  # 9 positions
    "Conv3d": (lambda: nn.Conv3d(2, 3, 3), (4, 2, 5, 5, 5)),  # 27 positions
    "ConvTranspose1d": (lambda: nn.ConvTranspose1d(3, 4, 3), (6, 3, 7)),  # 9 positions
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(2, 3, 3), (5, 2, 3, 3)),  # 25 positions
    "ConvTranspose3d": (lambda: nn.ConvTranspose3d(2, 3, 2), (4, 2, 2, 2, 2)),  # 27 positions
}


@pytest.mark.parametrize("method", ["channelwise", "mean", "max", "median", "flatten"])
@pytest.mark.parametrize("kind", list(CONV_CASES))
def test_conv_types_against_numpy(tmp_path, kind, method):
    torch.manual_seed(0)
    make, shape = CONV_CASES[kind]
    conv = make()
    t = _tracker(tmp_path, conv, conv_method=method)
    x = torch.randn(*shape)
    y = conv(x).detach().double().numpy()
    n, c = y.shape[:2]
    positions = tuple(range(2, y.ndim))
    rows = {
        "channelwise": _channelwise(y),
        "mean": y.mean(axis=positions),
        "max": y.max(axis=positions),
        "median": np.median(y.reshape(n, c, -1), axis=2),  # odd position counts: an unambiguous median
        "flatten": y.reshape(n, -1),
    }[method]
    got = _covs(t)[f"train-covariance-matrix_Module-0-{kind}"]
    t.close()
    # 'mean' pools in the output's float32 (relative error <= positions * 2**-24 ~ 1.6e-6 for 27
    # positions, doubled in a product); the other methods pick values exactly.
    assert_cov_close(torch.from_numpy(got), _np_cov(rows), 1e-5 if method == "mean" else RTOL)


def test_unbatched_conv1d_is_one_entry(tmp_path):
    torch.manual_seed(1)
    conv = nn.Conv1d(2, 3, 3)
    t = _tracker(tmp_path, conv, max_samples=5)
    x = torch.randn(2, 9)  # unbatched (C, L)
    y = conv(x).detach().double().numpy()[None]
    assert t.seen_samples["train"]["Module-0-Conv1d"] == 1
    assert_cov_close(
        torch.from_numpy(_covs(t)["train-covariance-matrix_Module-0-Conv1d"]), _np_cov(_channelwise(y)), RTOL
    )
    t.close()


@pytest.mark.parametrize(("strategy", "mode"), [("bilinear", "linear"), ("nearest", "nearest")])
def test_conv1d_interpolation_uses_the_1d_mode(tmp_path, strategy, mode):
    torch.manual_seed(2)
    conv = nn.Conv1d(2, 3, 3)
    t = _tracker(tmp_path, conv, interpolation_strategy=strategy, interpolation_downsampling=8)
    x = torch.randn(4, 2, 40)
    y = conv(x).detach()
    small = F.interpolate(y, size=8, mode=mode).double().numpy()
    assert_cov_close(
        torch.from_numpy(_covs(t)["train-covariance-matrix_Module-0-Conv1d"]), _np_cov(_channelwise(small)), RTOL
    )
    t.close()


def test_include_conv_false_drops_every_conv_type(tmp_path):
    net = nn.ModuleDict(
        {"c1": nn.Conv1d(1, 1, 1), "t2": nn.ConvTranspose2d(1, 1, 1), "c3": nn.Conv3d(1, 1, 1), "fc": nn.Linear(1, 1)}
    )
    assert list(_tracker(tmp_path, net).layers) == ["c1", "t2", "c3", "fc"]
    assert list(_tracker(tmp_path, net, include_conv=False).layers) == ["fc"]


# ---------------------------------------------------------------- recurrent
@pytest.mark.parametrize("cls", [nn.GRU, nn.RNN])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("method", ["last_timestep", "timestepwise"])
def test_gru_and_rnn_like_lstm(tmp_path, cls, batch_first, method):
    torch.manual_seed(3)
    rnn = cls(3, 4, batch_first=batch_first)
    t = _tracker(tmp_path, rnn, timeseries_method=method)
    x = torch.randn(6, 5, 3) if batch_first else torch.randn(5, 6, 3)
    out = rnn(x)[0].detach().double()
    seq = out if batch_first else out.transpose(0, 1)  # (B, T, U)
    rows = seq[:, -1, :] if method == "last_timestep" else seq.reshape(-1, 4)
    assert t.seen_samples["train"][f"Module-0-{cls.__name__}"] == 6
    got = _covs(t)[f"train-covariance-matrix_Module-0-{cls.__name__}"]
    t.close()
    assert_cov_close(torch.from_numpy(got), _np_cov(rows.numpy()), RTOL)


@pytest.mark.parametrize("method", ["last_timestep", "timestepwise"])
def test_gru_packed_sequences_use_real_steps_only(tmp_path, method):
    torch.manual_seed(4)
    gru = nn.GRU(3, 4, batch_first=True)
    t = _tracker(tmp_path, gru, timeseries_method=method)
    lengths = torch.tensor([5, 3, 2, 4])
    x = torch.randn(4, 5, 3)
    gru(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    got = _covs(t)["train-covariance-matrix_Module-0-GRU"]
    t.close()
    # Oracle: each sequence alone, unpadded.
    per_seq = [gru(x[i : i + 1, : int(n)])[0].detach().double()[0] for i, n in enumerate(lengths)]
    rows = torch.stack([s[-1] for s in per_seq]) if method == "last_timestep" else torch.cat(per_seq)
    # A GRU run on one sequence and on the packed batch differ by float32 rounding only (~1e-7 relative).
    assert_cov_close(torch.from_numpy(got), _np_cov(rows.numpy()), 1e-5)


# ---------------------------------------------------------------- attention
@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_output_as_tokens(tmp_path, batch_first):
    torch.manual_seed(5)
    attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
    t = _tracker(tmp_path, attn)
    x = torch.randn(3, 7, 8) if batch_first else torch.randn(7, 3, 8)
    out, _ = attn(x, x, x)
    tokens = out.detach().double().reshape(-1, 8).numpy()  # every token of every sequence
    assert t.seen_samples["train"]["Module-0-MultiheadAttention"] == 3  # rows are sequences
    got = _covs(t)["train-covariance-matrix_Module-0-MultiheadAttention"]
    t.close()
    assert_cov_close(torch.from_numpy(got), _np_cov(tokens), RTOL)


def test_transformer_layer_tracks_attention_and_not_its_silent_out_proj(tmp_path):
    torch.manual_seed(6)
    enc = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), num_layers=2, enable_nested_tensor=False
    )
    t = _tracker(tmp_path, enc)
    assert list(t.layers) == [
        "layers-0-self_attn",
        "layers-0-linear1",
        "layers-0-linear2",
        "layers-1-self_attn",
        "layers-1-linear1",
        "layers-1-linear2",
    ]
    enc.eval()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():  # the fast path is off while hooks are attached, so eval passes are seen too
        enc(x)
    covs = _covs(t)
    assert {k.split("_", 1)[1] for k in covs} == set(t.layers)
    assert all(k.startswith("eval-") for k in covs)
    with torch.no_grad():
        sa = enc.layers[0].self_attn(x, x, x, need_weights=False)[0].double().reshape(-1, 8).numpy()
    assert_cov_close(torch.from_numpy(covs["eval-covariance-matrix_layers-0-self_attn"]), _np_cov(sa), RTOL)
    t.close()


def test_delve_layer_types_finds_what_delve_finds(tmp_path):
    enc = nn.TransformerEncoderLayer(8, 2, 16)
    # delve's walk reaches out_proj (a Linear whose forward never runs) and the two feed-forward layers.
    assert list(_tracker(tmp_path, enc, layer_types="delve").layers) == ["self_attn-out_proj", "linear1", "linear2"]


# ------------------------------------------------- counters on the new types
def test_log_interval_max_samples_and_modes_on_new_types(tmp_path):
    torch.manual_seed(7)
    net = nn.ModuleDict({"conv": nn.Conv1d(2, 3, 3), "attn": nn.MultiheadAttention(4, 1, batch_first=True)})
    t = _tracker(tmp_path, net, log_interval=2, max_samples=7)
    xs = [torch.randn(4, 2, 6) for _ in range(4)]
    ss = [torch.randn(4, 3, 4) for _ in range(4)]
    for x, s in zip(xs, ss, strict=True):
        net["conv"](x)
        net["attn"](s, s, s)
    net.eval()
    ev = torch.randn(3, 2, 6)
    net["conv"](ev)
    net["conv"](ev * 2)  # eval passes are counted on their own: this is eval's 2nd pass, recorded
    covs = _covs(t)
    t.close()
    with torch.no_grad():
        # passes 2 and 4 are recorded; the second recorded pass is cut to 7 - 4 = 3 rows
        conv_rows = _channelwise(torch.cat([net["conv"](xs[1]), net["conv"](xs[3])[:3]]).double().numpy())
        attn_rows = torch.cat([net["attn"](ss[1], ss[1], ss[1])[0], net["attn"](ss[3], ss[3], ss[3])[0][:3]])
        eval_rows = _channelwise(net["conv"](ev * 2).double().numpy())
    assert_cov_close(torch.from_numpy(covs["train-covariance-matrix_conv"]), _np_cov(conv_rows), RTOL)
    assert_cov_close(
        torch.from_numpy(covs["train-covariance-matrix_attn"]), _np_cov(attn_rows.double().reshape(-1, 4).numpy()), RTOL
    )
    assert_cov_close(torch.from_numpy(covs["eval-covariance-matrix_conv"]), _np_cov(eval_rows), RTOL)
    assert "eval-covariance-matrix_attn" not in covs


def test_layer_types_argument(tmp_path):
    net = nn.Sequential(nn.Conv1d(1, 2, 1), nn.GRU(2, 2), nn.Linear(2, 2))
    assert list(_tracker(tmp_path, net).layers) == ["0", "1", "2"]
    assert list(_tracker(tmp_path, net, layer_types="delve").layers) == ["2"]
    assert list(_tracker(tmp_path, net, layer_types=[nn.GRU]).layers) == ["1"]
    with pytest.raises(ValueError, match="layer_types='some'.*'all', 'delve'"):
        _tracker(tmp_path, net, layer_types="some")
    with pytest.raises(ValueError, match="Bilinear, which is not registered"):
        _tracker(tmp_path, net, layer_types=[nn.Bilinear])
    with pytest.raises(TypeError, match="nn.Module subclasses"):
        _tracker(tmp_path, net, layer_types=[int])


# ------------------------------------------------------------- custom types
class Mixer(nn.Module):
    """A block with children whose output is a (B, T, E) tuple element."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(4, 8)
        self.down = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.down(torch.relu(self.up(x)))
        return h + x, h


def _mixer_view(module: nn.Module, output):
    return output[0].transpose(1, 2)  # (B, T, E) -> (B, E, T): every token a sample


@pytest.fixture
def registry():
    saved = L.registered_layer_types()
    yield
    L._REGISTRY.clear()
    L._REGISTRY.update(saved)


def test_custom_block_is_tracked_whole_with_its_view(tmp_path, registry):
    torch.manual_seed(8)
    SaturationTracker.register_layer_type(Mixer, _mixer_view)
    net = nn.Sequential(nn.Linear(4, 4), Mixer())
    t = _tracker(tmp_path, net, max_samples=5)
    assert list(t.layers) == ["0", "1"]  # the block, not its children
    x = torch.randn(3, 6, 4)
    net(x)
    net(x + 1)
    with torch.no_grad():
        h = net[0](x)
        h2 = net[0](x + 1)
        rows = torch.cat([net[1](h)[0], net[1](h2)[0][:2]]).reshape(-1, 4).double().numpy()
    assert t.seen_samples["train"]["1"] == 5
    got = _covs(t)["train-covariance-matrix_1"]
    t.close()
    assert_cov_close(torch.from_numpy(got), _np_cov(rows), RTOL)


def test_custom_view_errors_are_named(tmp_path, registry):
    SaturationTracker.register_layer_type(Mixer, lambda m, out: out[0][None])  # 4-D
    net = Mixer()
    _tracker(tmp_path, net)
    with pytest.raises(ValueError, match=r"to_view for Mixer returned shape \(1, 2, 3, 4\)"):
        net(torch.randn(2, 3, 4))
    SaturationTracker.register_layer_type(Mixer, lambda m, out: "nope")
    net2 = Mixer()
    _tracker(tmp_path, net2)
    with pytest.raises(TypeError, match="must return a tensor"):
        net2(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="view name or a function"):
        SaturationTracker.register_layer_type(Mixer, 3)


def test_custom_view_returning_none_skips_and_unregister_restores(tmp_path, registry):
    SaturationTracker.register_layer_type(Mixer, lambda m, out: None)
    net = Mixer()
    t = _tracker(tmp_path, net)
    net(torch.randn(2, 3, 4))
    assert _covs(t) == {}
    t.close()
    L.unregister_layer_type(Mixer)
    assert list(_tracker(tmp_path, Mixer()).layers) == ["up", "down"]
    with pytest.raises(KeyError, match="Mixer"):
        L.unregister_layer_type(Mixer)


# --------------------------------------------------------- parity with delve
def test_delves_columns_and_values_are_unchanged_by_the_new_types(tmp_path):
    delve = pytest.importorskip("delve", reason="delve==0.1.50 is not installed (pip install delve_fast[delve])")
    import pandas as pd

    torch.manual_seed(9)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv1d(3, 4, 3)  # new type, before delve's layers
            self.conv = nn.Conv2d(4, 5, 1)
            self.fc = nn.Linear(5, 3)

        def forward(self, x):
            h = self.stem(x)  # (B, 4, L)
            h = self.conv(h.unsqueeze(-1)).mean(dim=(2, 3))
            return self.fc(h)

    net = Net()
    stats = ["lsat", "idim", "trc", "dtrc"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = delve.SaturationTracker(
            str(tmp_path / "d" / "run"), save_to="csv", modules=net, device="cpu", stats=stats
        )
        ours = SaturationTracker(str(tmp_path / "f" / "run"), save_to="csv", modules=net, device="cpu", stats=stats)
        x = torch.randn(32, 3, 9)
        net(x)
        theirs.add_saturations()
        ours.add_saturations()
        theirs.close()
        ours.close()
    a = pd.read_csv(tmp_path / "f" / "run.csv", sep=";", index_col=0)
    b = pd.read_csv(tmp_path / "d" / "run.csv", sep=";", index_col=0)
    new = [c for c in a.columns if c.endswith("_stem")]
    assert len(new) == 4  # the Conv1d is tracked in addition
    assert [c for c in a.columns if c not in new] == list(b.columns)  # delve's columns, in delve's order
    for col in b.columns:
        np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float), rtol=1e-9, err_msg=col)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_nested_tensors_contribute_their_real_tokens(tmp_path):
    torch.manual_seed(10)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), num_layers=1)
    t = _tracker(tmp_path, enc, max_samples=10)
    enc.eval()
    x = torch.randn(2, 5, 8)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    with torch.no_grad():  # eval + padding mask: the encoder hands its layers nested tensors
        enc(x, src_key_padding_mask=padding)
    counts = {k: v.n_samples for k, v in t.logs["eval-covariance-matrix"].items()}
    assert counts == dict.fromkeys(t.layers, 8)  # 5 + 3 real tokens, the padding left out
    assert t.seen_samples["eval"]["layers-0-linear1"] == 2  # rows are sequences
    lin = nn.Linear(4, 3)
    t2 = _tracker(tmp_path, lin)
    parts = [torch.randn(2, 4), torch.randn(5, 4)]
    lin(torch.nested.nested_tensor(parts))
    with torch.no_grad():
        rows = torch.cat([lin(p) for p in parts]).double().numpy()
    # nested and dense Linear kernels may round differently in float32 (~1e-7 relative)
    assert_cov_close(torch.from_numpy(_covs(t2)["train-covariance-matrix_Module-0-Linear"]), _np_cov(rows), 1e-5)
    t.close()
    t2.close()
