"""The reduction benchmark: covariances like the training model's, and delve_fast's and delve's reductions."""

from __future__ import annotations

import torch

from delve_fast import ops, stats

#: Channel counts of the 9 tracked layers of the training benchmark's model.
TRACKED_SIZES = [64, 64, 128, 128, 256, 256, 512, 256, 10]


def reduction_covariances(seed: int = 0) -> list[torch.Tensor]:
    """One float64 covariance per tracked layer, with a decaying spectrum like real layers."""
    gen = torch.Generator().manual_seed(seed)
    covs = []
    for c in TRACKED_SIZES:
        q, _ = torch.linalg.qr(torch.randn(c, c, generator=gen, dtype=torch.float64))
        ev = torch.logspace(0, -6, c, dtype=torch.float64)
        covs.append((q * ev) @ q.T)
    return covs


def reduction_fast(covs: list[torch.Tensor], backend: str) -> list[tuple[float, int]]:
    """delve_fast's reduction: one batched eigenvalue call, then lsat and idim by :mod:`delve_fast.stats`."""
    return [
        (stats.saturation(ev), stats.intrinsic_dimensionality(ev)) for ev in ops.eigvalsh_desc(covs, backend=backend)
    ]


def reduction_delve(covs: list[torch.Tensor], names: tuple[str, ...] = ("lsat", "idim")) -> list:
    """delve 0.1.50's reduction: per layer, per stat, its own ``torch.linalg.eigh``."""
    from delve.metrics import (  # noqa: PLC0415
        compute_diag_trace,
        compute_intrinsic_dimensionality,
        compute_saturation,
    )

    fns = {"lsat": compute_saturation, "idim": compute_intrinsic_dimensionality, "dtrc": compute_diag_trace}
    return [[fns[s](cov) for s in names] for cov in covs]
