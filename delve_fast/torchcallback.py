"""delve's ``delve.torchcallback`` import path.

``from delve.torchcallback import SaturationTracker`` becomes
``from delve_fast.torchcallback import SaturationTracker``. Everything here is
re-exported from where delve_fast defines it.
"""

from delve_fast.covariance import TorchCovarianceMatrix
from delve_fast.metrics import (
    compute_cov_determinant,
    compute_cov_trace,
    compute_diag_trace,
    compute_intrinsic_dimensionality,
    compute_saturation,
)
from delve_fast.tracker import CheckLayerSat, SaturationTracker
from delve_fast.writers import STATMAP, WRITERS, CompositWriter, NPYWriter

__all__ = [
    "SaturationTracker",
    "CheckLayerSat",
    "TorchCovarianceMatrix",
    "CompositWriter",
    "NPYWriter",
    "STATMAP",
    "WRITERS",
    "compute_intrinsic_dimensionality",
    "compute_saturation",
    "compute_cov_determinant",
    "compute_cov_trace",
    "compute_diag_trace",
]
