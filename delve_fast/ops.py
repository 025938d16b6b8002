"""Python entry points of the compiled ops, with backend selection.

Every op is one row of :data:`OPS`: its name in ``torch.ops.delve_fast``, the
Python wrapper users call, the fake (meta) implementation registered for
``opcheck`` and ``torch.compile``, the pure-torch twin in
:mod:`delve_fast._reference`, and the first-use self-check of an accelerator's
kernel. Backend selection, fake registration, :func:`backend_info` and the
self-check all iterate that table; which kernels exist is asked of the
dispatcher, per op and per device type.

A wrapper routes to ``torch.ops.delve_fast.<op>`` when the compiled extension
is loaded and registers a kernel for the tensor's device, and to the twin
otherwise. The choice is ``auto`` (default), ``cpp`` (a missing kernel is an
error) or ``torch`` (always the twin); it comes from the ``backend`` argument or
the ``DELVE_FAST_BACKEND`` environment variable.
"""

from __future__ import annotations

import functools
import itertools
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from delve_fast import _loader, _reference

__all__ = [
    "cov_update_",
    "eigvalsh_desc",
    "backend_info",
    "resolve_backend",
    "has_compiled_kernel",
    "check_precision",
    "PRECISIONS",
    "OPS",
    "SELF_CHECK_ENV_VAR",
    "CUDA_UPDATE_ENV_VAR",
    "CUDA_UPDATE_PATHS",
]

PRECISIONS = ("double", "mixed")

#: Set to ``0`` to skip the first-use self-check of accelerator kernels.
SELF_CHECK_ENV_VAR = "DELVE_FAST_SELF_CHECK"

#: Picks the CUDA ``cov_update_`` path (read by the kernel on every call): ``fused`` (default), or the
#: cuBLAS chunked path with ``syrk`` or ``gemm`` products (docs/gpu.md).
CUDA_UPDATE_ENV_VAR = "DELVE_FAST_CUDA_UPDATE"
CUDA_UPDATE_PATHS = ("fused", "syrk", "gemm")

#: Device types whose kernels the test-suite runs on every machine, so they skip the first-use check.
#: Every other device type (CUDA) proves its kernels against the twin once per device and process.
_SUITE_TESTED_DEVICE_TYPES = frozenset({"cpu"})

# Self-check verdicts, keyed by (op name, device) with the device as "cuda:0":
# True = the kernel agreed with the twin, False = it disagreed or raised.
_trust: dict[tuple[str, str], bool] = {}


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


# ----------------------------------------------------------------------------- kernels known to the dispatcher


@functools.cache
def _dispatcher_has_kernel(qualname: str, device_type: str) -> bool:
    """Whether the dispatcher holds a kernel registered for ``device_type`` itself (not a composite one)."""
    key = {"cpu": "CPU", "cuda": "CUDA", "mps": "MPS", "xpu": "XPU"}.get(device_type)
    if key is None:
        return False
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key))
    except RuntimeError:  # the op is not registered at all
        return False


def has_compiled_kernel(device_type: str, op: str | None = None) -> bool:
    """Whether the compiled extension has a kernel for ``device_type``.

    Parameters
    ----------
    device_type : str
        A ``torch.device.type`` such as ``"cpu"`` or ``"cuda"``.
    op : str, optional
        One op of :data:`OPS` (e.g. ``"cov_update_"``); ``None`` asks whether
        every op has one.
    """
    if _loader.extension() is None:
        return False
    names = list(OPS) if op is None else [_spec(op).name]
    return all(_dispatcher_has_kernel(OPS[name].qualname, device_type) for name in names)


def _device_key(device: torch.device | str) -> str:
    """``"cuda:0"`` for a CUDA device with or without an index; ``"cpu"`` for the CPU."""
    device = torch.device(device)
    if device.index is None and device.type == "cuda" and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def _self_check_enabled() -> bool:
    return os.environ.get(SELF_CHECK_ENV_VAR, "1").strip() != "0"


