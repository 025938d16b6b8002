"""Layer statistics computed from covariance eigenvalues.

Every statistic the tracker reports, except ``embed`` and ``cov``, is a
function of the eigenvalues of a layer's covariance matrix (``trc`` also
equals their sum, but is read from the diagonal so it does not depend on the
eigen-solver). The tracker computes those eigenvalues once per layer and mode,
for every layer in one batched call, and hands them to the functions here.

All functions take eigenvalues sorted in descending order with negatives set to
zero, as :func:`delve_fast.ops.eigvalsh_desc` returns them. They accept NumPy
arrays or torch tensors and return Python numbers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from delve_fast._warn import warn_user

__all__ = [
    "STATS",
    "Stat",
    "StatContext",
    "spectra",
    "compute",
    "compute_layers",
    "STATMAP",
    "MODES",
    "SUPPORTED_STATS",
    "intrinsic_dimensionality",
    "saturation",
    "covariance_trace",
    "diagonal_trace",
    "log_determinant",
    "determinant",
    "embed",
    "compute_intrinsic_dimensionality",
    "compute_saturation",
    "IDIM_RULES",
    "effective_rank",
    "rankme",
    "participation_ratio",
    "stable_rank",
    "spectrum_alpha",
    "numerical_rank",
    "ALPHA_RANKS",
    "RANKME_EPS",
    "FewSamplesWarning",
    "warn_few_samples",
    "ARRAY_STATS",
]

#: The two recording modes, from ``module.training`` at forward time.
MODES: tuple[str, str] = ("train", "eval")

#: Shortfall beyond which the optional gap rule adds one direction (delve's PCA layers).
IDIM_GAP = 0.02

#: Accepted ``rule`` values of :func:`intrinsic_dimensionality`.
IDIM_RULES: tuple[str, ...] = ("delve", "gap")

#: Rounding allowance of a cumulative share, in units of ``n * eps`` for ``n``
#: eigenvalues: a float64 cumulative sum of ``n`` non-negative terms divided by
#: their (separately summed) total is within about ``2 * n * eps`` of the exact
#: share; 4 leaves a factor of two.
IDIM_SHARE_ULPS = 4


def _as_numpy(eigenvalues: Any) -> np.ndarray:
    if isinstance(eigenvalues, torch.Tensor):
        eigenvalues = eigenvalues.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(eigenvalues, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D array of eigenvalues, got shape {arr.shape}")
    return arr


def intrinsic_dimensionality(eigenvalues: Any, threshold: float = 0.99, *, rule: str = "delve") -> int:
    """Number of eigendirections needed to explain ``threshold`` of the variance.

    With ``p_k = (l_1 + ... + l_k) / sum(l)`` for eigenvalues in descending
    order, two rules are offered. A share counts as reaching the threshold
    when it is within ``4 * n * eps`` (``n`` eigenvalues, float64 ``eps``) of
    it, so rounding never decides: in exact arithmetic ``p_n = 1``, and with
    ``threshold=1.0`` the last share is therefore never counted as short,
    whichever backend summed it. For full-rank data ``threshold=1.0`` gives
    ``n - 1`` under ``"delve"`` (the shares ``p_1 .. p_{n-1}`` fall short of
    the whole variance) on every backend.

    ``"delve"`` (default)
        The number of ``k`` with ``p_k < threshold``. This is exactly what
        delve 0.1.50's tracker reports, so the numbers agree. It is 0 when the
        first direction alone explains ``threshold`` of the variance, and for
        a covariance with zero variance. delve's code means to return at least
        1 and to add one direction when the last counted ``p_k`` falls short of
        the threshold by more than 0.02, but both adjustments slice the
        already-truncated eigenvector matrix there, so neither changes the
        number it reports.
    ``"gap"``
        Those two adjustments applied: at least 1, plus one direction when
        ``threshold - p_last > 0.02`` (never beyond the number of
        eigenvalues). delve's PCA layers do apply them, and so do
        delve_fast's.

    Parameters
    ----------
    eigenvalues : array-like or torch.Tensor
        1-D, descending, non-negative.
    threshold : float, default 0.99
        Share of the total variance to explain.
    rule : {"delve", "gap"}, default "delve"

    Returns
    -------
    int
    """
    if rule not in IDIM_RULES:
        raise ValueError(f"rule={rule!r} is not supported; choose one of {', '.join(map(repr, IDIM_RULES))}")
    lam = _as_numpy(eigenvalues)
    dim = lam.shape[0]
    if dim == 0:
        raise ValueError("intrinsic dimensionality of an empty eigenvalue array is undefined")
    total = lam.sum()
    if not np.isfinite(total) or total <= 0.0:
        # delve's shares are 0/0 = NaN here: no comparison is true.
        return 0 if rule == "delve" else 1
    shares = np.cumsum(lam) / total
    below = shares < threshold - IDIM_SHARE_ULPS * dim * np.finfo(np.float64).eps
    count = int(below.sum())
    if rule == "delve":
        return count
    if count == 0:
        return 1
    if threshold - float(shares[below][-1]) > IDIM_GAP:
        count += 1
    return min(count, dim)


def saturation(eigenvalues: Any, threshold: float = 0.99, *, rule: str = "delve") -> float:
    """Layer saturation: intrinsic dimensionality divided by the feature count.

    Parameters
    ----------
    eigenvalues : array-like or torch.Tensor
        1-D, descending, non-negative; its length is the feature count.
    threshold : float, default 0.99
    rule : {"delve", "gap"}, default "delve"
        See :func:`intrinsic_dimensionality`.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    lam = _as_numpy(eigenvalues)
    return intrinsic_dimensionality(lam, threshold, rule=rule) / lam.shape[0]


