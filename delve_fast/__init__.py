"""delve_fast: a drop-in, faster replacement for delve's layer saturation tracker."""

from delve_fast.ops import backend_info

__version__ = "0.2.0"
__all__ = ["backend_info", "__version__"]
