"""Load the compiled extension without ever breaking ``import delve_fast``.

A C++ torch extension is tied to the exact torch it was compiled against: under
another torch it may fail to load (undefined symbols) or, worse, load and
misbehave. The build therefore records that torch's version in
``delve_fast/_build_config.py``; when the torch imported now has another version,
the extension is not loaded, one warning names both versions and the command
that rebuilds delve_fast, and the pure-torch backend (same results, slower) is
used.

A damaged file is refused too: loading a truncated shared library maps pages
past its end, and the first touch of such a page kills the process with
``SIGBUS``, which no ``try`` can catch. :func:`check_library_file` therefore
reads the ELF header before the import and checks that the file is as long as
its own header tables and segments say.
"""

from __future__ import annotations

import os
import struct
import sys
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


#: ELF header layout per class (EI_CLASS 1 = 32-bit, 2 = 64-bit): offsets and struct codes of
#: e_phoff, e_shoff, e_phentsize, e_phnum, e_shentsize, e_shnum, then p_offset and p_filesz in a program header.
_ELF_LAYOUT = {
    1: {"phoff": (0x1C, "I"), "shoff": (0x20, "I"), "phentsize": 0x2A, "phnum": 0x2C, "shentsize": 0x2E,
        "shnum": 0x30, "p_offset": (0x04, "I"), "p_filesz": (0x10, "I")},
    2: {"phoff": (0x20, "Q"), "shoff": (0x28, "Q"), "phentsize": 0x36, "phnum": 0x38, "shentsize": 0x3A,
        "shnum": 0x3C, "p_offset": (0x08, "Q"), "p_filesz": (0x20, "Q")},
}  # fmt: skip


def check_library_file(path: str) -> str | None:
    """Say why the shared library at ``path`` must not be loaded, or ``None`` when it looks whole.

    An ELF file must be at least as long as the end of its program header
    table, of its section header table and of every segment's file image.
    That is what a truncated or partly copied file gets wrong; reading the
    headers costs two small reads. Files that are not ELF pass unchecked on
    other systems (macOS, Windows) and are refused on Linux.

    Parameters
    ----------
    path : str
        The extension's file.

    Returns
    -------
    str or None
        The problem in words, naming the file.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            header = fh.read(64)
            if header[:4] != b"\x7fELF":
                return None if not sys.platform.startswith("linux") else f"{path} is not an ELF shared library"
            if len(header) < 52 or header[4] not in _ELF_LAYOUT or header[5] not in (1, 2):
                return f"{path} has a damaged ELF header ({len(header)} bytes read, {size} in the file)"
            layout = _ELF_LAYOUT[header[4]]
            endian = "<" if header[5] == 1 else ">"

            def field(at: int, code: str = "H", data: bytes = header) -> int:
                return struct.unpack_from(endian + code, data, at)[0]

            phoff, shoff = field(*layout["phoff"]), field(*layout["shoff"])
            phentsize, phnum = field(layout["phentsize"]), field(layout["phnum"])
            needed = {
                "program header table": phoff + phentsize * phnum,
                "section header table": shoff + field(layout["shentsize"]) * field(layout["shnum"]),
            }
            if needed["program header table"] <= size and phentsize:
                fh.seek(phoff)
                table = fh.read(phentsize * phnum)
                for i in range(phnum):
                    entry = table[i * phentsize : (i + 1) * phentsize]
                    end = field(*layout["p_offset"], data=entry) + field(*layout["p_filesz"], data=entry)
                    needed[f"segment {i}"] = max(needed.get(f"segment {i}", 0), end)
    except (OSError, struct.error) as exc:
        return f"cannot read {path}: {exc}"
    what, end = max(needed.items(), key=lambda item: item[1])
    if end > size:
        return f"{path} is truncated: it has {size} bytes but its {what} ends at byte {end}; reinstall delve_fast"
    return None


def _library_path() -> str | None:
    import importlib.util  # noqa: PLC0415

    try:
        spec = importlib.util.find_spec("delve_fast._C")
    except (ImportError, ValueError):
        return None
    return None if spec is None or not spec.has_location else spec.origin


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
    path = _library_path()
    problem = None if path is None else check_library_file(path)
    if problem is not None:
        # Checked before loading: mapping a truncated library ends the process with SIGBUS.
        _load_error = problem
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