def covariance_trace(cov: torch.Tensor | np.ndarray) -> float:
    """Trace of the covariance matrix (total variance).

    Parameters
    ----------
    cov : torch.Tensor or numpy.ndarray
        Square covariance matrix.

    Returns
    -------
    float
    """
    if isinstance(cov, torch.Tensor):
        return float(cov.diagonal().sum())
    return float(np.trace(np.asarray(cov, dtype=np.float64)))


def diagonal_trace(eigenvalues: Any) -> float:
    """Trace of the diagonalised covariance: the sum of its clamped eigenvalues.

    This is delve's ``dtrc``. It equals :func:`covariance_trace` up to rounding
    when no eigenvalue had to be clamped at zero.

    Parameters
    ----------
    eigenvalues : array-like or torch.Tensor
        1-D, non-negative.

    Returns
    -------
    float
    """
    return float(_as_numpy(eigenvalues).sum())


def log_determinant(eigenvalues: Any) -> float:
    """Natural log of the covariance determinant, from the eigenvalues.

    Parameters
    ----------
    eigenvalues : array-like or torch.Tensor
        1-D, non-negative.

    Returns
    -------
    float
        ``sum(log(l))``; ``-inf`` when any eigenvalue is exactly zero.
    """
    lam = _as_numpy(eigenvalues)
    if (lam <= 0.0).any():
        return -math.inf
    return float(np.log(lam).sum())


def determinant(eigenvalues: Any, *, warn: bool = True, name: str = "") -> float:
    """Determinant of the covariance (generalised variance), from log-eigenvalues.

    The product of eigenvalues is formed as ``exp(sum(log(l)))``, so no
    partial product underflows or overflows on the way: the result is exact to
    rounding whenever the determinant itself is a representable float64. When
    it is not (its log is below about -745 or above about 709), the result is
    ``0.0`` or ``inf`` and a :class:`RuntimeWarning` gives the log-determinant,
    so the loss is never silent. Use the ``logdet`` stat to record that value.

    Parameters
    ----------
    eigenvalues : array-like or torch.Tensor
        1-D, non-negative.
    warn : bool, default True
        Warn when the determinant is not representable.
    name : str, optional
        Label for the warning (the layer and mode).

    Returns
    -------
    float
        ``0.0`` exactly when an eigenvalue is zero (the matrix is singular).
    """
    logdet = log_determinant(eigenvalues)
    if logdet == -math.inf:
        return 0.0
    with np.errstate(over="ignore", under="ignore"):
        det = float(np.exp(logdet))
    if warn and (det == 0.0 or math.isinf(det)):
        what = "underflows to 0.0" if det == 0.0 else "overflows to inf"
        label = f" of {name}" if name else ""
        warnings.warn(
            f"covariance determinant{label} {what} in float64 (log-determinant = {logdet:.6g}); "
            "record stats=['logdet'] to keep its value",
            RuntimeWarning,
            stacklevel=2,
        )
    return det


