"""PCA layers and their module-wide helpers."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from torch import nn

from delve_fast import stats as S
from delve_fast.pca_layers import (
    Conv2DPCALayer,
    LinearPCALayer,
    change_all_pca_layer_centering,
    change_all_pca_layer_thresholds,
    change_all_pca_layer_thresholds_and_inject_random_directions,
    rvs,
)


def _low_rank(n: int, dim: int, rank: int, seed: int, offset: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dim, rank, generator=g))
    scales = torch.linspace(3.0, 1.0, rank)
    x = (torch.randn(n, rank, generator=g) * scales) @ basis.T + offset
    return x, basis


def test_documented_signatures():
    assert list(inspect.signature(LinearPCALayer).parameters) == [
        "in_features",
        "threshold",
        "keepdim",
        "verbose",
        "gradient_epoch_start",
        "centering",
    ]
    assert list(inspect.signature(Conv2DPCALayer).parameters) == [
        "in_filters",
        "threshold",
        "verbose",
        "gradient_epoch_start",
        "centering",
        "downsampling",
    ]
    assert inspect.signature(change_all_pca_layer_centering).parameters["downsampling"].default is None


@pytest.mark.parametrize("dim", [1, 2, 5, 9])
def test_rvs_is_a_rotation(dim):
    q = rvs(dim, random_state=np.random.default_rng(dim))
    np.testing.assert_allclose(q @ q.T, np.eye(dim), atol=1e-12)
    assert np.linalg.det(q) == pytest.approx(1.0, abs=1e-10)


def test_linear_pca_identity_in_training_projection_in_eval():
    x, basis = _low_rank(300, 6, 2, seed=0)
    layer = LinearPCALayer(6)
    assert torch.equal(layer(x), x)  # training: identity
    layer.eval()
    y = layer(x)
    assert layer.in_dim == 2 and layer.fs_dim == 6 and layer.sat == pytest.approx(100 * 2 / 6, abs=1e-4)
    torch.testing.assert_close(y, x, atol=1e-4, rtol=1e-4)  # data lies in the kept subspace
    off = torch.linalg.svd(basis.T, full_matrices=True).Vh[-1]  # a direction orthogonal to the data
    probe = x[:3] + 5 * off
    torch.testing.assert_close(layer(probe), x[:3], atol=1e-3, rtol=1e-3)


def test_linear_pca_keepdim_false_gives_coordinates():
    x, _ = _low_rank(200, 5, 3, seed=1)
    layer = LinearPCALayer(5, keepdim=False)
    layer(x)
    layer.eval()
    assert layer(x).shape == (200, 3)


def test_threshold_and_centering_change_projection():
    x, _ = _low_rank(400, 6, 4, seed=2)
    layer = LinearPCALayer(6, verbose=True)
    layer(x)
    layer.eval()
    layer(x)
    dims_high = layer.in_dim
    layer.threshold = 0.5
    assert layer.threshold == 0.5
    assert layer.in_dim < dims_high
    with pytest.raises(ValueError):
        layer.threshold = 1.5
    # Uncentred: the kept eigenspace is that of the second moment (1/n) X^T X,
    # and nothing is subtracted before projecting.
    layer.threshold = 0.99
    layer.centering = False
    layer.train()
    layer(x)  # the next eigenspace is gathered uncentred
    layer.eval()
    y = layer(x).double().numpy()  # the first eval pass computes the eigenspace
    a = x.double().numpy()
    values, vectors = np.linalg.eigh(a.T @ a / a.shape[0])
    keep = layer.in_dim
    basis = vectors[:, ::-1][:, :keep]
    expected = a @ basis @ basis.T
    # float32 projection of O(10) values: ~1e-6 relative rounding, plus the
    # eigenvector difference between torch and NumPy (well separated spectrum).
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    assert keep == S.intrinsic_dimensionality(values[::-1].clip(0), 0.99, rule="gap")


def test_conv_pca_projects_channels():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(6, 2, 5, 5, generator=g)
    x = torch.cat([base, base[:, :1] * 2 + 1, base[:, 1:] - base[:, :1]], dim=1)  # rank 2 over 4 channels
    layer = Conv2DPCALayer(4, verbose=False, centering=True)
    assert torch.equal(layer(x), x)
    layer.eval()
    y = layer(x)
    assert layer.in_dim == 2 and layer.fs_dim == 4
    torch.testing.assert_close(y, x, atol=1e-4, rtol=1e-4)


def test_module_wide_helpers():
    net = nn.Sequential(LinearPCALayer(6), nn.Linear(6, 4), Conv2DPCALayer(3, verbose=False))
    x, _ = _low_rank(300, 6, 2, seed=4)
    net[0](x)
    net[2](torch.randn(4, 3, 5, 5))
    net.eval()
    net[0](x)
    net[2](torch.randn(4, 3, 5, 5))
    sat, in_dims, fs_dims, names = change_all_pca_layer_thresholds(0.99, net)
    assert names == ["Lin-0", "Conv-0"] and fs_dims == [6, 3] and in_dims[0] == 2 and len(sat) == 2
    sat, in_dims, fs_dims = change_all_pca_layer_thresholds_and_inject_random_directions(0.99, net)
    p = net[0].transformation_matrix.double()
    torch.testing.assert_close(p @ p, p, atol=1e-5, rtol=1e-5)  # still a projection ...
    assert torch.linalg.matrix_rank(p, atol=1e-4).item() == in_dims[0]  # ... of the same rank
    conv_w = net[2].convolution.weight[:, :, 0, 0].double()
    torch.testing.assert_close(conv_w, net[2].transformation_matrix.double())
    out = change_all_pca_layer_thresholds_and_inject_random_directions(0.99, net, include_names=True)
    assert out[3] == ["Linear-0", "Conv-0"]
    change_all_pca_layer_centering(True, net, downsampling=2)
    assert net[0].centering and net[2].centering and net[2].downsampling == 2


@pytest.mark.parametrize("keepdim", [True, False])
def test_state_dict_after_training_loads_into_a_fresh_layer(keepdim, tmp_path):
    x, _ = _low_rank(300, 6, 2, seed=5)
    layer = LinearPCALayer(6, keepdim=keepdim, centering=False)
    layer(x)
    layer.eval()
    expected = layer(x)
    assert layer.reduced_transformation_matrix.shape == (6, 2)
    torch.save(layer.state_dict(), tmp_path / "pca.pt")
    fresh = LinearPCALayer(6, keepdim=keepdim)
    fresh.load_state_dict(torch.load(tmp_path / "pca.pt", weights_only=True))
    assert (fresh.in_dim, fresh.fs_dim, fresh.sat, fresh.centering) == (2, 6, layer.sat, False)
    fresh.eval()
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)  # the same ops on the same buffers


def test_state_dict_keeps_statistics_gathered_since_the_eigenspace():
    x, _ = _low_rank(300, 6, 3, seed=7)
    layer = LinearPCALayer(6)
    layer(x)
    layer.eval()
    layer(x)
    layer.train()
    layer(x[:50] * 2)  # pending: the next eval pass recomputes from these
    fresh = LinearPCALayer(6)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.seen_samples == 50
    torch.testing.assert_close(fresh.running.m2, layer.running.m2, rtol=0, atol=0)
    layer.eval()
    fresh.eval()
    torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)


def test_conv_state_dict_loads_into_a_fresh_layer():
    g = torch.Generator().manual_seed(6)
    base = torch.randn(6, 2, 5, 5, generator=g)
    x = torch.cat([base, base[:, :1] * 2 + 1, base[:, 1:] - base[:, :1]], dim=1)
    layer = Conv2DPCALayer(4, verbose=False, centering=True)
    layer(x)
    layer.eval()
    expected = layer(x)
    fresh = Conv2DPCALayer(4, verbose=False)
    fresh.load_state_dict(layer.state_dict())
    fresh.eval()
    assert fresh.in_dim == 2
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)


def test_running_statistics_stay_float64_and_out_of_buffers():
    layer = LinearPCALayer(3)
    assert not any("running" in name or "seen" in name for name, _ in layer.named_buffers())
    layer.half()
    layer(torch.randn(10, 3).half())
    assert layer.running.m2.dtype == torch.float64 and layer.seen_samples == 10
    assert layer.mean.dtype == torch.float16  # ordinary buffers do follow .half()
