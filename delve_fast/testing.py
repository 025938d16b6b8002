"""Test helpers: NumPy float64 oracles, empty states and the device x dtype matrix.

Importable as ``delve_fast.testing`` from any test layout (including
``pytest --import-mode=importlib``), in the spirit of ``torch_scatter.testing``.
Nothing here is imported by the library itself; ``pytest`` is imported only by
:func:`devices`, which needs it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from delve_fast import ops

__all__ = [
    "FLOAT_DTYPES",
    "DEVICE_TYPES",
    "devices",
    "require_compiled_device",
    "fresh_state",
    "fold_all",
    "samples_f64",
    "np_mean_cov",
    "assert_cov_close",
    "opcheck_batch",
    "vgg_benchmark_model",
]

#: Every input dtype the covariance update accepts.
FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

#: The device types the op tests run on (CUDA cases skip without a GPU).
DEVICE_TYPES = ("cpu", "cuda")


def devices() -> list[Any]:
    """``pytest.param`` per device type; the CUDA one carries the ``gpu`` mark and skips without a GPU."""
    import pytest

    return [
        pytest.param("cpu", id="cpu"),
        pytest.param(
            "cuda",
            id="cuda",
            marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")],
        ),
    ]


def require_compiled_device(device: str) -> None:
    """Skip when the compiled extension has no kernel for ``device`` (e.g. a CPU-only build on a GPU box).

    The CPU kernels are never skipped: without them the ``compiled`` fixture fails the test instead.
    """
    if device != "cpu" and not ops.has_compiled_kernel(torch.device(device).type):
        import pytest

        pytest.skip(f"extension built without {device} kernels")


def fresh_state(c: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An empty covariance state: ``mean`` (C,), ``m2`` (C, C) and ``counts`` (2,), float64 zeros.

    ``counts`` is ``[samples, skipped batches]``, the third argument of
    ``cov_update_``: ``fn(*fresh_state(c), x)`` folds one batch into a new state.
    """
    return (
        torch.zeros(c, dtype=torch.float64, device=device),
        torch.zeros(c, c, dtype=torch.float64, device=device),
        torch.zeros(2, dtype=torch.float64, device=device),
    )


def fold_all(
    fn: Any, batches: list[torch.Tensor], device: str | torch.device = "cpu", **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Fold ``batches`` in order into a fresh state with ``fn(mean, m2, counts, x, **kwargs)``.

    Returns ``(mean, m2, samples)`` with ``samples`` read back from ``counts``.
    """
    mean, m2, counts = fresh_state(batches[0].shape[1], device)
    for x in batches:
        fn(mean, m2, counts, x, **kwargs)
    return mean, m2, int(counts[0].item())


def samples_f64(x: torch.Tensor) -> np.ndarray:
    """The samples of an ``(N, C, S)`` batch as a ``(N*S, C)`` float64 NumPy array.

    The upcast is exact for every float dtype, so an oracle built on this sees
    the very values the op saw.
    """
    n, c, s = x.shape
    return x.detach().cpu().to(torch.float64).permute(0, 2, 1).reshape(n * s, c).numpy()


def np_mean_cov(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NumPy float64 mean and population covariance (``np.cov(..., bias=True)``) of ``(K, C)`` samples."""
    k, c = samples.shape
    mean = samples.mean(axis=0)
    cov = np.cov(samples, rowvar=False, bias=True) if k > 1 else np.zeros((c, c))
    return mean, np.atleast_2d(cov).reshape(c, c)


def assert_cov_close(actual: torch.Tensor, expected, rtol: float, msg: str = "") -> None:
    """Compare covariance-like matrices entrywise with a scale-aware absolute tolerance.

    Off-diagonal entries can be near zero while their rounding error scales
    with ``sqrt(var_i * var_j)``, so the absolute tolerance is ``rtol`` times
    the largest diagonal entry (plus a floor for an all-zero matrix).
    """
    expected = torch.as_tensor(np.asarray(expected), dtype=torch.float64)
    actual = actual.detach().cpu().to(torch.float64)
    scale = float(expected.diagonal().abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale + 1e-300, msg=msg or None)


def opcheck_batch(layout: str, gen: torch.Generator) -> torch.Tensor:
    """A small (5, 19, S) float32 batch in one of three memory layouts, for opcheck.

    ``contiguous`` is NCHW-like, ``transposed`` has unit stride along the
    features, ``channels_last`` is the view of a channels_last 4-D map.
    """
    from delve_fast._reference import as_channel_view

    if layout == "contiguous":
        return torch.randn(5, 19, 4, generator=gen)
    if layout == "transposed":
        return torch.randn(5, 4, 19, generator=gen).transpose(1, 2)
    if layout == "channels_last":
        return as_channel_view(torch.randn(5, 19, 2, 3, generator=gen).contiguous(memory_format=torch.channels_last))
    raise ValueError(f"unknown layout {layout!r}; choose contiguous, transposed or channels_last")


def vgg_benchmark_model(seed: int = 0) -> torch.nn.Module:
    """The VGG-style model of the training benchmark: 7 convs, 4 pools, Linear 2048 -> 256 -> 10, ReLUs.

    For 3 x 32 x 32 inputs. The benchmarks time it; the tests check that mixed
    precision gives the same lsat and idim on it as float64.
    """
    from torch import nn

    torch.manual_seed(seed)

    def conv(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *conv(3, 64),
        *conv(64, 64),
        nn.MaxPool2d(2),
        *conv(64, 128),
        *conv(128, 128),
        nn.MaxPool2d(2),
        *conv(128, 256),
        *conv(256, 256),
        nn.MaxPool2d(2),
        *conv(256, 512),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2048, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, 10),
    )