def embed(samples: torch.Tensor, mean: torch.Tensor, eigenvectors: torch.Tensor, n_components: int = 2) -> np.ndarray:
    """Project samples onto the leading eigenvectors of their covariance.

    Parameters
    ----------
    samples : torch.Tensor
        ``(n, C)`` stored samples.
    mean : torch.Tensor
        ``(C,)`` mean that is subtracted first.
    eigenvectors : torch.Tensor
        ``(C, C)`` eigenvectors as columns, in **descending** eigenvalue order.
    n_components : int, default 2
        Number of leading directions.

    Returns
    -------
    numpy.ndarray
        ``(n, n_components)`` float64 coordinates. Missing directions (``C``
        smaller than ``n_components``) are zero.
    """
    k = min(n_components, eigenvectors.shape[1])
    centred = samples.to(torch.float64) - mean.to(samples.device, torch.float64)
    coords = centred @ eigenvectors[:, :k].to(samples.device, torch.float64)
    out = np.zeros((samples.shape[0], n_components), dtype=np.float64)
    out[:, :k] = coords.cpu().numpy()
    return out


# ------------------------------------------------- rank and spectrum-shape stats
#: The epsilon RankMe adds to every normalised singular value (Garrido et al., 2023).
RANKME_EPS = 1e-7

#: Default ranks (1-based, inclusive) of the power-law fit of :func:`spectrum_alpha`, as in alpha-ReQ.
ALPHA_RANKS: tuple[int, int] = (10, 100)

#: Fewest ranks :func:`spectrum_alpha` fits a line through; fewer give NaN.
ALPHA_MIN_RANKS = 10


def _scaled(eigenvalues: Any) -> np.ndarray | None:
    """Eigenvalues divided by the largest, or None when there is no positive finite variance.

    Every rank statistic is scale invariant, and dividing by the largest
    eigenvalue first means no square or sum can overflow or underflow.
    """
    lam = _as_numpy(eigenvalues)
    if lam.shape[0] == 0 or not np.isfinite(lam).all():
        return None
    top = float(lam.max())
    if top <= 0.0:
        return None
    return np.clip(lam, 0.0, None) / top


def _entropy(p: np.ndarray) -> float:
    """Shannon entropy in nats, ``0 ln 0`` taken as 0."""
    p = p[p > 0.0]
    return float(-(p * np.log(p)).sum())


def effective_rank(eigenvalues: Any) -> float:
    """Effective rank of the covariance (Roy & Vetterli, 2007).

    ``exp(-sum(p_i ln p_i))`` with ``p_i = l_i / sum(l)``: the exponential of
    the Shannon entropy of the normalised spectrum.

    Parameters
    ----------
    eigenvalues : array-like or torch.Tensor
        1-D, non-negative.

    Returns
    -------
    float
        In ``[1, rank]``: 1 for a single direction, ``C`` for equal
        variance in all ``C`` directions; NaN when the covariance is zero or
        not finite.
    """
    s = _scaled(eigenvalues)
    if s is None:
        return math.nan
    return math.exp(_entropy(s / s.sum()))


def rankme(second_moment_eigenvalues: Any, eps: float = RANKME_EPS) -> float:
    """RankMe of the samples (Garrido et al., ICML 2023).

    ``exp(-sum(p_i ln p_i))`` with ``p_i = s_i / sum(s) + eps``, where ``s``
    are the singular values of the **uncentred** sample matrix, i.e. the
    square roots of the eigenvalues of ``sum(x x^T)``. The sum runs over all
    ``C`` singular values, zeros included (with ``eps`` each contributes
    ``-eps ln eps``). Only ratios of ``s`` enter, so the eigenvalues of the
    second moment ``sum(x x^T) / n`` give the same value.

    Parameters
    ----------
    second_moment_eigenvalues : array-like or torch.Tensor
        1-D, non-negative eigenvalues of the uncentred second moment.
    eps : float, default 1e-7
        The paper's epsilon, added after normalisation.

    Returns
    -------
    float
        About ``[1, C]``; NaN when every sample is zero or a value is not finite.
    """
    s = _scaled(second_moment_eigenvalues)
    if s is None:
        return math.nan
    sigma = np.sqrt(s)
    p = sigma / sigma.sum() + eps
    return math.exp(_entropy(p))


