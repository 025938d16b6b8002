"""Pure-torch twins of the compiled ops.

Each function here has the same contract as the op of the same name in
``torch.ops.delve_fast``. They serve two purposes: the fallback when the
compiled extension is missing (or has no kernel for a device), and the oracle
that the tests compare the compiled kernels against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

# Re-exported for old imports; the view functions live in delve_fast.views.
from delve_fast.views import as_channel_view

__all__ = ["cov_update_", "eigvalsh_desc", "as_channel_view", "COUNTS_LEN"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """Keep float32 matmuls in true float32 (TF32 would break the mixed-precision bound)."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


#: Length of the ``counts`` tensor of ``cov_update_``: ``[samples, skipped batches]``.
COUNTS_LEN = 2


def _check_state(mean: torch.Tensor, m2: torch.Tensor, counts: torch.Tensor, x: torch.Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"x must be (N, C, S); got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must be float16, bfloat16, float32 or float64; got {x.dtype}")
    c = x.shape[1]
    if mean.dtype != torch.float64 or m2.dtype != torch.float64:
        raise TypeError(f"state must be float64; got mean {mean.dtype}, m2 {m2.dtype}")
    if tuple(mean.shape) != (c,) or tuple(m2.shape) != (c, c):
        raise ValueError(
            f"state shapes {tuple(mean.shape)}, {tuple(m2.shape)} do not match C={c} (expected ({c},) and ({c}, {c}))"
        )
    if counts.dtype != torch.float64 or tuple(counts.shape) != (COUNTS_LEN,):
        raise ValueError(
            f"counts must be a float64 tensor of shape ({COUNTS_LEN},) [samples, skipped batches]; "
            f"got {counts.dtype} {tuple(counts.shape)}"
        )


def cov_update_(
    mean: torch.Tensor, m2: torch.Tensor, counts: torch.Tensor, x: torch.Tensor, mixed: bool = False
) -> None:
    """Fold a batch into a float64 covariance state, in place.

    The state is ``(mean, m2, counts)`` where ``m2`` is the sum over all samples
    seen so far of ``(v - mean)(v - mean)^T`` and ``counts`` is
    ``[samples, skipped batches]``. The batch is merged with the pairwise rule
    of Chan, Golub and LeVeque: its own mean and centred Gram matrix are formed
    first, so large offsets never cancel catastrophically.

    A batch that holds a NaN or an Inf is left out: ``mean`` and ``m2`` keep
    every bit and ``counts[1]`` grows by one. The decision is made on the
    state's device (a masked select, no ``.item()``), so a GPU is never
    synchronised.

    Parameters
    ----------
    mean : torch.Tensor
        ``(C,)`` float64 running mean; updated in place.
    m2 : torch.Tensor
        ``(C, C)`` float64 centred sum of outer products; updated in place and
        kept symmetric.
    counts : torch.Tensor
        ``(2,)`` float64: samples folded in so far and batches skipped (whole
        numbers, exact up to 2**53); updated in place.
    x : torch.Tensor
        The batch viewed as ``(N, C, S)``: ``N * S`` samples of ``C`` features,
        feature ``c`` of sample ``(n, s)`` at ``x[n, c, s]``. Any strides, and
        float16, bfloat16, float32 or float64.
    mixed : bool, default False
        Form the batch's centred product in float32 (the data is centred
        first, so only float32 rounding of well-scaled values is lost) and add
        it to the float64 state.
    """
    _check_state(mean, m2, counts, x)
    n, c, s = x.shape
    k = n * s
    if k == 0:
        return
    # A state made under torch.inference_mode() holds inference tensors, which
    # may only be written inside that mode; entering it is harmless for a
    # normal state (nothing here is differentiated).
    with torch.inference_mode(mean.is_inference() or m2.is_inference() or counts.is_inference()):
        _fold(mean, m2, counts, x.detach(), n, c, s, mixed)


def _fold(
    mean: torch.Tensor, m2: torch.Tensor, counts: torch.Tensor, x: torch.Tensor, n: int, c: int, s: int, mixed: bool
) -> None:
    k = n * s
    if c == 0:
        counts[0] += k
        return
    # (C, K) in float64. This may still alias x (float64 input, S == 1), so
    # centre out of place: the caller's activation must never change.
    a = x.permute(1, 0, 2).reshape(c, k).to(dtype=torch.float64, device=m2.device)
    batch_mean = a.mean(dim=1)
    # A NaN or an Inf makes its feature's mean non-finite: decided on the device.
    ok = torch.isfinite(batch_mean).all()
    a = a - batch_mean[:, None]
    count = counts[0]
    total = count + k
    delta = batch_mean - mean
    # Some BLAS builds (MKL on AMD, for one) do not return a bit-symmetric
    # A @ A^T, so the product is symmetrised: p + p^T is exactly symmetric
    # because float addition commutes, and the kernels' state is too. Mixed
    # precision turns TF32 off so the float32 product keeps its documented bound.
    if mixed:
        af = a.to(torch.float32)
        with _no_tf32():
            prod = (af @ af.t()).to(torch.float64)
    else:
        prod = a @ a.t()
    new_m2 = torch.add(m2, prod.add_(prod.t().clone()), alpha=0.5)
    new_m2.add_(torch.outer(delta, delta) * (count * k / total))
    new_mean = mean + delta * (k / total)
    # torch.where copies the old bits where the batch is skipped (adding a
    # masked zero would turn -0.0 into +0.0).
    m2.copy_(torch.where(ok, new_m2, m2))
    mean.copy_(torch.where(ok, new_mean, mean))
    okf = ok.to(torch.float64)
    counts.add_(torch.stack((okf * k, 1.0 - okf)))


def eigvalsh_desc(covs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Eigenvalues of symmetric matrices, descending, negatives clamped to 0.

    Parameters
    ----------
    covs : sequence of torch.Tensor
        Square symmetric matrices, possibly of different sizes. Only the lower
        triangle is read, as in ``torch.linalg.eigvalsh``.

    Returns
    -------
    list of torch.Tensor
        One 1-D tensor per input, same dtype and device, sorted descending.
    """
    out = []
    for cov in covs:
        if cov.dim() != 2 or cov.shape[0] != cov.shape[1]:
            raise ValueError(f"expected square matrices, got shape {tuple(cov.shape)}")
        out.append(torch.linalg.eigvalsh(cov).flip(-1).clamp_min(0))
    return out
