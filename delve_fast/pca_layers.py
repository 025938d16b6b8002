"""PCA layers: project activations onto the eigenspace that explains most variance.

A PCA layer is an identity while the network trains and gathers the
covariance of its input meanwhile. On the first forward pass in eval mode it
computes the eigenspace that explains ``threshold`` of the variance (with the
same rule as the ``idim`` statistic) and from then on projects its input onto
that eigenspace, until training resumes.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.functional import interpolate

from delve_fast import stats as S
from delve_fast.state import CovarianceState
from delve_fast.views import as_channel_view

__all__ = [
    "rvs",
    "LinearPCALayer",
    "Conv2DPCALayer",
    "change_all_pca_layer_thresholds",
    "change_all_pca_layer_thresholds_and_inject_random_directions",
    "change_all_pca_layer_centering",
]

log = logging.getLogger("delve_fast")


def rvs(dim: int = 3, random_state: np.random.Generator | np.random.RandomState | None = None) -> np.ndarray:
    """Draw a random rotation matrix (orthonormal, determinant +1).

    Uses Stewart's (1980) product of Householder reflections, the method
    behind :func:`scipy.stats.special_ortho_group`.

    Parameters
    ----------
    dim : int, default 3
        Matrix size.
    random_state : numpy Generator or RandomState, optional
        Source of randomness; NumPy's global state when omitted.

    Returns
    -------
    numpy.ndarray
        ``(dim, dim)`` float64 with ``Q @ Q.T == I`` and ``det(Q) == 1``.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    rng = np.random if random_state is None else random_state
    q = np.eye(dim)
    signs = np.ones(dim)
    for k in range(1, dim):
        v = rng.normal(size=dim - k + 1)
        signs[k - 1] = np.sign(v[0]) if v[0] != 0 else 1.0
        v[0] -= signs[k - 1] * np.sqrt(v @ v)
        reflector = np.eye(dim)
        reflector[k - 1 :, k - 1 :] -= 2.0 * np.outer(v, v) / (v @ v)
        q = q @ reflector
    # Pick the last sign so that the determinant comes out as +1.
    signs[-1] = (-1.0) ** (1 - dim % 2) * signs[:-1].prod()
    return signs[:, None] * q