def participation_ratio(eigenvalues: Any) -> float:
    """Participation ratio ``(sum l)^2 / sum(l^2)``.

    Parameters
    ----------
    eigenvalues : array-like or torch.Tensor
        1-D, non-negative.

    Returns
    -------
    float
        In ``[1, rank]``; NaN for a zero or non-finite covariance.
    """
    s = _scaled(eigenvalues)
    if s is None:
        return math.nan
    return float(s.sum() ** 2 / (s * s).sum())


def stable_rank(eigenvalues: Any) -> float:
    """Stable rank ``sum(l) / l_1``: the trace over the largest eigenvalue.

    Parameters
    ----------
    eigenvalues : array-like or torch.Tensor
        1-D, non-negative.

    Returns
    -------
    float
        In ``[1, rank]``; NaN for a zero or non-finite covariance.
    """
    s = _scaled(eigenvalues)
    if s is None:
        return math.nan
    return float(s.sum())


def numerical_rank(eigenvalues: Any) -> int:
    """Number of eigenvalues above ``C * eps * l_1``, the round-off floor of a float64 solve.

    Eigenvalues below it (for example the ``C - n + 1`` directions a layer
    with ``n <= C`` samples cannot have) are rounding noise of the solver,
    the same cut-off as :func:`numpy.linalg.matrix_rank`.

    Parameters
    ----------
    eigenvalues : array-like or torch.Tensor
        1-D, non-negative.

    Returns
    -------
    int
    """
    lam = _as_numpy(eigenvalues)
    if lam.shape[0] == 0 or not np.isfinite(lam).all():
        return 0
    top = float(lam.max())
    if top <= 0.0:
        return 0
    return int((lam > top * lam.shape[0] * np.finfo(np.float64).eps).sum())


def spectrum_alpha(
    eigenvalues: Any, first: int = ALPHA_RANKS[0], last: int = ALPHA_RANKS[1], min_ranks: int = ALPHA_MIN_RANKS
) -> float:
    """Power-law decay ``alpha`` of the spectrum, ``l_i ~ i^(-alpha)``.

    The least-squares slope of ``log l_i`` on ``log i`` over the ranks
    ``i = first ... last`` (1-based, inclusive), negated, as alpha-ReQ
    (Agrawal et al., NeurIPS 2022) fits it. The range is cut at the
    :func:`numerical_rank`, since zero eigenvalues have no logarithm.

    Parameters
    ----------
    eigenvalues : array-like or torch.Tensor
        1-D, descending, non-negative.
    first, last : int, default 10 and 100
        Ranks of the fit, ``1 <= first <= last``.
    min_ranks : int, default 10
        Fewest ranks to fit; with fewer the result is NaN.

    Returns
    -------
    float
        Around 1 for many natural representations; larger means faster
        decay. NaN when fewer than ``min_ranks`` nonzero ranks fall in the range.
    """
    if not 1 <= first <= last:
        raise ValueError(f"spectrum_alpha needs 1 <= first <= last, got first={first!r}, last={last!r}")
    if min_ranks < 2:
        raise ValueError(f"spectrum_alpha needs min_ranks >= 2 to fit a slope, got {min_ranks!r}")
    lam = _as_numpy(eigenvalues)
    stop = min(last, numerical_rank(lam))
    if stop - first + 1 < min_ranks:
        return math.nan
    ranks = np.arange(first, stop + 1, dtype=np.float64)
    x = np.log(ranks)
    y = np.log(lam[first - 1 : stop])
    x = x - x.mean()
    slope = float((x * (y - y.mean())).sum() / (x * x).sum())
    return -slope


def _as_covariance(cov: Any) -> torch.Tensor:
    """``cov`` (a tensor or array-like) as a float64 tensor, or a ValueError naming what is wrong with it."""
    if not isinstance(cov, torch.Tensor):
        cov = torch.as_tensor(np.asarray(cov, dtype=np.float64))
    if cov.dim() != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"expected a square covariance matrix, got shape {tuple(cov.shape)}")
    return cov.to(torch.float64)


def _check_thresh(thresh: float) -> float:
    if isinstance(thresh, bool) or not isinstance(thresh, (int, float, np.floating, np.integer)):
        raise TypeError(f"thresh must be a number in (0, 1], got {thresh!r}")
    if not 0.0 < float(thresh) <= 1.0:
        raise ValueError(f"thresh must be in (0, 1] (a share of the variance), got {thresh!r}")
    return float(thresh)


