"""CovarianceState: a streaming, mergeable, numerically stable float64 covariance.

The state is the triple ``(count, mean, m2)``: the number of samples seen,
their mean and the centred sum of outer products
:math:`m_2 = \\sum_k (x_k - \\bar x)(x_k - \\bar x)^T`. A batch is folded in by
:func:`delve_fast.ops.cov_update_` (compiled C++/CUDA or the pure-torch twin)
and two states are combined with the pairwise rule of Chan, Golub and LeVeque,
which is the same algebra: so a batch update, two threads' partial states, a
checkpoint restore and an all-reduce across processes all agree. Holding the
centred sum instead of :math:`\\sum x x^T` keeps every digit when a feature's
mean is far larger than its spread.

The counts (samples folded in, batches skipped because they held a NaN or an
Inf) live in a small float64 tensor beside ``mean`` on the state's device:
the op reads and advances them there, so an update never waits for a GPU.
Reading :attr:`CovarianceState.count` copies them to the host (a sync).
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from delve_fast import ops
from delve_fast._reference import COUNTS_LEN

__all__ = ["CovarianceState", "StateTooLargeError", "state_nbytes"]

#: Version of the :meth:`CovarianceState.state_dict` layout. ``skipped_batches``
#: was added later as an optional key (a dict without it loads as 0 skipped).
STATE_DICT_VERSION = 1
_STATE_KEYS = ("count", "mean", "m2")
#: Exact integer range of the float64 counts.
_MAX_COUNT = 2**53


class StateTooLargeError(ValueError):
    """A layer's covariance state would exceed the tracker's ``max_state_bytes`` budget."""


def state_nbytes(n_features: int) -> int:
    """Bytes of one :class:`CovarianceState` of ``n_features`` features: float64 ``m2``, ``mean`` and counts.

    Parameters
    ----------
    n_features : int
        ``C``; the state holds ``C * C + C + 2`` float64 values.

    Returns
    -------
    int
    """
    c = int(n_features)
    return 8 * (c * c + c + COUNTS_LEN)


def _as_device(device: str | torch.device | None) -> torch.device | None:
    if device is None:
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}: {exc}") from None


class CovarianceState:
    r"""Streaming float64 covariance of ``C`` features: count, mean and centred sum of outer products.

    Feed it batches with :meth:`update`, combine states gathered elsewhere
    (other threads, processes, data shards) with :meth:`merge`, read the
    population covariance :math:`\frac{1}{n}\sum_k (x_k - \bar x)(x_k - \bar x)^T`
    with :meth:`covariance`, and checkpoint it with :meth:`state_dict` /
    :meth:`load_state_dict`. The state is float64 whatever the input dtype.

    Parameters
    ----------
    n_features : int, optional
        Number of features ``C``. When given, the tensors are allocated now and
        the width is fixed (a batch or checkpoint of another width is an
        error, and :meth:`reset` keeps the tensors). When omitted, the first
        batch sets the width, and :meth:`reset` forgets it.
    device : str or torch.device, optional
        Where the state lives; batches on another device are moved there.
        By default the state lives where its first batch does (the CPU when
        ``n_features`` is given).
    backend : {"auto", "cpp", "torch"}, optional
        Implementation of the update op (keyword only); see
        :func:`delve_fast.backend_info`.
    precision : {"double", "mixed"}, default "double"
        Keyword only. ``"mixed"`` forms each tile's product in float32 on
        nearly centred data and accumulates it in float64 (see
        ``docs/precision.md``).

    Attributes
    ----------
    count : int
        Samples folded in since the last reset. They are counted on the
        state's device by the op itself; reading this copies them to the host
        (a device sync on a GPU).
    skipped_batches : int
        Batches left out since the last reset because they held a NaN or an
        Inf (also read from the device).
    counts : torch.Tensor or None
        ``(2,)`` float64 ``[samples, skipped batches]`` on the state's device.
    mean : torch.Tensor or None
        ``(C,)`` float64 running mean; ``None`` until the width is known.
    m2 : torch.Tensor or None
        ``(C, C)`` float64 centred sum of outer products, exactly symmetric.

    Examples
    --------
    >>> import torch
    >>> from delve_fast import CovarianceState
    >>> a, b = CovarianceState(), CovarianceState()
    >>> a.update(torch.randn(100, 3))
    >>> b.update(torch.randn(50, 3) + 10)
    >>> merged = a.merge(b)          # as if one state had seen all 150 rows
    >>> merged.count, tuple(merged.covariance().shape)
    (150, (3, 3))
    """

    def __init__(
        self,
        n_features: int | None = None,
        device: str | torch.device | None = None,
        *,
        backend: str | None = None,
        precision: str = "double",
    ) -> None:
        if n_features is not None:
            if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
                raise ValueError(f"n_features must be an int >= 1 or None, got {n_features!r}")
        self._fixed_width = n_features
        self.device = _as_device(device)
        if n_features is not None and self.device is None:
            self.device = torch.device("cpu")
        self.backend = backend
        self.precision = ops.check_precision(precision)
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None
        # Serialises updates: hooks of nn.DataParallel replicas (or any threads)
        # may fold batches into one state at once. Re-entrant, so a merge of
        # the state into itself and TorchCovarianceMatrix's wrapper can nest.
        self._lock = threading.RLock()
        if n_features is not None:
            self._allocate(n_features)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]  # a lock cannot be pickled or deep-copied
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # ----------------------------------------------------------- inspection
    @property
    def n_features(self) -> int | None:
        """Feature count ``C``, once known."""
        return None if self.mean is None else int(self.mean.shape[0])

    @property
    def count(self) -> int:
        """Samples folded in since the last reset (read from the state's device)."""
        return 0 if self.counts is None else int(self.counts[0].item())

    @count.setter
    def count(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
            raise ValueError(f"count must be an int in [0, 2**53], got {value!r}")
        if self.counts is None:
            if value != 0:
                raise ValueError(f"cannot set count={value} on a state whose width is not known yet")
            return
        self.counts[0] = float(value)

    @property
    def skipped_batches(self) -> int:
        """Batches left out since the last reset because they held a NaN or an Inf."""
        return 0 if self.counts is None else int(self.counts[1].item())

    @property
    def nbytes(self) -> int:
        """Bytes held by the state's tensors (0 before the width is known)."""
        return 0 if self.mean is None else state_nbytes(int(self.mean.shape[0]))

    @property
    def is_empty(self) -> bool:
        """Whether no sample has been folded in since the last reset."""
        return self.count == 0

    def __repr__(self) -> str:
        device = "unset" if self.device is None else str(self.device)
        skipped = self.skipped_batches
        extra = f", skipped_batches={skipped}" if skipped else ""
        return f"{type(self).__name__}(n_features={self.n_features}, count={self.count}{extra}, device={device})"

    # ------------------------------------------------------------- mutation
    def _allocate(self, c: int) -> None:
        # Normal tensors even under torch.inference_mode(): an inference tensor
        # could not be updated by the next forward pass outside that mode.
        with torch.inference_mode(False):
            self.mean = torch.zeros(c, dtype=torch.float64, device=self.device)
            self.m2 = torch.zeros(c, c, dtype=torch.float64, device=self.device)
            self.counts = torch.zeros(COUNTS_LEN, dtype=torch.float64, device=self.device)

    def _check_width(self, c: int, what: str) -> None:
        known = self.n_features if self.n_features is not None else self._fixed_width
        if known is not None and c != known:
            raise ValueError(f"{what} has {c} features but the state has {known}")

    def update(self, x: torch.Tensor) -> None:
        """Fold a batch into the state.

        Parameters
        ----------
        x : torch.Tensor
            ``(C,)`` one sample, ``(N, C)`` one sample per row, or ``(N, C, S)``
            with ``N * S`` samples of ``C`` features (a conv map's
            ``(N, C, H*W)`` view, tokens as ``(B, C, T)``). Any strides and any
            float dtype; integers are cast to float64. Nothing is copied when
            ``x`` is already on the state's device.

        A batch that holds a NaN or an Inf is left out (the state keeps
        every bit) and counted in :attr:`skipped_batches`. Concurrent calls
        from several threads are serialised.

        Raises
        ------
        ValueError
            If ``x`` has another rank or a width other than the state's.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"update expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 1:
            x = x.unsqueeze(0).unsqueeze(-1)
        elif x.dim() == 2:
            x = x.unsqueeze(-1)
        elif x.dim() != 3:
            raise ValueError(
                f"update expects a (C,), (N, C) or (N, C, S) tensor, got shape {tuple(x.shape)}; "
                "view 4-D conv maps with delve_fast.views.as_channel_view"
            )
        if not x.is_floating_point():
            x = x.to(torch.float64)
        with self._lock:
            if self.device is None:
                self.device = x.device
            elif x.device != self.device:
                x = x.to(self.device, non_blocking=True)
            c = int(x.shape[1])
            self._check_width(c, "batch")
            if self.m2 is None:
                self._allocate(c)
            ops.cov_update_(self.mean, self.m2, self.counts, x, backend=self.backend, precision=self.precision)

    def merge(self, other: CovarianceState) -> CovarianceState:
        r"""Fold another state into this one (Chan's pairwise rule) and return ``self``.

        With :math:`\delta = \bar x_b - \bar x_a` and :math:`n = n_a + n_b`:
        :math:`\bar x = \bar x_a + \delta\, n_b / n` and
        :math:`m_2 = m_{2,a} + m_{2,b} + \delta\delta^T n_a n_b / n`. The
        result equals one state that saw both sets of samples (up to
        rounding), and ``m2`` stays exactly symmetric. ``other`` is not changed.

        Parameters
        ----------
        other : CovarianceState
            Merging an empty state changes nothing; merging into an empty
            state copies ``other``. Skipped-batch counts add up.

        Raises
        ------
        ValueError
            If both widths are known and differ.
        """
        if not isinstance(other, CovarianceState):
            raise TypeError(f"merge expects a CovarianceState, got {type(other).__name__}")
        # Snapshot other under its own lock, then update self under ours: one
        # lock at a time, so a.merge(b) and b.merge(a) in two threads cannot deadlock.
        with other._lock:
            if other.n_features is None:
                return self
            self._check_width(other.n_features, "the merged state")
            n_b, skipped_b = (int(v) for v in other.counts.tolist())
            if n_b == 0 and skipped_b == 0:
                return self
            other_mean, other_m2 = other.mean.clone(), other.m2.clone()
        with self._lock:
            self._check_width(int(other_mean.shape[0]), "the merged state")
            if self.device is None:
                self.device = other.device
            other_mean = other_mean.to(self.device, torch.float64)
            other_m2 = other_m2.to(self.device, torch.float64)
            if self.m2 is None:
                self._allocate(int(other_mean.shape[0]))
            n_a = self.count
            if n_b == 0:
                pass
            elif n_a == 0:
                self.mean.copy_(other_mean)
                self.m2.copy_(other_m2)
            else:
                n = n_a + n_b
                delta = other_mean - self.mean
                self.mean.add_(delta, alpha=n_b / n)
                # outer(d, d) is bit-symmetric (d_i * d_j == d_j * d_i), so m2 stays so.
                self.m2.add_(other_m2).add_(torch.outer(delta, delta), alpha=n_a * n_b / n)
            self.counts += torch.tensor([float(n_b), float(skipped_b)], dtype=torch.float64).to(self.device)
        return self

    def reset(self) -> None:
        """Forget every sample and skipped batch; a state built with ``n_features`` keeps its (zeroed) tensors."""
        with self._lock:
            if self._fixed_width is not None:
                self.mean.zero_()
                self.m2.zero_()
                self.counts.zero_()
            else:
                self.mean = None
                self.m2 = None
                self.counts = None

    def to(self, device: str | torch.device) -> CovarianceState:
        """Move the state to ``device`` (in place) and return ``self``."""
        with self._lock:
            self.device = _as_device(device)
            if self.mean is not None:
                with torch.inference_mode(False):
                    self.mean = self.mean.to(self.device)
                    self.m2 = self.m2.to(self.device)
                    self.counts = self.counts.to(self.device)
        return self

    # -------------------------------------------------------------- results
    def covariance(self, center: bool = True) -> torch.Tensor:
        r"""Population covariance :math:`m_2 / n` (delve's normalisation), or the second moment.

        Parameters
        ----------
        center : bool, default True
            If False, return the uncentred second moment
            :math:`\frac1n\sum_k x_k x_k^T = m_2/n + \bar x \bar x^T`.

        Returns
        -------
        torch.Tensor
            ``(C, C)`` float64, a new tensor on the state's device.

        Raises
        ------
        RuntimeError
            If the state holds no sample.
        """
        count = self.count
        if count == 0 or self.m2 is None:
            raise RuntimeError("the covariance state has no samples yet; update it with a batch first")
        cov = self.m2 / count
        if not center:
            cov = cov + torch.outer(self.mean, self.mean)
        return cov

    # ---------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """The state as plain values: ``count`` and ``skipped_batches`` (ints), ``mean`` and ``m2`` (tensors or None), ``version``.

        The tensors are copies on the state's device, so later updates do not
        change a saved dict; the dict can be passed to :func:`torch.save`
        (move it to the CPU first if it will be loaded on a machine without
        that device, or load with ``map_location``).
        """
        with self._lock:
            return {
                "version": STATE_DICT_VERSION,
                "count": self.count,
                "skipped_batches": self.skipped_batches,
                "mean": None if self.mean is None else self.mean.detach().clone(),
                "m2": None if self.m2 is None else self.m2.detach().clone(),
            }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict`; tensors are copied to this state's device.

        A dict without ``skipped_batches`` (saved before it existed) loads with 0.

        Raises
        ------
        KeyError
            If an entry is missing.
        ValueError
            If the shapes are inconsistent, a count is negative, or the
            width differs from this state's fixed ``n_features``.
        """
        missing = [key for key in _STATE_KEYS if key not in state_dict]
        if missing:
            raise KeyError(f"covariance state_dict lacks {', '.join(missing)}; it has {sorted(state_dict)}")
        count, mean, m2 = (state_dict[key] for key in _STATE_KEYS)
        skipped = state_dict.get("skipped_batches", 0)
        counted = []
        for what, value in (("count", count), ("skipped_batches", skipped)):
            if isinstance(value, torch.Tensor):
                value = int(value.item())
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
                raise ValueError(f"state_dict {what} must be an int in [0, 2**53], got {value!r}")
            counted.append(value)
        count, skipped = counted
        if mean is None or m2 is None:
            if count != 0:
                raise ValueError(f"state_dict has count={count} but no mean or m2")
            self.reset()
            return
        c = int(mean.shape[0]) if mean.dim() == 1 else -1
        if c < 1 or tuple(m2.shape) != (c, c):
            raise ValueError(
                f"state_dict shapes do not fit together: mean {tuple(mean.shape)}, m2 {tuple(m2.shape)} "
                "(expected (C,) and (C, C))"
            )
        if self._fixed_width is not None and c != self._fixed_width:
            raise ValueError(
                f"state_dict has {c} features (mean {tuple(mean.shape)}, m2 {tuple(m2.shape)}) "
                f"but this state has {self._fixed_width}"
            )
        with self._lock:
            if self.device is None:
                self.device = mean.device
            if self.m2 is None or self.n_features != c:
                self._allocate(c)
            self.mean.copy_(mean.to(self.device, torch.float64))
            self.m2.copy_(m2.to(self.device, torch.float64))
            self.counts.copy_(torch.tensor([float(count), float(skipped)], dtype=torch.float64))
