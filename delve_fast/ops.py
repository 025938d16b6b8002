"""Python entry points of the two heavy ops, with backend selection.

``cov_update_`` and ``eigvalsh_desc`` route to ``torch.ops.delve_fast.*`` when
the compiled extension is loaded and has a kernel for the tensor's device, and
to the pure-torch twin in :mod:`delve_fast._reference` otherwise. The choice
is ``auto`` (default), ``cpp`` (a missing kernel is an error) or ``torch``
(always the twin); it comes from the ``backend`` argument or the
``DELVE_FAST_BACKEND`` environment variable.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from delve_fast import _loader, _reference

__all__ = ["cov_update_", "eigvalsh_desc", "backend_info", "resolve_backend", "has_compiled_kernel"]

# Devices whose compiled kernel disagreed with the twin on its first-use check.
_distrusted_devices: set[str] = set()
_verified_devices: set[str] = set()


def _register_fakes() -> None:
    """Give each op a fake (meta) implementation for opcheck and torch.compile."""

    @torch.library.register_fake("delve_fast::cov_update_")
    def _cov_update_fake(mean, m2, x, count, mixed=False):  # noqa: ARG001
        return None

    @torch.library.register_fake("delve_fast::eigvalsh_desc")
    def _eigvalsh_desc_fake(covs):
        return [c.new_empty((c.shape[-1],)) for c in covs]


if _loader.extension() is not None:
    _register_fakes()


def has_compiled_kernel(device_type: str) -> bool:
    """Whether the compiled extension has kernels for ``device_type``.

    Parameters
    ----------
    device_type : str
        A ``torch.device.type`` such as ``"cpu"`` or ``"cuda"``.
    """
    info = _loader.build_info()
    if not info:
        return False
    if device_type == "cpu":
        return True
    if device_type == "cuda":
        return bool(info.get("cuda"))
    return False


def resolve_backend(device_type: str = "cpu", backend: str | None = None) -> str:
    """Decide which implementation serves a tensor on ``device_type``.

    Parameters
    ----------
    device_type : str
        Device type of the tensors the op will see.
    backend : str, optional
        ``auto``, ``cpp`` or ``torch``; ``None`` reads ``DELVE_FAST_BACKEND``.

    Returns
    -------
    str
        ``"cpp"`` or ``"torch"``.

    Raises
    ------
    RuntimeError
        If ``cpp`` is requested and no compiled kernel exists for the device.
    """
    want = _loader.requested_backend(backend)
    if want == "torch":
        return "torch"
    if has_compiled_kernel(device_type) and device_type not in _distrusted_devices:
        return "cpp"
    if want == "cpp":
        why = _loader.load_error() or f"no compiled kernel for device type {device_type!r}"
        if device_type in _distrusted_devices:
            why = f"the {device_type} kernel failed its self-check against the pure-torch twin"
        raise RuntimeError(
            f"delve_fast backend 'cpp' was requested but cannot be used: {why}. "
            "Rebuild the extension (pip install --no-build-isolation .) or choose backend='auto' or 'torch'."
        )
    if _loader.extension() is None:
        _loader.warn_fallback_once(_loader.load_error() or "not built")
    return "torch"


def _self_check(device: torch.device) -> bool:
    """Compare a device's compiled kernel with the twin once per process.

    The CPU kernel is covered by the test-suite; accelerator kernels cannot be
    tested on machines without the device, so they prove themselves on first
    use and are replaced by the twin (with a warning) if they disagree.
    """
    key = device.type
    if key == "cpu" or key in _verified_devices:
        return True
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(5, 37, 11, generator=gen, dtype=torch.float32) * 3 + 2).to(device)
    states = []
    for fn in (torch.ops.delve_fast.cov_update_, _reference.cov_update_):
        mean = torch.zeros(37, dtype=torch.float64, device=device)
        m2 = torch.zeros(37, 37, dtype=torch.float64, device=device)
        fn(mean, m2, x, 0)
        fn(mean, m2, x[:3], 55)
        states.append((mean, m2))
    (m_a, g_a), (m_b, g_b) = states
    ok = torch.allclose(m_a, m_b, rtol=1e-9, atol=1e-9) and torch.allclose(g_a, g_b, rtol=1e-9, atol=1e-7)
    if ok:
        _verified_devices.add(key)
    else:
        _distrusted_devices.add(key)
        warnings.warn(
            f"delve_fast: the compiled {key} covariance kernel disagrees with the pure-torch twin; "
            "falling back to the twin for this device",
            RuntimeWarning,
            stacklevel=3,
        )
    return ok


def cov_update_(
    mean: torch.Tensor,
    m2: torch.Tensor,
    x: torch.Tensor,
    count: int,
    backend: str | None = None,
    *,
    precision: str = "double",
) -> None:
    """Fold the batch ``x`` (viewed ``(N, C, S)``) into the float64 state ``(count, mean, m2)``.

    See :func:`delve_fast._reference.cov_update_` for the exact contract. The
    state is updated in place; ``count`` is the number of samples folded in
    before this call (the caller keeps it, so no device sync is needed).

    Parameters
    ----------
    precision : {"double", "mixed"}, default "double"
        ``"mixed"`` forms each tile's product in float32 on shifted (nearly
        centred) data and accumulates the tiles in float64; see
        ``docs/precision.md`` for its error bound.
    """
    mixed = check_precision(precision) == "mixed"
    if resolve_backend(x.device.type, backend) == "cpp" and _self_check(x.device):
        torch.ops.delve_fast.cov_update_(mean, m2, x, int(count), mixed)
    else:
        _reference.cov_update_(mean, m2, x, int(count), mixed)


PRECISIONS = ("double", "mixed")


def check_precision(precision: str) -> str:
    """Validate a ``precision`` argument and return it.

    Raises
    ------
    ValueError
        If ``precision`` is not ``"double"`` or ``"mixed"``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not supported; valid choices are {', '.join(PRECISIONS)}")
    return precision


