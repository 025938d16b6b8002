"""delve_fast: a drop-in, faster replacement for delve's layer saturation tracker.

Change ``from delve import SaturationTracker`` to
``from delve_fast import SaturationTracker``; arguments, output files and
statistics stay the same (see ``docs/differences-from-delve.md`` for where
delve_fast follows delve's documentation instead of delve 0.1.50's code).
"""

from delve_fast import writers
from delve_fast.covariance import TorchCovarianceMatrix
from delve_fast.ops import backend_info
from delve_fast.state import CovarianceState, StateTooLargeError
from delve_fast.tools import reconstruct_csv_from_npy_data
from delve_fast.tracker import CheckLayerSat, SaturationTracker

__version__ = "0.2.0"
__all__ = [
    "SaturationTracker",
    "CheckLayerSat",
    "TorchCovarianceMatrix",
    "CovarianceState",
    "StateTooLargeError",
    "backend_info",
    "reconstruct_csv_from_npy_data",
    "writers",
    "__version__",
]