def _eigvals_of(cov: Any) -> torch.Tensor:
    from delve_fast import ops

    cov = _as_covariance(cov)
    # An eigen-solver fed NaN or Inf fails with an opaque convergence error.
    if cov.numel() and not bool(torch.isfinite(cov).all()):
        raise ValueError("the covariance matrix holds NaN or Inf values; its eigenvalues are undefined")
    return ops.eigvalsh_desc([cov])[0]


def compute_intrinsic_dimensionality(cov: torch.Tensor, thresh: float = 0.99) -> int:
    """Intrinsic dimensionality of a covariance matrix (delve's function name).

    Parameters
    ----------
    cov : torch.Tensor
        Square symmetric matrix.
    thresh : float, default 0.99

    Returns
    -------
    int
    """
    return intrinsic_dimensionality(_eigvals_of(cov), _check_thresh(thresh))


def compute_saturation(cov: torch.Tensor, thresh: float = 0.99) -> float:
    """Saturation of a covariance matrix (delve's function name).

    Parameters
    ----------
    cov : torch.Tensor
        Square symmetric matrix.
    thresh : float, default 0.99

    Returns
    -------
    float
    """
    return saturation(_eigvals_of(cov), _check_thresh(thresh))


# ------------------------------------------------------------ the stat table
def _identity(cov: torch.Tensor) -> torch.Tensor:
    return cov


@dataclass(frozen=True)
class StatContext:
    """What a stat function may use for one layer and mode.

    Attributes
    ----------
    eigenvalues : numpy.ndarray
        Descending, clamped at 0, float64, on the host.
    cov : torch.Tensor
        ``(C, C)`` float64 covariance on the state's device, in the state's
        feature order.
    trace : float
        Trace of ``cov`` (read from its diagonal).
    state : Any
        The layer's :class:`delve_fast.covariance.TorchCovarianceMatrix`
        (``mean()``, ``saved_samples``).
    threshold : float
        ``sat_threshold``.
    rule : str
        ``idim_rule``.
    mode, layer : str
        ``"train"`` or ``"eval"``, and the layer's name.
    to_delve_order : callable
        Maps ``cov`` to delve's feature order (a permutation for a
        channels_last ``flatten`` state, else the identity).
    second_moment_eigenvalues : numpy.ndarray or None
        Descending, clamped eigenvalues of the uncentred second moment
        ``sum(x x^T) / n``; solved only when a stat that needs them
        (``rankme``) is requested for this mode, else None.
    """

    eigenvalues: np.ndarray
    cov: torch.Tensor
    trace: float
    state: Any
    threshold: float = 0.99
    rule: str = "delve"
    mode: str = "train"
    layer: str = ""
    to_delve_order: Callable[[torch.Tensor], torch.Tensor] = field(default=_identity)
    second_moment_eigenvalues: np.ndarray | None = None

    @property
    def label(self) -> str:
        """``"<mode> <layer>"``, for messages."""
        return f"{self.mode} {self.layer}"


@dataclass(frozen=True)
class Stat:
    """One entry of :data:`STATS`.

    Attributes
    ----------
    name : str
        Column / folder / tag name (delve's, e.g. ``saturation``).
    fn : callable
        ``fn(ctx: StatContext)``; returning None records nothing.
    per_sample : bool
        The value is an array of samples (``embed``), written to the samples
        dict instead of the scalar values.
    array : bool
        The value is an array (``cov``, ``spectrum``): only the npy writer
        stores it (and the plot writer draws spectra); scalar writers skip it.
    needs_second_moment : bool
        The function reads :attr:`StatContext.second_moment_eigenvalues`, which
        adds one matrix per layer to the batched eigenvalue solve.
    """

    name: str
    fn: Callable[[StatContext], Any]
    per_sample: bool = False
    array: bool = False
    needs_second_moment: bool = False


def _embed(ctx: StatContext) -> np.ndarray | None:
    stored = ctx.state.saved_samples
    if stored is None or stored.shape[0] == 0:
        return None
    _, vecs = torch.linalg.eigh(ctx.cov)
    return embed(stored, ctx.state.mean(), vecs.flip(-1))


