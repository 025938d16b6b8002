"""delve's ``delve.metrics``: statistics of one covariance matrix.

Each function takes a square covariance matrix (a torch tensor) and returns a
number, with delve's names and signatures. They are thin wrappers over
:mod:`delve_fast.stats`, which the tracker uses too, so a value computed here
equals the value the tracker reports for the same matrix.
"""

from __future__ import annotations

import torch

from delve_fast import stats as S
from delve_fast.stats import compute_intrinsic_dimensionality, compute_saturation

__all__ = [
    "compute_intrinsic_dimensionality",
    "compute_saturation",
    "compute_cov_determinant",
    "compute_cov_trace",
    "compute_diag_trace",
]


def _square(cov: torch.Tensor) -> torch.Tensor:
    return S._as_covariance(cov)


def compute_cov_determinant(cov: torch.Tensor) -> float:
    """Determinant of the covariance matrix (the generalised variance).

    Computed as the product of the eigenvalues with negatives set to zero, as
    the tracker's ``det`` stat does; it underflows to 0 for most real layers
    (``logdet`` is the usable variant).

    Parameters
    ----------
    cov : torch.Tensor
        ``(C, C)`` symmetric matrix.

    Returns
    -------
    float
    """
    return S.determinant(S._eigvals_of(_square(cov)), warn=False)


def compute_cov_trace(cov: torch.Tensor) -> float:
    """Trace of the covariance matrix (the total variance).

    Parameters
    ----------
    cov : torch.Tensor
        ``(C, C)`` matrix.

    Returns
    -------
    float
    """
    return S.covariance_trace(_square(cov))


def compute_diag_trace(cov: torch.Tensor) -> float:
    """Trace of the diagonalised covariance: the sum of its eigenvalues with negatives set to zero.

    Parameters
    ----------
    cov : torch.Tensor
        ``(C, C)`` symmetric matrix.

    Returns
    -------
    float
    """
    return S.diagonal_trace(S._eigvals_of(_square(cov)))
