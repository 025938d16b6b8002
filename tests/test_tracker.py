"""SaturationTracker: arguments, layer discovery, hook policy, files, lifecycle."""

from __future__ import annotations

import inspect
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import delve_fast
from delve_fast import CheckLayerSat, SaturationTracker
from delve_fast.writers import AbstractWriter, CompositWriter, CSVWriter, NPYWriter


def _csv(tmp_path, name: str = "run") -> pd.DataFrame:
    return pd.read_csv(tmp_path / f"{name}.csv", sep=";", index_col=0)


def _cov_file(tmp_path, mode: str, layer: str, epoch: int = 0, run: str = "run") -> np.ndarray:
    name = f"_{mode}-covariance-matrix_{layer}"
    return np.load(tmp_path / run / name / f"{name}_epoch{epoch}.npy")


def _np_cov(rows: np.ndarray) -> np.ndarray:
    return np.cov(np.asarray(rows, dtype=np.float64), rowvar=False, bias=True)


def _tracker(tmp_path, modules, **kwargs) -> SaturationTracker:
    kwargs.setdefault("save_to", "csv")
    kwargs.setdefault("device", "cpu")
    return SaturationTracker(str(tmp_path / kwargs.pop("run", "run")), modules=modules, **kwargs)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3))
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


# --------------------------------------------------------------------- API
DOCUMENTED = [
    ("savefile", inspect.Parameter.empty),
    ("save_to", inspect.Parameter.empty),
    ("modules", inspect.Parameter.empty),
    ("layer_filter", None),  # identity function
    ("writer_args", None),
    ("log_interval", 1),
    ("max_samples", None),
    ("stats", ["lsat"]),
    ("layerwise_sat", True),
    ("reset_covariance", True),
    ("average_sat", False),
    ("ignore_layer_names", []),
    ("include_conv", True),
    ("conv_method", "channelwise"),
    ("timeseries_method", "last_timestep"),
    ("sat_threshold", 0.99),
    ("nosave", False),
    ("verbose", False),
    ("device", "cuda:0"),
    ("initial_epoch", 0),
    ("interpolation_strategy", None),
    ("interpolation_downsampling", 32),
]


def test_documented_signature_and_defaults():
    params = list(inspect.signature(SaturationTracker.__init__).parameters.values())[1:]
    positional = [p for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert [p.name for p in positional] == [name for name, _ in DOCUMENTED]
    for p, (name, default) in zip(positional, DOCUMENTED, strict=True):
        if name == "layer_filter":
            assert p.default({"a": 1}) == {"a": 1}
        else:
            assert p.default == default, name
    # Everything new is keyword-only.
    assert all(p.kind == p.KEYWORD_ONLY for p in params[len(DOCUMENTED) :])
    assert {"backend", "max_saved_samples"} <= {p.name for p in params[len(DOCUMENTED) :]}


def test_public_names():
    for name in (
        "SaturationTracker",
        "CheckLayerSat",
        "TorchCovarianceMatrix",
        "CovarianceState",
        "backend_info",
        "writers",
    ):
        assert hasattr(delve_fast, name)
    assert CheckLayerSat is SaturationTracker
    assert isinstance(delve_fast.__version__, str)


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"conv_method": "avg"}, ValueError, ["'avg'", "channelwise", "median"]),
        ({"timeseries_method": "all"}, ValueError, ["'all'", "timestepwise", "last_timestep"]),
        ({"stats": ["lsat", "sat"]}, ValueError, ["'sat'", "idim", "embed"]),
        ({"stats": ["lsat_test"]}, ValueError, ["'lsat_test'", "_eval"]),
        ({"save_to": "excel"}, ValueError, ["'excel'", "'csv'", "'plotcsv'"]),
        ({"sat_threshold": 1.5}, ValueError, ["1.5", "(0, 1]"]),
        ({"sat_threshold": 0.0}, ValueError, ["0.0", "(0, 1]"]),
        ({"sat_threshold": "0.9"}, TypeError, ["'0.9'"]),
        ({"log_interval": 0}, ValueError, ["log_interval", "0"]),
        ({"max_samples": 0}, ValueError, ["max_samples"]),
        ({"interpolation_strategy": "lanczos"}, ValueError, ["'lanczos'", "bilinear"]),
        ({"interpolation_downsampling": 0}, ValueError, ["interpolation_downsampling"]),
        ({"initial_epoch": -1}, ValueError, ["initial_epoch"]),
        ({"backend": "gpu"}, ValueError, ["'gpu'", "torch"]),
        ({"idim_rule": "max"}, ValueError, ["'max'", "gap"]),
        ({"writer_args": [1]}, TypeError, ["writer_args"]),
        ({"device": "banana"}, ValueError, ["banana"]),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, exc, words):
    with pytest.raises(exc) as info:
        _tracker(tmp_path, nn.Linear(2, 2), **kwargs)
    for word in words:
        assert word in str(info.value)