#: Stat key (the ``stats=`` argument) -> :class:`Stat`. A new stat is one entry.
STATS: dict[str, Stat] = {
    "lsat": Stat("saturation", lambda c: saturation(c.eigenvalues, c.threshold, rule=c.rule)),
    "idim": Stat(
        "intrinsic-dimensionality", lambda c: intrinsic_dimensionality(c.eigenvalues, c.threshold, rule=c.rule)
    ),
    "cov": Stat("covariance-matrix", lambda c: c.to_delve_order(c.cov).cpu().numpy(), array=True),
    "det": Stat("covariance-determinant", lambda c: determinant(c.eigenvalues, name=c.label)),
    "trc": Stat("covariance-trace", lambda c: float(c.trace)),
    "dtrc": Stat("diagonal-trace", lambda c: diagonal_trace(c.eigenvalues)),
    "embed": Stat("embedded-sample", _embed, per_sample=True),
    # delve_fast addition (opt-in): natural log of the covariance determinant.
    "logdet": Stat("covariance-log-determinant", lambda c: log_determinant(c.eigenvalues)),
    # delve_fast additions (opt-in): rank and spectrum-shape statistics of the same eigenvalues
    # (docs/statistics.md), the spectrum itself (npy writer) and the sample count behind them.
    "erank": Stat("effective-rank", lambda c: effective_rank(c.eigenvalues)),
    "rankme": Stat("rankme", lambda c: rankme(c.second_moment_eigenvalues), needs_second_moment=True),
    "pr": Stat("participation-ratio", lambda c: participation_ratio(c.eigenvalues)),
    "srank": Stat("stable-rank", lambda c: stable_rank(c.eigenvalues)),
    "alpha": Stat("spectrum-alpha", lambda c: spectrum_alpha(c.eigenvalues)),
    "spectrum": Stat("eigenvalue-spectrum", lambda c: np.array(c.eigenvalues, dtype=np.float64), array=True),
    "count": Stat("sample-count", lambda c: int(c.state.n_samples)),
}

#: Names (:attr:`Stat.name`) of the stats whose values are arrays, not numbers.
ARRAY_STATS: frozenset[str] = frozenset(stat.name for stat in STATS.values() if stat.array)

#: Short stat keys mapped to the names used in CSV columns, npy folders and
#: TensorBoard tags; identical to delve's (``logdet`` is delve_fast's).
STATMAP: dict[str, str] = {key: stat.name for key, stat in STATS.items()}

#: Stat keys accepted by the tracker (each may carry a ``_train``/``_eval`` suffix).
SUPPORTED_STATS: tuple[str, ...] = tuple(STATS)