def _kernel_variant(op: str, device: torch.device) -> str:
    """The kernel variant that an environment switch selects for ``op`` on ``device``; ``""`` for the default.

    The CUDA ``cov_update_`` has more than one path (``DELVE_FAST_CUDA_UPDATE``);
    each is self-checked on its own the first time it is selected.
    """
    if op == "cov_update_" and device.type == "cuda":
        path = os.environ.get(CUDA_UPDATE_ENV_VAR, "") or "fused"
        return "" if path == "fused" else path
    return ""


def _check_label(op: str, device: torch.device) -> str:
    """The op's name in self-check verdicts: ``cov_update_``, or ``cov_update_[syrk]`` for a non-default variant."""
    variant = _kernel_variant(op, device)
    return f"{op}[{variant}]" if variant else op


def _distrusted(device: torch.device | str) -> list[str]:
    """Ops (with their selected variant) whose kernel failed its self-check on ``device`` (any index, for a bare type)."""
    device = torch.device(device)
    key = _device_key(device)
    current = {_check_label(name, device) for name in OPS}
    out = []
    for (op, dev), ok in _trust.items():
        same = dev == key or (device.index is None and torch.device(dev).type == device.type)
        if same and not ok and op in current:
            out.append(op)
    return out


def resolve_backend(device_type: str = "cpu", backend: str | None = None) -> str:
    """Decide which implementation serves tensors on ``device_type``.

    Parameters
    ----------
    device_type : str
        Device type (``"cuda"``) or device (``"cuda:1"``) of the tensors the ops will see.
    backend : str, optional
        ``auto``, ``cpp`` or ``torch``; ``None`` reads ``DELVE_FAST_BACKEND``.

    Returns
    -------
    str
        ``"cpp"`` when every op has a trusted compiled kernel there, else ``"torch"``.

    Raises
    ------
    RuntimeError
        If ``cpp`` is requested and a compiled kernel is missing or failed its self-check.
    """
    want = _loader.requested_backend(backend)
    if want == "torch":
        return "torch"
    device = torch.device(device_type)
    missing = [name for name in OPS if not has_compiled_kernel(device.type, name)]
    failed = _distrusted(device)
    if not missing and not failed:
        return "cpp"
    if want == "cpp":
        if failed:
            why = f"the compiled {', '.join(failed)} kernel on {device} failed its self-check against the twin"
        else:
            why = _loader.load_error() or f"no compiled {', '.join(missing)} kernel for device type {device.type!r}"
        raise RuntimeError(
            f"delve_fast backend 'cpp' was requested but cannot be used: {why}. "
            "Rebuild the extension (pip install --no-build-isolation .) or choose backend='auto' or 'torch'."
        )
    if _loader.extension() is None:
        _loader.warn_fallback_once(_loader.load_error() or "not built")
    return "torch"


# ----------------------------------------------------------------------------- the first-use self-check


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> bool:
    """Entrywise ``|a - e| <= rtol * (largest |e| + 1)``: a scale-aware bound for one state tensor."""
    expected = expected.to(torch.float64)
    scale = float(expected.abs().max()) + 1.0 if expected.numel() else 1.0
    diff = (actual.to(torch.float64) - expected).abs()
    return bool(torch.isfinite(actual).all()) and bool((diff <= rtol * scale).all())


