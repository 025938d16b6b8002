"""delve_fast: a drop-in, faster replacement for delve's layer saturation tracker.

Change ``from delve import SaturationTracker`` to
``from delve_fast import SaturationTracker``; arguments, output files and
statistics stay the same (see ``docs/differences-from-delve.md`` for where
delve_fast follows delve's documentation instead of delve 0.1.50's code).
"""

import importlib
from typing import Any

from delve_fast import writers
from delve_fast.covariance import TorchCovarianceMatrix
from delve_fast.ops import backend_info
from delve_fast.state import CovarianceState, StateTooLargeError
from delve_fast.tools import reconstruct_csv_from_npy_data
from delve_fast.tracker import CheckLayerSat, SaturationTracker

# delve's writer shortcuts: ``delve.csv(...)`` is a CSVWriter, and so on.
from delve_fast.writers import CSVWriter as csv
from delve_fast.writers import NPYWriter as npy
from delve_fast.writers import PrintWriter as console
from delve_fast.writers import TensorBoardWriter as tensorboard

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
    "csv",
    "npy",
    "console",
    "tensorboard",
    "__version__",
]

# delve's submodules, reachable as attributes (``delve_fast.metrics.compute_saturation``)
# without importing them, and what they pull in, with the package.
_LAZY_SUBMODULES = ("metrics", "logger", "torchcallback", "torch_utils", "pca_layers", "tools", "layers", "views")


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"delve_fast.{name}")
    raise AttributeError(f"module 'delve_fast' has no attribute {name!r}")
