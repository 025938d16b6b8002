"""Load the compiled extension without ever breaking ``import delve_fast``.

A C++ torch extension is tied to the exact torch it was compiled against: under
another torch it may fail to load (undefined symbols) or, worse, load and
misbehave. The build therefore records that torch's version in
``delve_fast/_build_config.py``; when the torch imported now has another version,
the extension is not loaded, one warning names both versions and the command
that rebuilds delve_fast, and the pure-torch backend (same results, slower) is
used.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import Any

VALID_BACKENDS = ("auto", "cpp", "torch")
ENV_VAR = "DELVE_FAST_BACKEND"

#: How to rebuild delve_fast against the torch that is installed (from its source folder).
REBUILD_COMMAND = (
    "pip install scikit-build-core pybind11 ninja cmake && "
    "pip install --no-build-isolation --no-deps --force-reinstall <delve_fast source folder>"
)

_C: ModuleType | None = None
_load_error: str | None = None
_warned = False


def _public_version(version: str) -> str:
    """``'2.13.0+cpu'`` -> ``'2.13.0'``: the local tag names the wheel variant, not the C++ API."""
    return version.split("+", 1)[0].strip()


def built_torch_version() -> str | None:
    """Return the torch version the extension was compiled against, or ``None`` if unrecorded.

    Returns
    -------
    str or None
        ``torch.__version__`` at build time (for example ``'2.13.0+cpu'``); ``None`` for a
        tree that was never built.
    """
    try:
        from delve_fast import _build_config  # noqa: PLC0415
    except ImportError:
        return None
    return getattr(_build_config, "TORCH_VERSION", None) or None


def torch_mismatch() -> str | None:
    """Describe a mismatch between the torch imported now and the one delve_fast was built against.

    Returns
    -------
    str or None
        A one-line explanation naming both versions and the rebuild command, or ``None``
        when the versions agree or the build recorded none.
    """
    built = built_torch_version()
    if built is None:
        return None
    import torch  # noqa: PLC0415

    if _public_version(built) == _public_version(torch.__version__):
        return None
    return (
        f"delve_fast's compiled extension was built against torch {built}, but torch {torch.__version__} is "
        f"installed, so it is not loaded and the pure-torch backend (same results, slower) is used; rebuild "
        f"delve_fast against this torch: {REBUILD_COMMAND}"
    )


def _load() -> None:
    global _C, _load_error, _warned
    if os.environ.get("DELVE_FAST_HIDE_EXTENSION"):
        # Lets tests exercise the "extension missing" path in a subprocess.
        _load_error = "the extension was hidden by DELVE_FAST_HIDE_EXTENSION"
        return
    mismatch = torch_mismatch()
    if mismatch is not None:
        # Checked before loading: an extension built for another torch can crash the process.
        _load_error = mismatch
        _warned = True  # this is the one warning; the generic fallback warning would only repeat it
        warnings.warn(mismatch, RuntimeWarning, stacklevel=2)
        return
    try:
        from delve_fast import _C as ext  # noqa: PLC0415
    except Exception as exc:  # any failure (missing file, ABI mismatch) means "no extension"
        _load_error = f"{type(exc).__name__}: {exc}"
        return
    _C = ext


_load()


def extension() -> ModuleType | None:
    """Return the loaded ``_C`` module, or ``None`` when it is unavailable."""
    return _C


def load_error() -> str | None:
    """Return why ``_C`` failed to load, or ``None`` if it loaded."""
    return _load_error


_build_info: dict[str, Any] | None = None


def build_info() -> dict[str, Any]:
    """Return the extension's build facts, or an empty dict without it."""
    global _build_info
    if _build_info is None:
        # Asked on every op call: build it once.
        _build_info = dict(_C.build_info()) if _C is not None else {}
    return dict(_build_info)


def check_backend(name: str) -> str:
    """Validate a backend name and return it lower-cased.

    Raises
    ------
    ValueError
        If ``name`` is not one of ``auto``, ``cpp`` or ``torch``.
    """
    key = str(name).strip().lower()
    if key not in VALID_BACKENDS:
        raise ValueError(f"unknown delve_fast backend {name!r}; valid choices are {', '.join(VALID_BACKENDS)}")
    return key


def requested_backend(explicit: str | None = None) -> str:
    """Resolve the requested backend: the argument, else the environment, else ``auto``."""
    if explicit is not None:
        return check_backend(explicit)
    env = os.environ.get(ENV_VAR)
    if env:
        try:
            return check_backend(env)
        except ValueError as exc:
            raise ValueError(f"{ENV_VAR}={env!r} is invalid: {exc}") from None
    return "auto"


def warn_fallback_once(reason: str) -> None:
    """Warn a single time per process that the pure-torch twin is in use."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"delve_fast: compiled extension unavailable ({reason}); using the pure-torch backend",
            RuntimeWarning,
            stacklevel=3,
        )