def test_bad_modules_argument(tmp_path):
    with pytest.raises(TypeError, match="nn.Module"):
        _tracker(tmp_path, 42)
    with pytest.raises(TypeError, match=r"modules\[1\]"):
        _tracker(tmp_path, [nn.Linear(2, 2), "x"])


# ------------------------------------------------------------ layer names
def test_layer_names_follow_module_keys(tmp_path):
    t = _tracker(tmp_path, Net())
    assert list(t.layers) == ["features-0", "features-2", "head"]
    t.close()
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    t = _tracker(tmp_path, seq, run="seq")
    assert list(t.layers) == ["0", "2"]
    t.close()


def test_list_single_module_include_conv_filter_and_ignore(tmp_path):
    net = Net()
    t = _tracker(tmp_path, [net.features[0], net.head])
    assert list(t.layers) == ["Module-0-Conv2d", "Module-1-Linear"]
    t.close()
    t = _tracker(tmp_path, net.head, run="single")
    assert list(t.layers) == ["Module-0-Linear"]
    t.close()
    t = _tracker(tmp_path, net, include_conv=False, run="noconv")
    assert list(t.layers) == ["head"]
    t.close()
    t = _tracker(tmp_path, net, ignore_layer_names=["features-2"], run="ignore")
    assert list(t.layers) == ["features-0", "head"]
    t.close()
    t = _tracker(tmp_path, net, layer_filter=lambda d: {k: v for k, v in d.items() if k != "head"}, run="f")
    assert list(t.layers) == ["features-0", "features-2"]
    t.close()


def test_list_of_containers_with_clashing_names_keeps_both(tmp_path):
    a, b = nn.Sequential(nn.Linear(2, 3)), nn.Sequential(nn.Linear(3, 2))
    with pytest.warns(RuntimeWarning, match="Module-1-0"):
        t = _tracker(tmp_path, [a, b])
    assert t.layers == {"0": a[0], "Module-1-0": b[0]}
    t.close()


def test_shared_module_is_tracked_once(tmp_path):
    shared = nn.Linear(3, 3)
    net = nn.ModuleDict({"a": shared, "b": shared})
    t = _tracker(tmp_path, net)
    assert list(t.layers) == ["a"]
    t.close()


def test_no_supported_layer_warns(tmp_path):
    with pytest.warns(RuntimeWarning, match="no layer"):
        _tracker(tmp_path, nn.Sequential(nn.ReLU())).close()


