"""Finding and naming layers, and the registry of layer types, without hooks."""

from __future__ import annotations

import pytest
from torch import nn

from delve_fast import layers as L


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 2)


class MyLinear(nn.Linear):
    pass


def test_default_registry_starts_with_delves_set_then_the_new_types():
    kinds = {cls: spec.kind for cls, spec in L.registered_layer_types().items()}
    assert list(kinds)[:3] == [nn.Linear, nn.Conv2d, nn.LSTM]  # delve's three, in delve's order
    assert kinds == {
        nn.Linear: "linear",
        nn.Conv2d: "conv",
        nn.LSTM: "lstm",
        nn.Conv1d: "conv",
        nn.Conv3d: "conv",
        nn.ConvTranspose1d: "conv",
        nn.ConvTranspose2d: "conv",
        nn.ConvTranspose3d: "conv",
        nn.GRU: "lstm",
        nn.RNN: "lstm",
        nn.MultiheadAttention: "attention",
    }
    assert L.supported_types_text().startswith("nn.Linear, nn.Conv2d, nn.LSTM, nn.Conv1d")


@pytest.mark.parametrize(
    ("module", "kind", "delve_kind"),
    [
        (nn.Linear(2, 2), "linear", "linear"),
        (MyLinear(2, 2), "linear", "linear"),  # subclasses are tracked
        (nn.Conv2d(1, 1, 1), "conv", "conv"),
        (nn.LSTM(2, 2), "lstm", "lstm"),
        (nn.Conv1d(1, 1, 1), "conv", None),  # not in delve's set
        (nn.ConvTranspose2d(1, 1, 1), "conv", None),
        (nn.GRU(2, 2), "lstm", None),
        (nn.MultiheadAttention(4, 2), "attention", None),
        (nn.ReLU(), None, None),
    ],
)
def test_layer_kind(module, kind, delve_kind):
    assert L.layer_kind(module) == kind
    assert L.layer_kind(module, types=L.resolve_layer_types("delve")) == delve_kind


def test_include_conv_false_drops_conv_only():
    assert L.layer_kind(nn.Conv2d(1, 1, 1), include_conv=False) is None
    assert L.layer_kind(nn.Linear(1, 1), include_conv=False) == "linear"
    assert list(L.find_layers(Block(), include_conv=False)) == ["fc"]


def test_names_join_module_keys():
    net = nn.Sequential(Block(), nn.Sequential(nn.Linear(2, 2), nn.LSTM(2, 2)))
    assert list(L.find_layers(net)) == ["0-conv", "0-fc", "1-0", "1-1"]


def test_single_layers_and_lists():
    lin = nn.Linear(2, 2)
    assert list(L.find_layers(lin)) == ["Module-0-Linear"]
    found = L.find_layers([nn.Conv2d(1, 1, 1), Block()])
    assert list(found) == ["Module-0-Conv2d", "conv", "fc"]


def test_clashing_names_in_a_list_are_renamed_with_a_warning():
    with pytest.warns(RuntimeWarning) as record:
        found = L.find_layers([Block(), Block()])
    assert [str(w.message) for w in record] == [
        f"layer name {n!r} from modules[1] is already used; it is tracked as 'Module-1-{n}'" for n in ("conv", "fc")
    ]
    assert list(found) == ["conv", "fc", "Module-1-conv", "Module-1-fc"]


def test_a_shared_module_is_found_once():
    shared = nn.Linear(2, 2)
    net = nn.Sequential(shared, nn.ReLU(), shared)
    assert list(L.find_layers(net)) == ["0"]


def test_bad_modules_are_named():
    with pytest.raises(TypeError, match="nn.Module or a list"):
        L.find_layers(42)
    with pytest.raises(TypeError, match=r"modules\[1\] is a str"):
        L.find_layers([nn.Linear(1, 1), "x"])


def test_select_layers_filters_and_ignores():
    found = L.find_layers(Block())
    kept = L.select_layers(found, lambda d: {k: v for k, v in d.items() if k != "conv"}, [])
    assert list(kept) == ["fc"]
    assert list(L.select_layers(found, lambda d: d, ["fc"])) == ["conv"]
    # A filter may add modules back, but only tracked types survive.
    assert list(L.select_layers(found, lambda d: {**d, "relu": nn.ReLU()}, [])) == ["conv", "fc"]
    with pytest.raises(TypeError, match="layer_filter must return a dict"):
        L.select_layers(found, lambda d: list(d), [])


def test_registering_a_type_is_one_entry():
    assert L.layer_kind(nn.Bilinear(1, 1, 1)) is None
    saved = dict(L._REGISTRY)
    try:
        L.register_layer_type(nn.Bilinear, "linear")
        assert L.layer_kind(nn.Bilinear(1, 1, 1)) == "linear"
        assert list(L.find_layers(nn.Sequential(nn.Bilinear(1, 1, 1)))) == ["0"]
    finally:
        L._REGISTRY.clear()
        L._REGISTRY.update(saved)
    with pytest.raises(ValueError, match="'gru'.*'linear'"):
        L.register_layer_type(nn.GRU, "gru")
    with pytest.raises(TypeError, match="subclass of nn.Module"):
        L.register_layer_type(int, "linear")