#: (C, N, S) of the covariance self-check. C = 70 is more than one 64-wide CUDA Gram tile (and more than
#: two 32-wide merge tiles), and its 1050 samples make the CUDA kernel split the samples in two.
_COV_CHECK_SHAPES = ((5, 40, 3), (37, 12, 5), (70, 350, 3))
_CHECK_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_cov_update(kernel: Callable[..., Any], device: torch.device) -> bool:
    """Compare the ``cov_update_`` kernel with the twin on ``device``, over two updates per case.

    The kernel is the path that ``DELVE_FAST_CUDA_UPDATE`` selects now (the
    verdict is kept per path). Every input dtype and both precisions are run, each with one of three
    feature counts (both precisions see the largest), in the NCHW and the
    features-adjacent layouts. The twin runs in float64 on the same values:
    double must agree to 1e-9 of the largest entry (float64 round-off over a
    thousand samples is ~1e-13), mixed to the documented float32-tile bound of 1e-4
    (the cuBLAS path's 3xTF32 products meet the same bound, docs/precision.md).
    """
    gen = torch.Generator(device="cpu").manual_seed(0)
    for i, (dtype, precision) in enumerate(itertools.product(_CHECK_DTYPES, PRECISIONS)):
        c, n, s = _COV_CHECK_SHAPES[i % len(_COV_CHECK_SHAPES)]
        x = (torch.randn(n, c, s, generator=gen, dtype=torch.float64) * 3 + 2).to(dtype)
        if i % 2:
            x = x.transpose(1, 2).contiguous().transpose(1, 2)  # features adjacent, samples strided
        x = x.to(device)
        mixed = precision == "mixed"
        states = []
        for fn, fn_mixed in ((kernel, mixed), (_reference.cov_update_, False)):
            mean = torch.zeros(c, dtype=torch.float64, device=device)
            m2 = torch.zeros(c, c, dtype=torch.float64, device=device)
            counts = torch.zeros(_reference.COUNTS_LEN, dtype=torch.float64, device=device)
            fn(mean, m2, counts, x, fn_mixed)
            fn(mean, m2, counts, x[: n // 3 + 1], fn_mixed)
            states.append((mean.cpu(), m2.cpu(), counts.cpu()))
        (mean_k, m2_k, counts_k), (mean_t, m2_t, counts_t) = states
        rtol = 1e-4 if mixed else 1e-9
        if not (_close(mean_k, mean_t, rtol) and _close(m2_k, m2_t, rtol) and torch.equal(m2_k, m2_k.T)):
            return False
        if not torch.equal(counts_k, counts_t):
            return False
    return _check_cov_update_skips(kernel, device)


def _check_cov_update_skips(kernel: Callable[..., Any], device: torch.device) -> bool:
    """A batch holding a NaN, then one holding an Inf, must leave the kernel's state bit-identical."""
    gen = torch.Generator(device="cpu").manual_seed(2)
    mean = torch.zeros(70, dtype=torch.float64, device=device)
    m2 = torch.zeros(70, 70, dtype=torch.float64, device=device)
    counts = torch.zeros(_reference.COUNTS_LEN, dtype=torch.float64, device=device)
    kernel(mean, m2, counts, torch.randn(40, 70, 3, generator=gen).to(device), False)
    before = (mean.clone(), m2.clone(), counts.clone())
    for bad in (float("nan"), float("inf")):
        x = torch.randn(350, 70, 3, generator=gen)
        x[123, 45, 1] = bad
        kernel(mean, m2, counts, x.to(device), False)
    return (
        torch.equal(mean, before[0])
        and torch.equal(m2, before[1])
        and counts.cpu().tolist() == [before[2][0].item(), before[2][1].item() + 2]
    )


def _check_eigvalsh_desc(kernel: Callable[..., Any], device: torch.device) -> bool:
    """Compare the ``eigvalsh_desc`` kernel with the twin on ``device``.

    Two matrices of one size (solved as a batch on CUDA), another size, and
    float32: each result must be its own tensor, and agree with the twin to
    ``16 * n * eps * ||A||``, a few times a backward-stable solver's error.
    """
    gen = torch.Generator(device="cpu").manual_seed(1)
    mats = []
    for n, dtype in ((6, torch.float64), (6, torch.float64), (11, torch.float64), (6, torch.float32)):
        a = torch.randn(n, n + 2, generator=gen, dtype=torch.float64)
        mats.append((a @ a.T).to(dtype).to(device))
    got = list(kernel(mats))
    want = _reference.eigvalsh_desc(mats)
    if len(got) != len(mats) or len({w.untyped_storage().data_ptr() for w in got}) != len(got):
        return False
    for g, w, a in zip(got, want, mats, strict=True):
        if g.shape != w.shape or g.dtype != w.dtype or g.device != w.device:
            return False
        tol = 16 * a.shape[0] * torch.finfo(a.dtype).eps * float(w.max())
        if not bool(((g.double() - w.double()).abs() <= tol).all()):
            return False
    return True


def _trusted(spec: OpSpec, device: torch.device, want: str) -> bool:
    """Whether ``spec``'s kernel may serve ``device``; runs its self-check on first use there.

    A kernel that disagrees with the twin, or raises, fails: under ``auto`` it
    is replaced by the twin on that device (with a warning); under ``cpp`` that
    is an error.
    """
    if device.type in _SUITE_TESTED_DEVICE_TYPES or spec.self_check is None:
        return True
    key = (_check_label(spec.name, device), _device_key(device))
    label = key[0]
    if key not in _trust:
        if not _self_check_enabled():
            return True
        error: Exception | None = None
        try:
            _trust[key] = spec.self_check(spec.kernel(), device)
        except Exception as exc:  # a kernel that raises on valid input is a failed kernel
            _trust[key] = False
            error = exc
        if not _trust[key]:
            what = f"raised {type(error).__name__}: {error}" if error else "disagrees with the pure-torch twin"
            msg = f"delve_fast: the compiled {label} kernel on {key[1]} {what} in its first-use self-check"
            if want == "cpp":
                raise RuntimeError(
                    f"{msg}; backend 'cpp' was requested, so it is not replaced by the twin "
                    f"(choose backend='auto' to fall back, or set {SELF_CHECK_ENV_VAR}=0 to skip the check)"
                ) from error
            warnings.warn(f"{msg}; falling back to the twin for this device", RuntimeWarning, stacklevel=4)
    if not _trust[key] and want == "cpp":
        raise RuntimeError(
            f"delve_fast backend 'cpp' was requested but the compiled {label} kernel on {key[1]} "
            "failed its self-check against the twin; choose backend='auto' or 'torch'"
        )
    return _trust[key]


def _implementation(op: str, device: torch.device, backend: str | None) -> Callable[..., Any]:
    """The callable serving ``op`` on ``device``: the compiled kernel or the twin."""
    spec = OPS[op]
    want = _loader.requested_backend(backend)
    if want == "torch":
        return spec.twin
    if not has_compiled_kernel(device.type, op):
        if want == "cpp":
            resolve_backend(device.type, "cpp")  # raises the explanatory error
        if _loader.extension() is None:
            _loader.warn_fallback_once(_loader.load_error() or "not built")
        return spec.twin
    return spec.kernel() if _trusted(spec, device, want) else spec.twin


# ----------------------------------------------------------------------------- the wrappers


def cov_update_(
    mean: torch.Tensor,
    m2: torch.Tensor,
    counts: torch.Tensor,
    x: torch.Tensor,
    backend: str | None = None,
    *,
    precision: str = "double",
) -> None:
    """Fold the batch ``x`` (viewed ``(N, C, S)``) into the float64 state ``(mean, m2, counts)``.

    See :func:`delve_fast._reference.cov_update_` for the exact contract. The
    state is updated in place. ``counts`` is the ``(2,)`` float64 tensor
    ``[samples, skipped batches]`` on the state's device: the op reads and
    advances it there, so no device sync is ever needed. A batch holding a NaN
    or an Inf leaves ``mean`` and ``m2`` bit-identical and adds one to ``counts[1]``.

    Parameters
    ----------
    precision : {"double", "mixed"}, default "double"
        ``"mixed"`` forms each tile's product in float32 on shifted (nearly
        centred) data and accumulates the tiles in float64; see
        ``docs/precision.md`` for its error bound.
    """
    mixed = check_precision(precision) == "mixed"
    _implementation("cov_update_", x.device, backend)(mean, m2, counts, x, mixed)


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
        Eigenvalues per matrix, largest first; each its own tensor.
    """
    covs = list(covs)
    if not covs:
        return []
    return list(_implementation("eigvalsh_desc", covs[0].device, backend)(covs))


# ----------------------------------------------------------------------------- fakes


def _cov_update_fake(mean, m2, counts, x, mixed=False):  # noqa: ARG001
    return None


def _eigvalsh_desc_fake(covs):
    return [c.new_empty((c.shape[-1],)) for c in covs]


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class OpSpec:
    """One compiled op and everything the Python side keeps about it."""

    #: Name in ``torch.ops.delve_fast``.
    name: str
    #: The public Python entry point (with backend selection).
    wrapper: Callable[..., Any]
    #: Fake (meta) implementation: output shapes only, for ``opcheck`` and ``torch.compile``.
    fake: Callable[..., Any]
    #: Pure-torch implementation of the same contract: the fallback and the tests' oracle.
    twin: Callable[..., Any]
    #: ``check(kernel, device) -> bool``: the first-use comparison with the twin on a device
    #: the test-suite cannot cover; ``None`` trusts the kernel.
    self_check: Callable[[Callable[..., Any], torch.device], bool] | None

    @property
    def qualname(self) -> str:
        return f"delve_fast::{self.name}"

    def kernel(self) -> Callable[..., Any]:
        """The compiled op, ``torch.ops.delve_fast.<name>`` (needs the extension)."""
        return getattr(torch.ops.delve_fast, self.name)


OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec("cov_update_", cov_update_, _cov_update_fake, _reference.cov_update_, _check_cov_update),
        OpSpec("eigvalsh_desc", eigvalsh_desc, _eigvalsh_desc_fake, _reference.eigvalsh_desc, _check_eigvalsh_desc),
    )
}


def _spec(op: str) -> OpSpec:
    if op not in OPS:
        raise ValueError(f"unknown delve_fast op {op!r}; valid choices are {', '.join(OPS)}")
    return OPS[op]


def _register_fakes() -> None:
    """Give each op of :data:`OPS` its fake (meta) implementation."""
    for spec in OPS.values():
        torch.library.register_fake(spec.qualname)(spec.fake)


if _loader.extension() is not None:
    _register_fakes()


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
        ``requested``, ``kernels`` (op name -> device types the dispatcher
        has a compiled kernel for), ``self_check`` (``"op@device"`` -> whether
        that kernel passed its first-use check, for the devices checked so far)
        and ``build`` (the extension's ``build_info()``).
    """
    want = _loader.requested_backend(backend)
    info = _loader.build_info()
    kernels = {name: [d for d in ("cpu", "cuda") if has_compiled_kernel(d, name)] for name in OPS}
    if want == "torch":
        chosen, reason = "torch", "the pure-torch backend was requested"
    elif info and all("cpu" in devs for devs in kernels.values()):
        chosen, reason = "cpp", "compiled extension loaded"
    elif info:
        missing = [name for name, devs in kernels.items() if "cpu" not in devs]
        chosen, reason = "torch", f"compiled extension has no CPU kernel for {', '.join(missing)}"
    else:
        chosen, reason = "torch", f"compiled extension unavailable: {_loader.load_error()}"
        if want == "cpp":
            reason = "backend 'cpp' requested but " + reason
    return {
        "backend": chosen,
        "cuda": bool(info.get("cuda", False)),
        "reason": reason,
        "requested": want,
        "kernels": kernels,
        "self_check": {f"{op}@{dev}": ok for (op, dev), ok in _trust.items()},
        "build": info,
    }