class LinearPCALayer(nn.Module):
    """Identity while training; projection onto the leading eigenspace in eval.

    Parameters
    ----------
    in_features : int
        Number of features of the input (last dimension).
    threshold : float, default 0.99
        Share of variance the kept eigenspace must explain.
    keepdim : bool, default True
        Return the projection in the input space (same shape). If False,
        return the coordinates in the reduced eigenspace (``in_dim`` features).
    verbose : bool, default False
        Log the kept dimension whenever the eigenspace is recomputed.
    gradient_epoch_start : int, default 20
        Kept for API compatibility with delve (stored, not used).
    centering : bool, default True
        Subtract the mean before projecting and add it back afterwards (the
        covariance is centred as well); if False, the uncentred second moment
        is decomposed and nothing is subtracted.

    Attributes
    ----------
    sat : float
        Saturation in percent (``100 * in_dim / fs_dim``, rounded to 4 places).
    in_dim : int
        Dimension of the kept eigenspace.
    fs_dim : int
        Feature space dimension.
    """

    num = 0

    def __init__(
        self,
        in_features: int,
        threshold: float = 0.99,
        keepdim: bool = True,
        verbose: bool = False,
        gradient_epoch_start: int = 20,
        centering: bool = True,
    ) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be >= 1, got {in_features}")
        self.register_buffer("eigenvalues", torch.zeros(in_features, dtype=torch.float64))
        self.register_buffer("eigenvectors", torch.eye(in_features, dtype=torch.float64))
        self.register_buffer("_threshold", torch.tensor([float(threshold)], dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(in_features, dtype=torch.float32))
        self.register_buffer("transformation_matrix", torch.eye(in_features, dtype=torch.float32))
        self.register_buffer("reduced_transformation_matrix", torch.eye(in_features, dtype=torch.float32))
        self.keepdim: bool = keepdim
        self.verbose: bool = verbose
        self.pca_computed: bool = True
        self.gradient_epoch = gradient_epoch_start
        self.epoch = 0
        self.name = f"pca{LinearPCALayer.num}"
        LinearPCALayer.num += 1
        self._centering = bool(centering)
        #: Running statistics of the input since the last eigenspace (saved in the state_dict).
        self.running = CovarianceState(in_features)
        self._has_eigenspace = False
        self.sat, self.in_dim, self.fs_dim = 100.0, in_features, in_features
        self.threshold = threshold

    def is_floating_point(self) -> bool:
        """Return False, so ``module.to(dtype)`` leaves the float64 buffers alone."""
        return False

    @property
    def threshold(self) -> float:
        """Share of variance the kept eigenspace explains; setting it recomputes the projection."""
        return float(self._threshold.item())

    @threshold.setter
    def threshold(self, threshold: float) -> None:
        if not 0.0 < float(threshold) <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        self._threshold.fill_(float(threshold))
        self._compute_pca_matrix()

    @property
    def centering(self) -> bool:
        """Whether the mean is removed before projecting; setting it recomputes the projection."""
        return self._centering

    @centering.setter
    def centering(self, centering: bool) -> None:
        self._centering = bool(centering)
        self._compute_pca_matrix()

    # -- statistics ------------------------------------------------------------
    @property
    def seen_samples(self) -> int:
        """Samples gathered since the eigenspace was last computed."""
        return self.running.count

    @property
    def running_mean(self) -> torch.Tensor:
        """Mean of the samples gathered since the eigenspace was last computed, ``(C,)`` float64."""
        return self.running.mean

    def _update_autorcorrelation(self, x: torch.Tensor) -> None:
        """Fold a batch, viewed ``(N, C, S)``, into the running covariance."""
        self.running.update(x)

    def _compute_autorcorrelation(self) -> torch.Tensor:
        """Covariance (centred) or second moment (uncentred) of the data seen."""
        return self.running.covariance(center=self._centering)

    def _compute_eigenspace(self) -> None:
        values, vectors = torch.linalg.eigh(self._compute_autorcorrelation())
        self.eigenvalues.copy_(values.flip(0).clamp_min(0))
        self.eigenvectors.copy_(vectors.flip(1))
        self.mean.copy_(self.running.mean.to(torch.float32))
        self._has_eigenspace = True

    def _reset_autorcorrelation(self) -> None:
        self.running.reset()

    def _compute_pca_matrix(self) -> None:
        """Choose the kept eigenspace from the eigenvalues and build the projections."""
        if not getattr(self, "_has_eigenspace", False):
            return
        dims = S.intrinsic_dimensionality(self.eigenvalues, self.threshold, rule="gap")
        basis = self.eigenvectors[:, :dims]
        self.transformation_matrix = (basis @ basis.t()).to(torch.float32)
        self.reduced_transformation_matrix = basis.to(torch.float32).contiguous()
        self.fs_dim = int(self.eigenvalues.shape[0])
        self.in_dim = int(dims)
        self.sat = round(100.0 * dims / self.fs_dim, 4)
        if self.verbose:
            log.info("%s keeps %d of %d dimensions (saturation %.4f%%)", self.name, dims, self.fs_dim, self.sat)

    def _refresh(self) -> None:
        if not self.pca_computed:
            if self.running.count > 0:
                self._compute_eigenspace()
                self._compute_pca_matrix()
                self._reset_autorcorrelation()
                self.epoch += 1
            self.pca_computed = True

    # -- persistence and devices ------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        """What the buffers do not hold: the running statistics and whether an eigenspace exists."""
        return {
            "running": self.running.state_dict(),
            "has_eigenspace": self._has_eigenspace,
            "pca_computed": self.pca_computed,
            "centering": self._centering,
            "epoch": self.epoch,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_extra_state`'s dict (called by ``load_state_dict``)."""
        self.running.load_state_dict(state["running"])
        self._has_eigenspace = bool(state["has_eigenspace"])
        self.pca_computed = bool(state["pca_computed"])
        self._centering = bool(state["centering"])
        self.epoch = int(state["epoch"])

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # The reduced projection is (C, k) with k chosen by the data, so a fresh
        # layer's (C, C) buffer takes the saved shape before the copy.
        key = prefix + "reduced_transformation_matrix"
        saved = state_dict.get(key)
        fs_dim = int(self.eigenvalues.shape[0])
        if isinstance(saved, torch.Tensor) and saved.dim() == 2 and saved.shape[0] == fs_dim:
            if 1 <= saved.shape[1] <= fs_dim:
                self.reduced_transformation_matrix = self.reduced_transformation_matrix.new_empty(saved.shape)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self.fs_dim = fs_dim
        self.in_dim = int(self.reduced_transformation_matrix.shape[1])
        self.sat = round(100.0 * self.in_dim / self.fs_dim, 4)

    def _apply(self, fn: Any, recurse: bool = True) -> LinearPCALayer:
        # The running statistics follow the module's device but stay float64
        # (module.half() must not round them).
        super()._apply(fn, recurse)
        probe = fn(torch.empty(0, dtype=torch.float64, device=self.running.device))
        if probe.device != self.running.device:
            self.running.to(probe.device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gather statistics (training) or project (eval).

        Parameters
        ----------
        x : torch.Tensor
            ``(..., in_features)``.

        Returns
        -------
        torch.Tensor
            ``x`` unchanged in training; its projection in eval.
        """
        if self.training:
            self.pca_computed = False
            self._update_autorcorrelation(x.detach().reshape(-1, x.shape[-1]).unsqueeze(-1))
            return x
        self._refresh()
        if not self._has_eigenspace:
            return x
        mean = self.mean.to(x.device, x.dtype) if self._centering else None
        if self.keepdim:
            proj = self.transformation_matrix.to(x.device, x.dtype)
            return x @ proj.t() if mean is None else (x - mean) @ proj.t() + mean
        reduced = self.reduced_transformation_matrix.to(x.device, x.dtype)
        return x @ reduced if mean is None else (x - mean) @ reduced


class Conv2DPCALayer(LinearPCALayer):
    """PCA layer for conv feature maps: each spatial position is a sample.

    In eval mode the projection is applied as a 1x1 convolution
    (``self.convolution``).

    Parameters
    ----------
    in_filters : int
        Number of channels.
    threshold : float, default 0.99
    verbose : bool, default True
    gradient_epoch_start : int, default 20
        Kept for API compatibility (not used).
    centering : bool, default False
    downsampling : int, optional
        Resize maps to this size (nearest neighbour) before gathering statistics.
    """

    def __init__(
        self,
        in_filters: int,
        threshold: float = 0.99,
        verbose: bool = True,
        gradient_epoch_start: int = 20,
        centering: bool = False,
        downsampling: int | None = None,
    ) -> None:
        self.downsampling = downsampling
        super().__init__(
            in_features=in_filters,
            threshold=threshold,
            keepdim=True,
            verbose=verbose,
            gradient_epoch_start=gradient_epoch_start,
            centering=centering,
        )
        self.convolution = nn.Conv2d(in_filters, in_filters, kernel_size=1, stride=1, bias=True)
        self._load_convolution()
        if verbose:
            log.info("added Conv2D PCA layer %s", self.name)

    def _load_convolution(self) -> None:
        conv = getattr(self, "convolution", None)
        if conv is None:
            return
        with torch.no_grad():
            weight = self.transformation_matrix.to(conv.weight.device)
            conv.weight.copy_(weight[:, :, None, None])
            if self._centering:
                # P (x - m) + m == P x + (m - P m)
                mean = self.mean.to(conv.weight.device)
                conv.bias.copy_(mean - weight @ mean)
            else:
                conv.bias.zero_()

    def _compute_pca_matrix(self) -> None:
        super()._compute_pca_matrix()
        self._load_convolution()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gather channelwise statistics (training) or project with a 1x1 conv (eval).

        Parameters
        ----------
        x : torch.Tensor
            ``(N, C, H, W)``.

        Returns
        -------
        torch.Tensor
        """
        if self.training:
            if x.dim() != 4:
                # Without this an unbatched (C, H, W) map is read as C=H channels: a misleading error.
                raise ValueError(
                    f"{type(self).__name__} gathers statistics from (N, C, H, W) feature maps, got shape {tuple(x.shape)}"
                )
            self.pca_computed = False
            x1 = x.detach()
            if self.downsampling is not None:
                x1 = interpolate(x1, size=self.downsampling, mode="nearest")
            self._update_autorcorrelation(as_channel_view(x1))
            return x
        self._refresh()
        if not self._has_eigenspace:
            return x
        return self.convolution(x)


def _pca_layers(network: nn.Module) -> list[LinearPCALayer]:
    return [m for m in network.modules() if isinstance(m, LinearPCALayer)]


def _set_thresholds(
    threshold: float, network: nn.Module, linear_prefix: str
) -> tuple[list[LinearPCALayer], list[float], list[int], list[int], list[str]]:
    """Set every PCA layer's threshold; return the layers and their sat, dims and names.

    Names count conv and linear layers separately: ``Conv-<i>`` and
    ``<linear_prefix>-<i>`` (delve's two helpers use different linear prefixes).
    """
    layers = _pca_layers(network)
    sat, in_dims, fs_dims, names = [], [], [], []
    counts = {"lin": 0, "conv": 0}
    for module in layers:
        module.threshold = threshold
        sat.append(module.sat)
        in_dims.append(module.in_dim)
        fs_dims.append(module.fs_dim)
        kind, prefix = ("conv", "Conv") if isinstance(module, Conv2DPCALayer) else ("lin", linear_prefix)
        names.append(f"{prefix}-{counts[kind]}")
        counts[kind] += 1
    return layers, sat, in_dims, fs_dims, names


def change_all_pca_layer_thresholds(
    threshold: float, network: nn.Module, verbose: bool = False
) -> tuple[list[float], list[int], list[int], list[str]]:
    """Set the threshold of every PCA layer in ``network``.

    Parameters
    ----------
    threshold : float
    network : nn.Module
    verbose : bool, default False
        Log each change.

    Returns
    -------
    sat, in_dims, fs_dims, names : lists
        Per PCA layer, in ``network.modules()`` order: saturation in percent,
        kept dimension, feature-space dimension and a name (``Conv-<i>`` or
        ``Lin-<i>``).
    """
    layers, sat, in_dims, fs_dims, names = _set_thresholds(threshold, network, "Lin")
    if verbose:
        for module in layers:
            log.info("changed threshold of %s to %s", module.name, threshold)
    return sat, in_dims, fs_dims, names


def change_all_pca_layer_thresholds_and_inject_random_directions(
    threshold: float,
    network: nn.Module,
    verbose: bool = False,
    device: str | torch.device = "cpu",
    include_names: bool = False,
) -> tuple[list, list, list] | tuple[list, list, list, list]:
    """Set every PCA layer's threshold, then replace its projection by a random one.

    Each layer keeps the dimension its threshold selects, but projects onto a
    random subspace of that dimension (a control for ablation studies).

    Parameters
    ----------
    threshold : float
    network : nn.Module
    verbose : bool, default False
    device : str or torch.device, default 'cpu'
        Device of the new projection matrices.
    include_names : bool, default False
        Also return layer names (``Linear-<i>`` / ``Conv-<i>``).

    Returns
    -------
    tuple of lists
        ``(sat, in_dims, fs_dims)``, plus ``names`` when ``include_names``.
    """
    layers, sat, in_dims, fs_dims, names = _set_thresholds(threshold, network, "Linear")
    for module in layers:
        basis = rvs(module.fs_dim)[:, : module.in_dim]
        projection = torch.from_numpy((basis @ basis.T).astype(np.float32)).to(device)
        module.transformation_matrix = projection
        module.reduced_transformation_matrix = torch.from_numpy(basis.astype(np.float32)).to(device)
        if isinstance(module, Conv2DPCALayer):
            module.convolution = module.convolution.to(device)
            module._load_convolution()
        if verbose:
            log.info("changed threshold of %s to %s and injected random directions", module.name, threshold)
    if include_names:
        return sat, in_dims, fs_dims, names
    return sat, in_dims, fs_dims


def change_all_pca_layer_centering(
    centering: bool, network: nn.Module, verbose: bool = False, downsampling: int | None = None
) -> None:
    """Switch centering on or off for every PCA layer in ``network``.

    Parameters
    ----------
    centering : bool
    network : nn.Module
    verbose : bool, default False
        Log each change.
    downsampling : int, optional
        If given, also set the ``downsampling`` of every :class:`Conv2DPCALayer`.
    """
    for module in _pca_layers(network):
        module.centering = centering
        if downsampling is not None and isinstance(module, Conv2DPCALayer):
            module.downsampling = downsampling
        if verbose:
            log.info("set centering of %s to %s", module.name, centering)
