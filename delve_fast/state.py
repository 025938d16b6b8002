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
"""

from __future__ import annotations

from typing import Any

import torch

from delve_fast import ops

__all__ = ["CovarianceState"]

#: Version of the :meth:`CovarianceState.state_dict` layout.
STATE_DICT_VERSION = 1
_STATE_KEYS = ("count", "mean", "m2")


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
        Samples folded in since the last reset (kept on the host, so an update
        never waits for the GPU).
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
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None
        if n_features is not None:
            self._allocate(n_features)

    # ----------------------------------------------------------- inspection
    @property
    def n_features(self) -> int | None:
        """Feature count ``C``, once known."""
        return None if self.mean is None else int(self.mean.shape[0])

    @property
    def is_empty(self) -> bool:
        """Whether no sample has been folded in since the last reset."""
        return self.count == 0

    def __repr__(self) -> str:
        device = "unset" if self.device is None else str(self.device)
        return f"{type(self).__name__}(n_features={self.n_features}, count={self.count}, device={device})"

    # ------------------------------------------------------------- mutation
    def _allocate(self, c: int) -> None:
        self.mean = torch.zeros(c, dtype=torch.float64, device=self.device)
        self.m2 = torch.zeros(c, c, dtype=torch.float64, device=self.device)

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
        if self.device is None:
            self.device = x.device
        elif x.device != self.device:
            x = x.to(self.device, non_blocking=True)
        c = int(x.shape[1])
        self._check_width(c, "batch")
        if self.m2 is None:
            self._allocate(c)
        ops.cov_update_(self.mean, self.m2, x, self.count, backend=self.backend, precision=self.precision)
        self.count += int(x.shape[0]) * int(x.shape[2])

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
            state copies ``other``.

        Raises
        ------
        ValueError
            If both widths are known and differ.
        """
        if not isinstance(other, CovarianceState):
            raise TypeError(f"merge expects a CovarianceState, got {type(other).__name__}")
        if other.n_features is not None:
            self._check_width(other.n_features, "the merged state")
        if other.count == 0:
            return self
        if self.device is None:
            self.device = other.device
        other_mean = other.mean.to(self.device, torch.float64)
        other_m2 = other.m2.to(self.device, torch.float64)
        if self.count == 0:
            if self.m2 is None:
                self._allocate(int(other_mean.shape[0]))
            self.mean.copy_(other_mean)
            self.m2.copy_(other_m2)
            self.count = other.count
            return self
        if other is self:
            other_mean, other_m2 = other_mean.clone(), other_m2.clone()
        n_a, n_b = self.count, other.count
        n = n_a + n_b
        delta = other_mean - self.mean
        self.mean.add_(delta, alpha=n_b / n)
        # outer(d, d) is bit-symmetric (d_i * d_j == d_j * d_i), so m2 stays so.
        self.m2.add_(other_m2).add_(torch.outer(delta, delta), alpha=n_a * n_b / n)
        self.count = n
        return self

    def reset(self) -> None:
        """Forget every sample; a state built with ``n_features`` keeps its (zeroed) tensors."""
        self.count = 0
        if self._fixed_width is not None:
            self.mean.zero_()
            self.m2.zero_()
        else:
            self.mean = None
            self.m2 = None

    def to(self, device: str | torch.device) -> CovarianceState:
        """Move the state to ``device`` (in place) and return ``self``."""
        self.device = _as_device(device)
        if self.mean is not None:
            self.mean = self.mean.to(self.device)
            self.m2 = self.m2.to(self.device)
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
        if self.count == 0 or self.m2 is None:
            raise RuntimeError("the covariance state has no samples yet; update it with a batch first")
        cov = self.m2 / self.count
        if not center:
            cov = cov + torch.outer(self.mean, self.mean)
        return cov

    # ---------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """The state as plain values: ``count`` (int), ``mean`` and ``m2`` (tensors or None), ``version``.

        The tensors are copies on the state's device, so later updates do not
        change a saved dict; the dict can be passed to :func:`torch.save`
        (move it to the CPU first if it will be loaded on a machine without
        that device, or load with ``map_location``).
        """
        return {
            "version": STATE_DICT_VERSION,
            "count": int(self.count),
            "mean": None if self.mean is None else self.mean.detach().clone(),
            "m2": None if self.m2 is None else self.m2.detach().clone(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict`; tensors are copied to this state's device.

        Raises
        ------
        KeyError
            If an entry is missing.
        ValueError
            If the shapes are inconsistent, the count is negative, or the
            width differs from this state's fixed ``n_features``.
        """
        missing = [key for key in _STATE_KEYS if key not in state_dict]
        if missing:
            raise KeyError(f"covariance state_dict lacks {', '.join(missing)}; it has {sorted(state_dict)}")
        count, mean, m2 = (state_dict[key] for key in _STATE_KEYS)
        if isinstance(count, torch.Tensor):
            count = int(count.item())
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"state_dict count must be an int >= 0, got {count!r}")
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
        if self.device is None:
            self.device = mean.device
        if self.m2 is None or self.n_features != c:
            self._allocate(c)
        self.mean.copy_(mean.to(self.device, torch.float64))
        self.m2.copy_(m2.to(self.device, torch.float64))
        self.count = count