# ---------------------------------------------------------- accumulation
def test_modes_and_accumulation_over_batches(tmp_path):
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    t = _tracker(tmp_path, layer, save_to=["csv", "npy"], stats=["lsat", "cov"])
    train_x = [torch.randn(6, 4) for _ in range(3)]
    for x in train_x:
        layer(x)
    layer.eval()
    eval_x = torch.randn(9, 4)
    layer(eval_x)
    t.add_saturations()
    t.close()
    with torch.no_grad():
        train_rows = torch.cat([layer(x) for x in train_x]).numpy()
        eval_rows = layer(eval_x).numpy()
    np.testing.assert_allclose(
        _cov_file(tmp_path, "train", "Module-0-Linear"), _np_cov(train_rows), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(
        _cov_file(tmp_path, "eval", "Module-0-Linear"), _np_cov(eval_rows), rtol=1e-9, atol=1e-12
    )
    assert set(_csv(tmp_path).columns) == {"train-saturation_Module-0-Linear", "eval-saturation_Module-0-Linear"}


@pytest.mark.parametrize("reset", [True, False])
def test_reset_covariance(tmp_path, reset):
    torch.manual_seed(1)
    layer = nn.Linear(3, 3)
    t = _tracker(tmp_path, layer, save_to="npy", stats=["cov"], reset_covariance=reset)
    xs = [torch.randn(8, 3), torch.randn(8, 3) * 5]
    for x in xs:
        layer(x)
        t.add_saturations()
    t.close()
    with torch.no_grad():
        rows = [layer(x).numpy() for x in xs]
    expected = _np_cov(rows[1]) if reset else _np_cov(np.concatenate(rows))
    np.testing.assert_allclose(
        _cov_file(tmp_path, "train", "Module-0-Linear", epoch=1), expected, rtol=1e-9, atol=1e-12
    )


def test_log_interval_records_every_nth_batch_per_mode(tmp_path):
    torch.manual_seed(2)
    layer = nn.Linear(3, 3)
    t = _tracker(tmp_path, layer, save_to="npy", stats=["cov"], log_interval=2)
    xs = [torch.randn(5, 3) for _ in range(5)]
    for i, x in enumerate(xs):
        layer(x)
        if i == 0:  # an eval pass in between does not shift the train count
            layer.eval()
            layer(torch.randn(5, 3))
            layer.train()
    t.add_saturations()
    t.close()
    with torch.no_grad():
        expected = _np_cov(torch.cat([layer(xs[1]), layer(xs[3])]).numpy())
    np.testing.assert_allclose(_cov_file(tmp_path, "train", "Module-0-Linear"), expected, rtol=1e-9, atol=1e-12)
    assert not (tmp_path / "run" / "_eval-covariance-matrix_Module-0-Linear").exists()


def test_max_samples_slices_batch_and_resets_each_epoch(tmp_path):
    torch.manual_seed(3)
    layer = nn.Linear(3, 3)
    t = _tracker(tmp_path, layer, save_to="npy", stats=["cov"], max_samples=10)
    xs = [torch.randn(8, 3) for _ in range(3)]
    for x in xs:
        layer(x)
    assert t.seen_samples["train"]["Module-0-Linear"] == 10
    t.add_saturations()
    layer(xs[2])
    t.add_saturations()
    t.close()
    with torch.no_grad():
        first = torch.cat([layer(xs[0]), layer(xs[1])[:2]]).numpy()
        second = layer(xs[2]).numpy()
    np.testing.assert_allclose(_cov_file(tmp_path, "train", "Module-0-Linear"), _np_cov(first), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        _cov_file(tmp_path, "train", "Module-0-Linear", epoch=1), _np_cov(second), rtol=1e-9, atol=1e-12
    )


def test_linear_on_tokens_uses_every_token(tmp_path):
    torch.manual_seed(4)
    layer = nn.Linear(4, 5)
    t = _tracker(tmp_path, layer, save_to="npy", stats=["cov"])
    x = torch.randn(3, 7, 4)
    layer(x)
    t.add_saturations()
    t.close()
    with torch.no_grad():
        tokens = layer(x).reshape(-1, 5).numpy()
    np.testing.assert_allclose(_cov_file(tmp_path, "train", "Module-0-Linear"), _np_cov(tokens), rtol=1e-9, atol=1e-12)


def test_lstm_batch_first_timestepwise(tmp_path):
    torch.manual_seed(5)
    lstm = nn.LSTM(3, 4, batch_first=True)
    t = _tracker(tmp_path, lstm, save_to="npy", stats=["cov"], timeseries_method="timestepwise")
    x = torch.randn(6, 5, 3)
    out = lstm(x)[0].detach()
    t.add_saturations()
    t.close()
    np.testing.assert_allclose(
        _cov_file(tmp_path, "train", "Module-0-LSTM"), _np_cov(out.reshape(-1, 4).numpy()), rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("method", ["mean", "max", "median", "flatten", "channelwise"])
def test_conv_methods_against_numpy(tmp_path, method):
    torch.manual_seed(6)
    conv = nn.Conv2d(2, 3, 3)
    t = _tracker(tmp_path, conv, save_to="npy", stats=["cov"], conv_method=method)
    x = torch.randn(12, 2, 5, 5)  # 3x3 maps: 9 values, so the median is unambiguous
    y = conv(x).detach().double().numpy()
    t.add_saturations()
    t.close()
    rows = {
        "mean": y.mean(axis=(2, 3)),
        "max": y.max(axis=(2, 3)),
        "median": np.median(y.reshape(12, 3, -1), axis=2),
        "flatten": y.reshape(12, -1),
        "channelwise": y.transpose(0, 2, 3, 1).reshape(-1, 3),
    }[method]
    np.testing.assert_allclose(_cov_file(tmp_path, "train", "Module-0-Conv2d"), _np_cov(rows), rtol=1e-6, atol=1e-9)


def test_channels_last_equals_contiguous(tmp_path):
    torch.manual_seed(7)
    conv = nn.Conv2d(3, 4, 3)
    x = torch.randn(5, 3, 7, 7)
    results = []
    for run, fmt in (("a", torch.contiguous_format), ("b", torch.channels_last)):
        conv = conv.to(memory_format=fmt)
        t = _tracker(tmp_path, conv, save_to="npy", stats=["cov"], run=run)
        conv(x.to(memory_format=fmt))
        t.add_saturations()
        t.close()
        results.append(_cov_file(tmp_path, "train", "Module-0-Conv2d", run=run))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-9, atol=1e-12)


def test_interpolation_of_large_maps(tmp_path):
    torch.manual_seed(8)
    conv = nn.Conv2d(2, 3, 1)
    t = _tracker(
        tmp_path, conv, save_to="npy", stats=["cov"], interpolation_strategy="nearest", interpolation_downsampling=4
    )
    x = torch.randn(2, 2, 8, 8)
    y = conv(x).detach()
    t.add_saturations()
    t.close()
    small = F.interpolate(y, size=4, mode="nearest").double()
    assert small.shape[-1] == 4
    expected = _np_cov(small.permute(0, 2, 3, 1).reshape(-1, 3).numpy())
    np.testing.assert_allclose(_cov_file(tmp_path, "train", "Module-0-Conv2d"), expected, rtol=1e-9, atol=1e-12)


def test_backends_agree(tmp_path):
    torch.manual_seed(9)
    net = Net()
    x = torch.randn(4, 3, 8, 8)
    out = {}
    for backend in ("torch", "auto"):
        t = _tracker(tmp_path, net, stats=["lsat", "idim", "trc", "dtrc"], backend=backend, run=backend)
        net(x)
        out[backend] = t.add_saturations()
        t.close()
    assert out["torch"].keys() == out["auto"].keys()
    for key, value in out["torch"].items():
        assert out["auto"][key] == pytest.approx(value, rel=1e-10), key


# -------------------------------------------------------------- the hook
def test_hook_never_syncs_or_copies_to_host(tmp_path, monkeypatch):
    torch.manual_seed(10)
    net = nn.ModuleDict({"conv": nn.Conv2d(3, 4, 3), "lin": nn.Linear(4, 2), "rnn": nn.LSTM(4, 3, batch_first=True)})
    t = _tracker(tmp_path, net, stats=["lsat", "embed"], max_samples=100)
    x = torch.randn(2, 3, 6, 6)
    seq = torch.randn(2, 5, 4)

    def forbidden(*args, **kwargs):
        raise AssertionError("host transfer in the forward hook")

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__"):
            m.setattr(torch.Tensor, name, forbidden)
        h = net["conv"](x)
        net["lin"](h.mean(dim=(2, 3)))
        net["rnn"](seq)
    values = t.add_saturations()
    t.close()
    assert {"train-saturation_conv", "train-saturation_lin", "train-saturation_rnn"} <= set(values)


def test_no_attributes_written_and_hooks_removed(tmp_path):
    net = Net()
    before = {name: set(vars(m)) for name, m in net.named_modules()}
    with _tracker(tmp_path, net, stats=["lsat", "idim"]) as t:
        assert all(len(m._forward_hooks) == 1 for m in t.layers.values())
        net(torch.randn(2, 3, 8, 8))
        t.add_saturations()
    assert {name: set(vars(m)) for name, m in net.named_modules()} == before
    assert all(len(m._forward_hooks) == 0 for m in net.modules())
    t.close()  # a second close is harmless


def test_stop_and_resume(tmp_path):
    torch.manual_seed(11)
    layer = nn.Linear(3, 3)
    t = _tracker(tmp_path, layer, save_to="npy", stats=["cov"])
    assert t.is_recording()
    t.stop()
    assert not t.is_recording()
    layer(torch.randn(50, 3) * 100)
    t.resume()
    x = torch.randn(6, 3)
    layer(x)
    t.add_saturations()
    t.close()
    with torch.no_grad():
        expected = _np_cov(layer(x).numpy())
    np.testing.assert_allclose(_cov_file(tmp_path, "train", "Module-0-Linear"), expected, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ output
def test_csv_rows_columns_and_ragged_scalars(tmp_path):
    torch.manual_seed(12)
    net = Net()
    t = _tracker(tmp_path, net, stats="lsat", average_sat=True)
    for epoch in range(3):
        net.train()
        net(torch.randn(4, 3, 8, 8))
        if epoch != 1:
            net.eval()
            net(torch.randn(4, 3, 8, 8))
            t.add_scalar("accuracy", 0.5 + epoch)
        t.add_scalar("loss", 1.0 / (epoch + 1))
        t.add_saturations()
    t.close()
    df = _csv(tmp_path)
    assert list(df.index) == [0, 1, 2]
    layers = ["features-0", "features-2", "head"]
    expected = {f"{m}-saturation_{name}" for m in ("train", "eval") for name in layers}
    expected |= {"accuracy", "loss", "average-train-sat", "average-eval-sat"}
    assert set(df.columns) == expected
    assert np.isnan(df.loc[1, "accuracy"]) and df.loc[2, "accuracy"] == 2.5
    assert np.isnan(df.loc[1, "eval-saturation_head"]) and not np.isnan(df.loc[2, "eval-saturation_head"])
    assert list(df["loss"]) == [1.0, 0.5, pytest.approx(1 / 3)]
    sats = df.loc[0, [f"train-saturation_{n}" for n in layers]]
    assert df.loc[0, "average-train-sat"] == pytest.approx(sats.mean())
    sat_values = df.filter(like="-saturation_").to_numpy().ravel()
    sat_values = sat_values[~np.isnan(sat_values)]
    assert sat_values.size == 6 * 3 - 3 and ((sat_values >= 0) & (sat_values <= 1)).all()


def test_csv_is_beside_the_savefile_folder(tmp_path):
    t = _tracker(tmp_path, nn.Linear(2, 2), run="deep/exp")
    t.close()
    assert (tmp_path / "deep" / "exp").is_dir()


def test_mode_suffixed_stats(tmp_path):
    torch.manual_seed(13)
    layer = nn.Linear(3, 2)
    t = _tracker(tmp_path, layer, stats=["lsat", "idim_eval", "trc_train"])
    layer(torch.randn(5, 3))
    layer.eval()
    layer(torch.randn(5, 3))
    t.add_saturations()
    t.close()
    assert set(_csv(tmp_path).columns) == {
        "train-saturation_Module-0-Linear",
        "eval-saturation_Module-0-Linear",
        "eval-intrinsic-dimensionality_Module-0-Linear",
        "train-covariance-trace_Module-0-Linear",
    }


def test_add_saturations_without_data_does_not_crash(tmp_path):
    t = _tracker(tmp_path, nn.Linear(2, 2), stats=["lsat", "idim", "det"])
    assert t.add_saturations() == {}
    t.close()


def test_nosave_writes_nothing(tmp_path):
    layer = nn.Linear(3, 2)
    t = _tracker(tmp_path, layer, save_to=["csv", "npy", "plot"], nosave=True, stats=["lsat", "cov"])
    layer(torch.randn(4, 3))
    t.add_scalar("loss", 1.0)
    values = t.add_saturations()
    t.close()
    assert "train-saturation_Module-0-Linear" in values
    assert os.listdir(tmp_path) == []


def test_resume_from_initial_epoch_keeps_rows(tmp_path):
    torch.manual_seed(14)
    layer = nn.Linear(3, 3)
    t = _tracker(tmp_path, layer, save_to=["csv", "npy"], stats=["lsat"])
    for _ in range(2):
        layer(torch.randn(5, 3))
        t.add_scalar("loss", 1.0)
        t.add_saturations()
    t.close()
    first = _csv(tmp_path)
    t = _tracker(tmp_path, layer, save_to=["csv", "npy"], stats=["lsat"], initial_epoch=2)
    layer(torch.randn(5, 3))
    t.add_scalar("loss", 2.0)
    t.add_saturations()
    t.close()
    df = _csv(tmp_path)
    assert list(df.index) == [0, 1, 2]
    pd.testing.assert_frame_equal(df.iloc[:2], first)
    assert df.loc[2, "loss"] == 2.0
    assert (tmp_path / "run" / "loss" / "loss_epoch2.npy").exists()


def test_writer_pass_through(tmp_path):
    class Recorder(AbstractWriter):
        def __init__(self):
            self.calls = []

        def resume_from_saved_state(self, initial_epoch):
            self.calls.append(("resume", initial_epoch))

        def add_scalar(self, name, value, **kwargs):
            self.calls.append((name, value))

        def add_scalars(self, prefix, value_dict, **kwargs):
            self.calls.append(("scalars", prefix, sorted(value_dict), kwargs.get("global_step")))

        def save(self):
            self.calls.append(("save",))

        def close(self):
            self.calls.append(("close",))

        def custom(self):
            return "reached"

    rec = Recorder()
    layer = nn.Linear(2, 2)
    t = _tracker(tmp_path, layer, save_to=rec, initial_epoch=3)
    t.add_scalar("loss", 0.25)
    assert t.custom() == "reached"
    with pytest.raises(AttributeError):
        t.no_such_thing  # noqa: B018
    layer(torch.randn(3, 2))
    t.add_saturations()
    t.close()
    assert rec.calls == [
        ("resume", 3),
        ("loss", 0.25),
        ("scalars", "", ["train-saturation_Module-0-Linear"], 3),
        ("save",),
        ("close",),
    ]


def test_list_of_writer_keys_makes_composite(tmp_path):
    t = _tracker(tmp_path, nn.Linear(2, 2), save_to=["csv", NPYWriter(str(tmp_path / "other"))])
    assert isinstance(t.writer, CompositWriter)
    assert [type(w) for w in t.writer.writers] == [CSVWriter, NPYWriter]
    t.close()


def test_cov_without_npy_warns(tmp_path):
    with pytest.warns(RuntimeWarning, match="npy"):
        _tracker(tmp_path, nn.Linear(2, 2), stats=["cov"]).close()


def test_verbose_prints(tmp_path, capsys):
    layer = nn.Linear(3, 2)
    t = _tracker(tmp_path, layer, verbose=True)
    layer(torch.randn(4, 3))
    t.add_saturations()
    t.close()
    assert "train-saturation_Module-0-Linear" in capsys.readouterr().out


def test_embed_plot_and_bounded_store(tmp_path):
    torch.manual_seed(15)
    layer = nn.Linear(4, 3)
    t = _tracker(tmp_path, layer, save_to="plot", stats=["lsat", "embed"], max_saved_samples=7)
    for _ in range(3):
        layer(torch.randn(5, 4))
    assert t.logs["train-covariance-matrix"]["Module-0-Linear"].saved_samples.shape == (7, 3)
    t.add_saturations()
    t.close()
    assert (tmp_path / "run_embed_train_epoch_0.png").exists()
    assert (tmp_path / "run_lsat_train_epoch_0.png").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_default_device_falls_back_to_cpu(tmp_path):
    layer = nn.Linear(3, 2)
    with pytest.warns(RuntimeWarning, match="CUDA") as record:
        t = SaturationTracker(str(tmp_path / "run"), save_to="csv", modules=layer)
    # The user never asked for CUDA: the warning says the device is delve's default.
    message = str(record[0].message)
    assert "'cuda:0' (delve's default)" in message and "device='cpu'" in message
    assert "was requested" not in message
    assert record[0].filename == __file__  # points at the caller's line
    assert t.device == torch.device("cpu")
    layer(torch.randn(4, 3))
    t.add_saturations()
    t.close()
    assert "train-saturation_Module-0-Linear" in _csv(tmp_path).columns


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda:0", "cuda", torch.device("cuda:0")])
def test_explicit_cuda_device_is_called_requested(tmp_path, device):
    with pytest.warns(RuntimeWarning, match="was requested but CUDA is not available") as record:
        t = _tracker(tmp_path, nn.Linear(3, 2), device=device)
    assert "delve's default" not in str(record[0].message)
    assert t.device == torch.device("cpu")
    t.close()
    with pytest.warns(RuntimeWarning, match="delve's default"):
        delve_fast.TorchCovarianceMatrix()
    with pytest.warns(RuntimeWarning, match="was requested"):
        delve_fast.TorchCovarianceMatrix(device="cuda:0")


def test_det_column_is_not_lost_to_underflow(tmp_path):
    torch.manual_seed(16)
    layer = nn.Linear(40, 40)
    t = _tracker(tmp_path, layer, stats=["det", "logdet"])
    with torch.no_grad():
        layer(torch.randn(400, 40) * 1e-5)  # every eigenvalue ~1e-10: det ~1e-400
    with pytest.warns(RuntimeWarning, match="underflows"):
        values = t.add_saturations()
    t.close()
    logdet = values["train-covariance-log-determinant_Module-0-Linear"]
    assert logdet < -745  # genuinely below float64
    assert values["train-covariance-determinant_Module-0-Linear"] == 0.0


def test_context_manager_closes_writer(tmp_path):
    with _tracker(tmp_path, nn.Linear(2, 2), save_to="tb") as t:
        pass
    assert t._closed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t.close()


def test_flatten_channels_last_matches_numpy_order(tmp_path):
    torch.manual_seed(17)
    conv = nn.Conv2d(2, 3, 2).to(memory_format=torch.channels_last)
    t = _tracker(tmp_path, conv, save_to="npy", stats=["cov", "lsat"], conv_method="flatten")
    xs = [torch.randn(6, 2, 4, 4).to(memory_format=torch.channels_last) for _ in range(2)]
    ys = [conv(x).detach() for x in xs]
    assert ys[0].is_contiguous(memory_format=torch.channels_last) and not ys[0].is_contiguous()
    conv(xs[0].contiguous())  # a later NCHW batch joins the same state
    t.add_saturations()
    t.close()
    rows = torch.cat(ys + [ys[0]]).double().reshape(18, -1).numpy()  # delve's (C, H, W) feature order
    np.testing.assert_allclose(_cov_file(tmp_path, "train", "Module-0-Conv2d"), _np_cov(rows), rtol=1e-6, atol=1e-9)


def test_hooks_under_torch_compile_match_eager(tmp_path):
    """A compiled model feeds the tracker the same samples as the eager one, without recompiling per batch."""

    def run(compile_model: bool, name: str) -> pd.DataFrame:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 12))
        tracker = SaturationTracker(
            str(tmp_path / name), save_to="csv", modules=model, stats=["lsat", "trc"], device="cpu"
        )
        fn = torch.compile(model, backend="eager") if compile_model else model
        gen = torch.Generator().manual_seed(1)
        for _ in range(2):
            for _ in range(3):
                fn(torch.randn(5, 3, 8, 8, generator=gen))
            tracker.add_saturations()
        tracker.close()
        return pd.read_csv(str(tmp_path / name) + ".csv", sep=";", index_col=0)

    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = run(True, "compiled")
    eager = run(False, "eager")
    assert list(compiled.columns) == list(eager.columns)
    assert len(compiled.columns) == 4
    np.testing.assert_allclose(compiled.to_numpy(), eager.to_numpy(), rtol=1e-9)
    assert not [w for w in caught if "recompil" in str(w.message).lower()]
