"""delve's ``TorchCovarianceMatrix`` on top of :class:`delve_fast.state.CovarianceState`."""

from __future__ import annotations

import warnings

import torch

from delve_fast import ops
from delve_fast.state import CovarianceState
from delve_fast.views import as_channel_view

__all__ = ["TorchCovarianceMatrix", "resolve_device", "DEFAULT_DEVICE"]

DEFAULT_MAX_SAVED_SAMPLES = 4096


class _DefaultDevice(str):
    """delve's default ``device='cuda:0'``, told apart from a user's explicit ``'cuda:0'`` by its type."""

    __slots__ = ()


#: The documented default ``device``: equal to ``"cuda:0"``, but recognisably not passed by the user.
DEFAULT_DEVICE: str = _DefaultDevice("cuda:0")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn a user's ``device`` argument into a usable :class:`torch.device`.

    A CUDA device on a machine without CUDA falls back to the CPU with a
    warning instead of failing later inside a forward hook. The warning says
    whether the device was the user's request or delve's default.

    Parameters
    ----------
    device : str, torch.device or None
        ``None`` means CPU; :data:`DEFAULT_DEVICE` is the default of the
        tracker and of :class:`TorchCovarianceMatrix`.

    Returns
    -------
    torch.device
    """
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        if isinstance(device, _DefaultDevice):
            message = (
                f"device {str(device)!r} (delve's default) is not available: CUDA is not available; "
                "delve_fast computes on the CPU (pass device='cpu' to silence this warning)"
            )
        else:
            message = f"device {str(device)!r} was requested but CUDA is not available; delve_fast computes on the CPU"
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        return torch.device("cpu")
    return dev


class TorchCovarianceMatrix:
    r"""Running covariance of a layer's features, kept in float64.

    Implements :math:`Q = \frac{1}{n}\sum_b A_b^T A_b - \bar A \otimes \bar A`
    from delve's documentation, but holds it as a running mean and a centred
    sum of outer products merged batch by batch, so a feature whose mean is far
    larger than its spread keeps all its digits.

    The running statistics live in :attr:`state`, a
    :class:`delve_fast.CovarianceState`, so two of these can be merged
    (``a.state.merge(b.state)``) and checkpointed (``a.state.state_dict()``).

    Parameters
    ----------
    bias : bool, default False
        Kept for API compatibility with delve. As in delve's documented formula
        the covariance is always normalised by ``n`` (not ``n - 1``).
    device : str or torch.device, default "cuda:0"
        Where the state lives. Falls back to the CPU with a warning when CUDA
        is absent.
    save_data : bool, default False
        Keep a bounded store of samples (for the ``embed`` stat).
    backend : str, optional
        ``auto``, ``cpp`` or ``torch`` (keyword only).
    max_saved_samples : int, default 4096
        Upper bound of the sample store when ``save_data`` is on.
    precision : {"double", "mixed"}, default "double"
        ``"mixed"`` forms each tile's product in float32 on nearly centred
        data and accumulates in float64 (keyword only; see ``docs/precision.md``).
    """

    def __init__(
        self,
        bias: bool = False,
        device: str | torch.device = DEFAULT_DEVICE,
        save_data: bool = False,
        *,
        backend: str | None = None,
        max_saved_samples: int = DEFAULT_MAX_SAVED_SAMPLES,
        precision: str = "double",
    ) -> None:
        self.bias = bias
        self.precision = ops.check_precision(precision)
        self.device = resolve_device(device)
        self.save_data = save_data
        self.backend = backend
        if max_saved_samples < 0:
            raise ValueError(f"max_saved_samples must be >= 0, got {max_saved_samples}")
        self.max_saved_samples = int(max_saved_samples)
        #: The running statistics, a :class:`delve_fast.CovarianceState` (mergeable, checkpointable).
        self.state = CovarianceState(device=self.device, backend=backend, precision=self.precision)
        # Stored rows and, per row, whether its batch was folded in (False for a
        # batch the state skipped as non-finite). The flag is decided on the
        # device, so storing never waits for a GPU; rows are filtered when read.
        self._saved_rows: torch.Tensor | None = None
        self._saved_valid: torch.Tensor | None = None

    @property
    def saved_samples(self) -> torch.Tensor | None:
        """The stored samples (``(n, C)`` float64) of the batches folded in, for ``embed``; None if none."""
        if self._saved_rows is None:
            return None
        return self._saved_rows[self._saved_valid]

    @saved_samples.setter
    def saved_samples(self, rows: torch.Tensor | None) -> None:
        self._saved_rows = rows
        self._saved_valid = None if rows is None else torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)

    @property
    def saved_nbytes(self) -> int:
        """Bytes of the sample store (0 without ``save_data``)."""
        return 0 if self._saved_rows is None else self._saved_rows.numel() * self._saved_rows.element_size()

    def reset(self) -> None:
        """Forget every sample seen so far."""
        self.state.reset()
        self.saved_samples = None

    # delve's tracker and user code read these private names.
    @property
    def _tlen(self) -> int:
        return self.state.count

    @property
    def _mean(self) -> torch.Tensor | None:
        return self.state.mean

    @property
    def _m2(self) -> torch.Tensor | None:
        return self.state.m2

    @property
    def _avg(self) -> torch.Tensor | None:
        # delve keeps the running *sum* of the samples under this name (fix() divides it by _tlen).
        mean = self.state.mean
        return None if mean is None else mean * self.state.count

    @property
    def _input_dim(self) -> int | None:
        return self.state.n_features

    @property
    def is_initialized(self) -> bool:
        """Whether any batch has been folded in since the last reset."""
        return self.state.m2 is not None

    @property
    def _cov_mtx(self) -> torch.Tensor | None:
        # delve's tracker and user code test ``_cov_mtx is None`` for "empty".
        return self.state.m2

    @property
    def n_samples(self) -> int:
        """Number of samples folded in since the last reset."""
        return self.state.count

    @property
    def dim(self) -> int | None:
        """Feature dimension, once known."""
        return self.state.n_features

    def update(self, x: torch.Tensor, vae: bool = False) -> None:
        """Fold a ``(n_samples, n_features)`` batch into the state.

        Parameters
        ----------
        x : torch.Tensor
            2-D data matrix with one sample per row, or 1-D single sample.
        vae : bool, default False
            Accepted for signature compatibility with delve; ignored.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"update expects a torch.Tensor of shape (n_samples, n_features), got {type(x).__name__}")
        if x.dim() > 2:
            raise ValueError(
                f"update expects a (n_samples, n_features) matrix, got shape {tuple(x.shape)}; "
                "use update_view for (N, C, S) batches"
            )
        self.update_view(as_channel_view(x))

    def update_view(self, x: torch.Tensor) -> None:
        """Fold a batch given as an ``(N, C, S)`` view (``N * S`` samples of ``C`` features).

        Parameters
        ----------
        x : torch.Tensor
            Any strides and floating dtype; no copy is made on the state's device.
        """
        if x.dim() != 3:
            raise ValueError(f"update_view expects an (N, C, S) tensor, got shape {tuple(x.shape)}")
        # One lock for the state and its sample store, so concurrent hooks keep them in step.
        with self.state._lock:
            counts = self.state.counts
            skipped_before = None if counts is None or not self.save_data else counts[1].clone()
            self.state.update(x)
            if self.save_data:
                # Samples of a batch the state left out (NaN or Inf) are flagged, on the device.
                skipped_now = self.state.counts[1]
                folded = skipped_now == 0 if skipped_before is None else skipped_now == skipped_before
                self._store_samples(x, folded)

    def _store_samples(self, x: torch.Tensor, folded: torch.Tensor) -> None:
        room = self.max_saved_samples - (0 if self._saved_rows is None else self._saved_rows.shape[0])
        if room <= 0:
            return
        # copy=True: with a float64 activation on the state's device the reshape
        # and cast can both be views, and a later in-place op (ReLU(inplace=True))
        # would then rewrite the stored samples.
        rows = x.detach().permute(0, 2, 1).reshape(-1, x.shape[1])[:room].to(self.device, torch.float64, copy=True)
        valid = folded.to(self.device).expand(rows.shape[0])
        if self._saved_rows is None:
            self._saved_rows, self._saved_valid = rows, valid.clone()
        else:
            self._saved_rows = torch.cat([self._saved_rows, rows])
            self._saved_valid = torch.cat([self._saved_valid, valid])

    def mean(self) -> torch.Tensor:
        """Return the running mean, ``(C,)`` float64."""
        self._require_data()
        return self.state.mean.clone()

    def fix(self, center: bool = True) -> torch.Tensor:
        """Return the covariance matrix (``center=True``) or the raw second moment.

        Parameters
        ----------
        center : bool, default True
            If False, return :math:`\\frac1n\\sum x x^T` without subtracting
            the mean outer product, as delve does.

        Returns
        -------
        torch.Tensor
            ``(C, C)`` float64, symmetric.

        Raises
        ------
        RuntimeError
            If no sample has been seen since the last reset.
        """
        self._require_data()
        return self.state.covariance(center=center)

    def _require_data(self) -> None:
        if self.state.m2 is None or self.state.count == 0:
            raise RuntimeError("the covariance matrix has no samples yet; run a forward pass first")