def eigvalsh_desc(covs: Sequence[torch.Tensor], backend: str | None = None) -> list[torch.Tensor]:
    """Eigenvalues of every matrix in ``covs`` at once, descending, clamped at 0.

    Parameters
    ----------
    covs : sequence of torch.Tensor
        Symmetric matrices (any sizes) on one device.
    backend : str, optional
        ``auto``, ``cpp`` or ``torch``.

    Returns
    -------
    list of torch.Tensor
        Eigenvalues per matrix, largest first.
    """
    covs = list(covs)
    if not covs:
        return []
    if resolve_backend(covs[0].device.type, backend) == "cpp":
        return list(torch.ops.delve_fast.eigvalsh_desc(covs))
    return _reference.eigvalsh_desc(covs)


def backend_info(backend: str | None = None) -> dict[str, Any]:
    """Describe which implementation the ops will use.

    Parameters
    ----------
    backend : str, optional
        Override the requested backend (as the tracker's ``backend=`` does).

    Returns
    -------
    dict
        ``backend`` (``"cpp"`` or ``"torch"``, for CPU tensors), ``cuda``
        (whether CUDA kernels were built), ``reason`` (a sentence),
        ``requested`` and ``build`` (the extension's ``build_info()``).
    """
    want = _loader.requested_backend(backend)
    info = _loader.build_info()
    if want == "torch":
        chosen, reason = "torch", "the pure-torch backend was requested"
    elif info:
        chosen, reason = "cpp", "compiled extension loaded"
    else:
        chosen, reason = "torch", f"compiled extension unavailable: {_loader.load_error()}"
        if want == "cpp":
            reason = "backend 'cpp' requested but " + reason
    return {
        "backend": chosen,
        "cuda": bool(info.get("cuda", False)),
        "reason": reason,
        "requested": want,
        "build": info,
    }
