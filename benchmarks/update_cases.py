"""The update-op benchmark's inputs and measured paths, and the fp64 GEMM whose rate is the roofline.

Shared by :mod:`benchmarks.bench_update` and the memory probe
(:mod:`benchmarks.memprobe`, a fresh subprocess), so both measure exactly the same paths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from delve_fast import ops
from delve_fast._reference import as_channel_view


@dataclass(frozen=True)
class UpdateCase:
    """One batch shape of the update-op benchmark."""

    id: str
    kind: str  # "conv", "conv_cl" (channels_last), "linear", "tokens"
    shape: tuple[int, ...]

    @property
    def channels(self) -> int:
        return self.shape[-1] if self.kind == "tokens" else self.shape[1]

    @property
    def samples(self) -> int:
        """K, the number of C-dimensional samples in the batch."""
        if self.kind == "tokens":
            return self.shape[0] * self.shape[1]
        if self.kind == "linear":
            return self.shape[0]
        n, _, h, w = self.shape
        return n * h * w

    @property
    def syrk_flops(self) -> int:
        """N·S·C·(C+1): the flops of one triangle of the Gram matrix."""
        c = self.channels
        return self.samples * c * (c + 1)

    @property
    def is_conv(self) -> bool:
        return self.kind in ("conv", "conv_cl")

    @property
    def label(self) -> str:
        dims = "×".join(str(d) for d in self.shape)
        return {
            "conv": f"conv ({dims})",
            "conv_cl": f"conv channels_last ({dims})",
            "linear": f"linear ({dims})",
            "tokens": f"tokens ({dims})",
        }[self.kind]


UPDATE_CASES = [
    UpdateCase("conv-64x64x32x32", "conv", (64, 64, 32, 32)),
    UpdateCase("conv-64x128x16x16", "conv", (64, 128, 16, 16)),
    UpdateCase("conv-64x256x8x8", "conv", (64, 256, 8, 8)),
    UpdateCase("conv-64x512x4x4", "conv", (64, 512, 4, 4)),
    UpdateCase("convcl-64x64x32x32", "conv_cl", (64, 64, 32, 32)),
    UpdateCase("linear-256x512", "linear", (256, 512)),
    UpdateCase("linear-256x4096", "linear", (256, 4096)),
    UpdateCase("tokens-32x197x768", "tokens", (32, 197, 768)),
]
CASES_BY_ID = {c.id: c for c in UPDATE_CASES}

#: The update paths: delve_fast's op (compiled, twin, compiled in mixed precision) and delve 0.1.50's.
UPDATE_PATHS = ["compiled", "twin", "delve", "compiled_mixed"]


def make_input(case: UpdateCase, seed: int = 0) -> torch.Tensor:
    """A float32 activation of ``case``'s shape and memory format (post-ReLU-like, non-zero mean)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(case.shape, generator=gen, dtype=torch.float32).abs_()
    if case.kind == "conv_cl":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def fast_view(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The ``(N, C, S)`` view delve_fast's op takes, without copying."""
    if kind == "tokens":
        return x.reshape(-1, x.shape[-1]).unsqueeze(-1)
    return as_channel_view(x)


def delve_matrix(x: torch.Tensor) -> torch.Tensor:
    """The 2-D ``(samples, C)`` matrix delve 0.1.50 hands to its covariance.

    Conv outputs follow delve's ``conv_method='channelwise'`` branch of
    ``SaturationTracker._record_stat``: channels first, flatten, transpose back.
    Tokens are flattened to ``(B·T, D)`` (delve itself would keep only the
    last time step; the flattening is what a like-for-like comparison needs).
    """
    if x.dim() == 4:
        return x.permute(1, 0, 2, 3).flatten(1).permute(1, 0)
    if x.dim() == 3:
        return x.reshape(-1, x.shape[-1])
    return x


def make_update_fn(path: str, x: torch.Tensor, kind: str) -> Callable[[], None]:
    """A no-argument callable doing one update of a persistent state with batch ``x``.

    Parameters
    ----------
    path : str
        ``compiled``, ``twin``, ``compiled_mixed`` or ``delve``.
    x : torch.Tensor
        The activation, as a layer would output it.
    kind : str
        The case's kind (decides the view).
    """
    if path == "delve":
        from delve.torch_utils import TorchCovarianceMatrix  # noqa: PLC0415

        cov = TorchCovarianceMatrix(device="cpu")

        def run_delve() -> None:
            cov.update(delve_matrix(x), False)

        return run_delve

    view = fast_view(x, kind)
    c = view.shape[1]
    mean = torch.zeros(c, dtype=torch.float64)
    m2 = torch.zeros(c, c, dtype=torch.float64)
    counts = torch.zeros(2, dtype=torch.float64)
    choices = {"compiled": ("cpp", "double"), "twin": ("torch", "double"), "compiled_mixed": ("cpp", "mixed")}
    if path not in choices:
        raise ValueError(f"unknown path {path!r}; valid choices are {', '.join([*choices, 'delve'])}")
    backend, precision = choices[path]

    def run_fast() -> None:
        ops.cov_update_(mean, m2, counts, view, backend=backend, precision=precision)

    return run_fast


#: Side of the square fp64 GEMM whose rate is the roofline.
GEMM_N = 2048


def make_gemm_fn(n: int = GEMM_N) -> tuple[Callable[[], object], int]:
    """``torch.mm`` of two ``n × n`` fp64 matrices into a reused output, and its flop count 2n³."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    b = torch.randn(n, n, generator=gen, dtype=torch.float64)
    out = torch.empty(n, n, dtype=torch.float64)

    def gemm() -> None:
        torch.mm(a, b, out=out)

    return gemm, 2 * n**3
