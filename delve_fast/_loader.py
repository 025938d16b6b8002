"""Load the compiled extension without ever breaking ``import delve_fast``."""

from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import Any

VALID_BACKENDS = ("auto", "cpp", "torch")
ENV_VAR = "DELVE_FAST_BACKEND"

_C: ModuleType | None = None
_load_error: str | None = None
_warned = False


def _load() -> None:
    global _C, _load_error
    if os.environ.get("DELVE_FAST_HIDE_EXTENSION"):
        # Lets tests exercise the "extension missing" path in a subprocess.
        _load_error = "the extension was hidden by DELVE_FAST_HIDE_EXTENSION"
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
