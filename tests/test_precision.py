"""The opt-in mixed precision mode: float32 tile products, float64 accumulation.

Its bound (docs/precision.md) is checked against a float64 NumPy covariance,
and its lsat / idim are compared with the float64 mode's on the demo's data and
on the benchmark's VGG-style model, as the performance issue asks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from delve_fast import ops, stats
from delve_fast._reference import as_channel_view
from delve_fast.testing import fresh_state, np_mean_cov, samples_f64, vgg_benchmark_model

BACKENDS = ["cpp", "torch"]


def _np_cov(batches: list[torch.Tensor]) -> np.ndarray:
    return np_mean_cov(np.concatenate([samples_f64(b) for b in batches]))[1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "shape",
    # C spans one feature block, odd and even block counts (the float kernel
    # takes row blocks two at a time), partial tiles and several tiles.
    [(16, 24, 64), (300, 70, 1), (4, 33, 900), (5, 16, 40), (3, 257, 200), (700, 130, 1), (6, 64, 1024)],
)
def test_mixed_within_documented_bound(compiled, backend, shape):  # noqa: ARG001 (fail if the build is broken)
    """|error_ij| <= 1e-4 * sqrt(cov_ii * cov_jj): float32 rounding over short tiles.

    The documented worst case for the CPU's 256-sample tiles is about
    258 * 2**-24 ~ 1.5e-5 of sqrt(cov_ii cov_jj) (tiles are summed in float64).
    The twin forms one float32 product per batch, whose blocking is PyTorch's;
    1e-4 covers both with room for the rounding of the inputs. An offset of 50 standard deviations
    makes sure the shift, not luck, keeps the products small.
    """
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(*shape, generator=gen) * 0.3 + 15.0 for _ in range(3)]
    c = shape[1]
    mean, m2, counts = fresh_state(c)
    for b in batches:
        ops.cov_update_(mean, m2, counts, b, backend=backend, precision="mixed")
    count = int(counts[0])
    ref = _np_cov(batches)
    got = (m2 / count).numpy()
    scale = np.sqrt(np.outer(np.diag(ref), np.diag(ref)))
    assert np.max(np.abs(got - ref) / scale) <= 1e-4
    # Far from float64 accuracy, so the test would notice a silent float64 fallback.
    mean64, m264, counts64 = fresh_state(c)
    ops.cov_update_(mean64, m264, counts64, torch.cat(batches), backend=backend)
    assert not torch.equal(m264, m2)


def test_precision_argument_is_validated():
    with pytest.raises(ValueError, match="precision='half'.*double, mixed"):
        ops.cov_update_(*fresh_state(3), torch.randn(2, 3, 1), precision="half")


def _track(model: nn.Module, batches: list[torch.Tensor], precision: str, backend: str) -> dict[str, tuple[float, int]]:
    """lsat and idim per tracked layer, from states fed by forward hooks."""
    states: dict[str, list] = {}

    def hook(name):
        def fn(_module, _inp, out):
            view = as_channel_view(out.detach())
            mean, m2, counts = states.setdefault(name, list(fresh_state(view.shape[1])))
            ops.cov_update_(mean, m2, counts, view, backend=backend, precision=precision)

        return fn

    handles = [
        m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in handles:
        h.remove()
    names = list(states)
    covs = [states[n][1] / states[n][2][0] for n in names]
    eigs = ops.eigvalsh_desc(covs, backend=backend)
    return {n: (stats.saturation(e), stats.intrinsic_dimensionality(e)) for n, e in zip(names, eigs, strict=True)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_matches_double_on_demo_data(compiled, backend):  # noqa: ARG001
    from delve_fast.demo import DigitsCNN, load_digits_split

    torch.manual_seed(0)
    x_train, _, _, _ = load_digits_split(subset=600)
    model = DigitsCNN().eval()
    batches = list(x_train.split(64))
    double = _track(model, batches, "double", backend)
    mixed = _track(model, batches, "mixed", backend)
    assert len(double) == 7
    assert mixed == double


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_matches_double_on_benchmark_model(compiled, backend):  # noqa: ARG001
    model = vgg_benchmark_model(seed=0).eval()
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(16, 3, 32, 32, generator=gen) for _ in range(2)]
    double = _track(model, batches, "double", backend)
    mixed = _track(model, batches, "mixed", backend)
    assert len(double) == 9
    assert mixed == double
