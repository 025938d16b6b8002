"""delve's ``delve.torch_utils`` import path: re-exports :class:`TorchCovarianceMatrix`."""

from delve_fast.covariance import TorchCovarianceMatrix

__all__ = ["TorchCovarianceMatrix"]