def spectra(covs: Sequence[torch.Tensor], backend: str | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Eigenvalues and traces of every covariance, with one batched solve and one host transfer.

    Parameters
    ----------
    covs : sequence of torch.Tensor
        Symmetric matrices on one device.
    backend : str, optional
        Passed to :func:`delve_fast.ops.eigvalsh_desc`.

    Returns
    -------
    eigenvalues : list of numpy.ndarray
        Per matrix, descending, clamped at 0.
    traces : numpy.ndarray
        Per matrix, from the diagonal.
    """
    from delve_fast import ops

    covs = list(covs)
    if not covs:
        return [], np.zeros(0)
    eigs = ops.eigvalsh_desc(covs, backend=backend)
    flat = torch.cat([e.reshape(-1) for e in eigs] + [torch.stack([c.diagonal().sum() for c in covs])])
    host = flat.to("cpu", torch.float64).numpy()
    out, offset = [], 0
    for e in eigs:
        out.append(host[offset : offset + e.shape[0]])
        offset += e.shape[0]
    return out, host[offset:]


def compute(ctx: StatContext, keys: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate the stats ``keys`` of :data:`STATS` for one layer and mode.

    Returns
    -------
    values, samples : dict
        Column name (``<mode>-<stat name>_<layer>``) to value, split into
        scalar (and matrix) values and per-sample arrays (``embed``); a stat
        whose function returns None is left out.
    """
    values: dict[str, Any] = {}
    samples: dict[str, Any] = {}
    for key in keys:
        stat = STATS[key]
        value = stat.fn(ctx)
        if value is not None:
            (samples if stat.per_sample else values)[f"{ctx.mode}-{stat.name}_{ctx.layer}"] = value
    return values, samples


def compute_layers(
    entries: Sequence[tuple[str, str, Any, Callable[[torch.Tensor], torch.Tensor]]],
    mode_stats: dict[str, Sequence[str]],
    threshold: float,
    rule: str = "delve",
    *,
    average: bool = False,
    backend: str | None = None,
    warned: set[tuple[str, str]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every requested stat of every layer and mode, from one batched eigenvalue solve.

    ``rankme`` adds the uncentred second moments of the layers it is requested
    for to the same batched solve.

    Parameters
    ----------
    entries : sequence of (mode, layer, state, to_delve_order)
        ``state`` is a non-empty :class:`delve_fast.covariance.TorchCovarianceMatrix`;
        ``to_delve_order`` maps its covariance to delve's feature order.
    mode_stats : dict
        ``{"train": [keys], "eval": [keys]}`` of :data:`STATS`.
    threshold, rule
        As for :func:`saturation`.
    average : bool, default False
        Also give ``average-<mode>-sat``, the mean saturation over the layers.
    backend : str, optional
        Passed to :func:`delve_fast.ops.eigvalsh_desc`.
    warned : set, optional
        ``(mode, layer)`` pairs already warned about by :func:`warn_few_samples`;
        updated in place. None: no warning.

    Returns
    -------
    values, samples : dict
        See :func:`compute`.
    """
    if warned is not None:
        warn_few_samples([(mode, layer, state) for mode, layer, state, _ in entries], warned)
    covs = [state.fix() for _, _, state, _ in entries]
    # The uncentred second moment cov + mean mean^T (rankme) only for the layers whose mode asks for it.
    # Its eigenvalues join the same batched solve: the kernel hands the largest matrices out first, so
    # the extra matrices fill idle workers instead of costing a second pass.
    wanted = {m for m, keys in mode_stats.items() if any(STATS[k].needs_second_moment for k in keys)}
    second = [i for i, entry in enumerate(entries) if entry[0] in wanted]
    moments = [torch.addr(covs[i], entries[i][2].state.mean, entries[i][2].state.mean) for i in second]
    solved, traces = spectra(covs + moments, backend=backend)
    eigs, traces = solved[: len(covs)], traces[: len(covs)]
    second_eigs: dict[int, np.ndarray] = dict(zip(second, solved[len(covs) :], strict=True))
    values: dict[str, Any] = {}
    samples: dict[str, Any] = {}
    for i, ((mode, layer, state, order), lam, cov, trace) in enumerate(zip(entries, eigs, covs, traces, strict=True)):
        ctx = StatContext(lam, cov, float(trace), state, threshold, rule, mode, layer, order, second_eigs.get(i))
        layer_values, layer_samples = compute(ctx, mode_stats[mode])
        values.update(layer_values)
        samples.update(layer_samples)
    if average:
        for mode in MODES:
            sats = [saturation(lam, threshold, rule=rule) for e, lam in zip(entries, eigs, strict=True) if e[0] == mode]
            if sats:
                values[f"average-{mode}-sat"] = float(np.mean(sats))
    return values, samples


class FewSamplesWarning(RuntimeWarning):
    """A layer's covariance was built from no more samples than the layer has features."""


def warn_few_samples(entries: Sequence[tuple[str, str, Any]], warned: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """Warn once per layer and mode whose sample count ``n`` is at most its width ``C``.

    A covariance of ``n`` samples has rank at most ``n - 1``, so with
    ``n <= C`` the saturation is capped at ``(n - 1) / C`` by the data, not
    by the layer (and the rank statistics likewise).

    Parameters
    ----------
    entries : sequence of (mode, layer, state)
        ``state`` has ``n_samples`` and ``dim``.
    warned : set
        ``(mode, layer)`` pairs warned about before; new ones are added.

    Returns
    -------
    list of (mode, layer)
        The pairs warned about by this call.
    """
    new: list[tuple[str, str]] = []
    for mode, layer, state in entries:
        n, width = int(state.n_samples), state.dim
        if width is None or n > width or (mode, layer) in warned:
            continue
        warned.add((mode, layer))
        new.append((mode, layer))
        warn_user(
            f"layer {layer!r} ({mode}) saw {n} samples for {width} features: its covariance has rank at most "
            f"{max(n - 1, 0)}, so its saturation and rank statistics are capped by the sample count, not by the "
            "layer; record more samples per epoch (more batches before add_saturations()) to measure the layer",
            FewSamplesWarning,
        )
    return new
