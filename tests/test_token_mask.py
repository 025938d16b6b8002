"""Token masks: padded positions are left out, with no host synchronisation in the hook.

The reference for a padded batch with its mask is the same tokens without
padding: a :class:`CovarianceState` fed only the real tokens, and
``np.cov`` of them in float64. The masked path sums in float64 with other
groupings than the compiled op, so the two agree to float64 rounding (about
``n * eps`` relative for n <= a few hundred tokens); ``1e-9`` is far above that.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from delve_fast import CovarianceState, SaturationTracker
from delve_fast.masking import WeightedMoments, check_token_mask, mask_weight
from delve_fast.testing import assert_cov_close, devices

RTOL = 1e-9  # float64 on both sides; see the module docstring


def _tracker(tmp_path, modules, **kwargs) -> SaturationTracker:
    kwargs.setdefault("save_to", "csv")
    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("stats", ["cov"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SaturationTracker(str(tmp_path / "run"), modules=modules, **kwargs)


def _state(tracker: SaturationTracker, name: str, mode: str = "train") -> CovarianceState:
    tracker._recorder.flush()
    return tracker.logs[f"{mode}-covariance-matrix"][name].state


def _padded(gen: torch.Generator, lengths: list[int], t: int, e: int, pad: float = 0.0):
    x = torch.randn(len(lengths), t, e, generator=gen)
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        x[i, n:] = pad
    return x, mask


def _real_tokens(y: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    return torch.cat([y[i, :n] for i, n in enumerate(lengths)])


@pytest.mark.parametrize("pad", [0.0, 1e3, float("nan"), float("inf")])
def test_padded_batch_with_mask_equals_the_unpadded_tokens(tmp_path, pad):
    gen = torch.Generator().manual_seed(0)
    layer = nn.Linear(4, 5)
    t = _tracker(tmp_path, layer)
    lengths = [6, 2, 4]
    x, mask = _padded(gen, lengths, 6, 4, pad)
    with t.token_mask(mask):
        y = layer(x).detach()
    real = _real_tokens(y, lengths)
    expected = CovarianceState()
    expected.update(real.unsqueeze(-1))
    got = _state(t, "Module-0-Linear")
    assert got.count == expected.count == sum(lengths)
    torch.testing.assert_close(got.mean, expected.mean, rtol=RTOL, atol=RTOL * float(real.abs().max()))
    assert_cov_close(got.covariance(), expected.covariance().numpy(), RTOL)
    assert_cov_close(got.covariance(), np.cov(real.double().numpy(), rowvar=False, bias=True), RTOL)
    assert torch.equal(got.m2, got.m2.T)  # exactly symmetric, as the op keeps it
    t.close()


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_output_mask(tmp_path, batch_first):
    gen = torch.Generator().manual_seed(1)
    attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
    t = _tracker(tmp_path, attn)
    lengths = [5, 3]
    x, mask = _padded(gen, lengths, 5, 8)
    q = x if batch_first else x.transpose(0, 1)
    with t.token_mask(mask.bool()):
        out = attn(q, q, q, key_padding_mask=~mask.bool())[0].detach()
    out = out if batch_first else out.transpose(0, 1)
    real = _real_tokens(out, lengths).double().numpy()
    assert_cov_close(_state(t, "Module-0-MultiheadAttention").covariance(), np.cov(real, rowvar=False, bias=True), RTOL)
    t.close()


def test_mask_applies_only_to_per_token_outputs(tmp_path):
    gen = torch.Generator().manual_seed(2)
    net = nn.ModuleDict({"tok": nn.Linear(4, 3), "head": nn.Linear(3, 2)})
    t = _tracker(tmp_path, net)
    lengths = [4, 1, 3]
    x, mask = _padded(gen, lengths, 4, 4)
    with t.token_mask(mask):
        h = net["tok"](x)
        pooled = h.mean(dim=1)  # (B, C): one sample per sequence, not per token
        out = net["head"](pooled).detach()
    assert _state(t, "tok").count == sum(lengths)
    head = _state(t, "head")
    assert head.count == 3
    assert_cov_close(head.covariance(), np.cov(out.double().numpy(), rowvar=False, bias=True), RTOL)
    t.close()


def test_masked_and_unmasked_batches_and_epochs_merge(tmp_path):
    gen = torch.Generator().manual_seed(3)
    layer = nn.Linear(3, 3)
    t = _tracker(tmp_path, layer, max_samples=5)
    lengths = [3, 2, 1]
    x, mask = _padded(gen, lengths, 3, 3)
    plain = torch.randn(2, 3, 3, generator=gen)
    layer(plain)  # 2 rows, all 6 tokens
    with t.token_mask(mask):
        y = layer(x).detach()  # room for 3 more rows: all of them, 6 real tokens
        layer(x)  # max_samples reached: not recorded
    with torch.no_grad():
        rows = torch.cat([layer(plain).reshape(-1, 3), _real_tokens(y, lengths)]).double().numpy()
    values = t.add_saturations()
    assert_cov_close(
        torch.from_numpy(np.asarray(values["train-covariance-matrix_Module-0-Linear"])),
        np.cov(rows, rowvar=False, bias=True),
        RTOL,
    )
    # The next epoch starts afresh, masked moments included.
    with t.token_mask(mask[:1]):
        y1 = layer(x[:1]).detach()
    values = t.add_saturations()
    assert_cov_close(
        torch.from_numpy(np.asarray(values["train-covariance-matrix_Module-0-Linear"])),
        np.cov(y1[0, :3].double().numpy(), rowvar=False, bias=True),
        RTOL,
    )
    t.close()


def test_max_samples_cuts_the_mask_with_the_batch(tmp_path):
    gen = torch.Generator().manual_seed(4)
    layer = nn.Linear(3, 2)
    t = _tracker(tmp_path, layer, max_samples=2)
    lengths = [2, 3, 1]
    x, mask = _padded(gen, lengths, 3, 3)
    with t.token_mask(mask):
        y = layer(x).detach()
    assert _state(t, "Module-0-Linear").count == 5  # rows 0 and 1 only
    assert_cov_close(
        _state(t, "Module-0-Linear").covariance(),
        np.cov(_real_tokens(y, lengths[:2]).double().numpy(), rowvar=False, bias=True),
        RTOL,
    )
    t.close()


def test_all_masked_layer_has_no_samples(tmp_path):
    layer = nn.Linear(3, 2)
    t = _tracker(tmp_path, layer, stats=["lsat"])
    with t.token_mask(torch.zeros(2, 4, dtype=torch.bool)):
        layer(torch.randn(2, 4, 3))
    assert t.add_saturations() == {}
    t.close()


def test_context_manager_restores_and_set_token_mask(tmp_path):
    layer = nn.Linear(3, 2)
    t = _tracker(tmp_path, layer)
    outer, inner = torch.ones(1, 2), torch.zeros(1, 2)
    t.set_token_mask(outer)
    with t.token_mask(inner):
        assert not t._token_mask.any()
    assert t._token_mask.all()
    with pytest.raises(RuntimeError), t.token_mask(inner):
        raise RuntimeError("forward failed")
    assert t._token_mask.all()
    t.set_token_mask(None)
    assert t._token_mask is None
    t.close()


@pytest.mark.parametrize(
    ("mask", "exc", "words"),
    [([1, 0], TypeError, ["torch.Tensor", "list"]), (torch.ones(3), ValueError, ["(B, T)", "(3,)"])],
)
def test_bad_masks_are_named(mask, exc, words):
    with pytest.raises(exc) as info:
        check_token_mask(mask)
    for word in words:
        assert word in str(info.value)


def test_mask_weight_shapes():
    mask = torch.ones(4, 6, dtype=torch.bool)
    assert mask_weight(torch.zeros(4, 3, 6), mask).shape == (4, 6)
    assert mask_weight(torch.zeros(2, 3, 6), mask).shape == (2, 6)  # cut by max_samples
    assert mask_weight(torch.zeros(4, 3, 1), mask) is None  # one sample per row
    assert mask_weight(torch.zeros(5, 3, 6), mask) is None  # more rows than the mask
    assert mask_weight(torch.zeros(4, 3, 6), None) is None


def test_weighted_moments_feature_mismatch():
    m = WeightedMoments(torch.device("cpu"))
    m.update(torch.randn(2, 3, 4), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="4 features but the layer's state has 3"):
        m.update(torch.randn(2, 4, 4), torch.ones(2, 4, dtype=torch.bool))


def test_embed_store_keeps_only_real_tokens(tmp_path):
    gen = torch.Generator().manual_seed(5)
    layer = nn.Linear(3, 3)
    t = _tracker(tmp_path, layer, stats=["embed"])
    lengths = [2, 3]
    x, mask = _padded(gen, lengths, 3, 3)
    with t.token_mask(mask):
        y = layer(x).detach()
    store = t.logs["train-covariance-matrix"]["Module-0-Linear"].saved_samples
    torch.testing.assert_close(store, _real_tokens(y, lengths).double(), rtol=0, atol=0)  # exact copies
    t.close()


def test_masked_hook_makes_no_host_transfer(tmp_path, monkeypatch):
    gen = torch.Generator().manual_seed(6)
    net = nn.ModuleDict({"lin": nn.Linear(4, 4), "attn": nn.MultiheadAttention(4, 2, batch_first=True)})
    t = _tracker(tmp_path, net, stats=["lsat"], max_samples=100)
    x, mask = _padded(gen, [3, 2], 3, 4)
    getitem = torch.Tensor.__getitem__

    def forbidden(*args, **kwargs):
        raise AssertionError("host transfer in the forward hook")

    def no_bool_index(self, index):
        if isinstance(index, torch.Tensor) and index.dtype == torch.bool:
            raise AssertionError("boolean indexing (a host sync on a GPU) in the forward hook")
        return getitem(self, index)

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "numpy", "cpu", "nonzero", "__bool__", "__float__", "__int__"):
            m.setattr(torch.Tensor, name, forbidden)
        m.setattr(torch.Tensor, "__getitem__", no_bool_index)
        with t.token_mask(mask):
            h = net["lin"](x)
            net["attn"](h, h, h)
    values = t.add_saturations()
    assert {"train-saturation_lin", "train-saturation_attn"} <= set(values)
    t.close()


@pytest.mark.parametrize("device", devices())
def test_masked_update_on_each_device_matches_numpy(tmp_path, device):
    gen = torch.Generator().manual_seed(7)
    layer = nn.Linear(6, 5).to(device)
    t = _tracker(tmp_path, layer, device=device)
    lengths = [7, 1, 4, 5]
    x, mask = _padded(gen, lengths, 7, 6, pad=float("nan"))
    x, mask = x.to(device), mask.to(device)
    sync_mode = torch.cuda.get_sync_debug_mode() if torch.device(device).type == "cuda" else None
    if sync_mode is not None:
        torch.cuda.set_sync_debug_mode("error")  # any synchronising call in the forward now raises
    try:
        with t.token_mask(mask):
            y = layer(x).detach()
    finally:
        if sync_mode is not None:
            torch.cuda.set_sync_debug_mode(sync_mode)
    real = _real_tokens(y.cpu(), lengths).double().numpy()
    state = _state(t, "Module-0-Linear")
    assert state.m2.device.type == torch.device(device).type
    assert_cov_close(state.covariance(), np.cov(real, rowvar=False, bias=True), RTOL)
    t.close()


def test_a_mask_that_fits_no_layer_warns_once_and_a_fitting_one_does_not(tmp_path):
    # Tokens and batch swapped: a (T, B) mask on (B, T, D) outputs applies to no layer, so every
    # layer was recorded whole (padding included); say so once, when the mask is lifted.
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
    x = torch.randn(3, 7, 6)
    with SaturationTracker(str(tmp_path / "m"), save_to="csv", modules=model, device="cpu") as tracker:
        with pytest.warns(RuntimeWarning, match=r"token mask of shape \(7, 3\) applied to none of the 2 layer"):
            with tracker.token_mask(torch.ones(7, 3, dtype=torch.bool)):
                model(x)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no second warning, and none for a mask that fits
            with tracker.token_mask(torch.ones(7, 3, dtype=torch.bool)):
                model(x)
            with tracker.token_mask(torch.ones(3, 7, dtype=torch.bool)):
                model(x)


def test_a_mask_that_fits_only_some_layers_does_not_warn(tmp_path):
    # A pooled head after token layers: the mask fits the token layers, so nothing is wrong.
    class Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Linear(6, 5)
            self.head = nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.tok(x).mean(1))

    model = Pooled()
    with SaturationTracker(str(tmp_path / "p"), save_to="csv", modules=model, device="cpu") as tracker:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tracker.set_token_mask(torch.ones(3, 7, dtype=torch.bool))
            model(torch.randn(3, 7, 6))
            tracker.set_token_mask(None)
            tracker.add_saturations()
