"""PEP 517 build backend of delve_fast: scikit-build-core, plus two checks that fail at once.

delve_fast's extension is compiled against the torch that is already installed, so a
wheel or editable build needs that torch importable and the build tools present. pip's
default build isolation hides the environment's torch; without the checks below such a
build would resolve (and download) every runtime dependency first and only then stop
inside CMake. Here the "get requires" hook, which pip calls before anything else, stops
with a message that names the cause and the command to run. Building an sdist needs no
torch and is not checked.
"""

from __future__ import annotations

import os
import sys
from typing import Any

BUILD_TOOLS = "scikit-build-core pybind11 ninja cmake"
INSTALL_COMMAND = f"pip install {BUILD_TOOLS} && pip install --no-build-isolation ."


def _stop(message: str) -> None:
    # SystemExit rather than an exception: pip shows the hook's output, and a message
    # reads better than a traceback through pip's hook runner.
    print(f"\ndelve_fast build error: {message}\n", file=sys.stderr, flush=True)
    raise SystemExit(1)


def _isolated() -> bool:
    """Whether this process runs in pip's isolated build environment."""
    paths = [*sys.path, os.environ.get("PYTHONPATH", "")]
    return any("pip-build-env" in p for p in paths)


def _check_torch() -> None:
    try:
        import torch  # noqa: F401, PLC0415
    except ImportError as exc:
        if _isolated():
            _stop(
                f"torch is not importable by {sys.executable}: pip's build isolation hides your environment's "
                "torch, and delve_fast must be compiled against that torch. Build without isolation: "
                f"{INSTALL_COMMAND}"
            )
        _stop(
            f"torch is not importable by {sys.executable} ({exc}); delve_fast is compiled against the installed "
            f"torch, so install torch first, then: {INSTALL_COMMAND}. If torch is installed, the build front end "
            "is isolating the build from it (python -m build does by default: add --no-isolation)."
        )


def _backend() -> Any:
    try:
        from scikit_build_core import build  # noqa: PLC0415
    except ImportError:
        how = (
            "pip did not install them into its isolated build environment"
            if _isolated()
            else "they are not installed in this environment (pip --no-build-isolation uses what is installed)"
        )
        _stop(f"delve_fast's build tools ({BUILD_TOOLS}) are missing: {how}. Run: {INSTALL_COMMAND}")
    return build


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    """Check torch and the build tools, then defer to scikit-build-core."""
    backend = _backend()
    _check_torch()
    return backend.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    """Check torch and the build tools, then defer to scikit-build-core."""
    backend = _backend()
    _check_torch()
    return backend.get_requires_for_build_editable(config_settings)


def get_requires_for_build_sdist(config_settings: dict[str, Any] | None = None) -> list[str]:
    """An sdist needs the build tools only."""
    return _backend().get_requires_for_build_sdist(config_settings)


def prepare_metadata_for_build_wheel(metadata_directory: str, config_settings: dict[str, Any] | None = None) -> str:
    """Defer to scikit-build-core."""
    _check_torch()
    return _backend().prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(metadata_directory: str, config_settings: dict[str, Any] | None = None) -> str:
    """Defer to scikit-build-core."""
    _check_torch()
    return _backend().prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_wheel(
    wheel_directory: str, config_settings: dict[str, Any] | None = None, metadata_directory: str | None = None
) -> str:
    """Check torch (a front end may skip the hooks above), then build with scikit-build-core."""
    backend = _backend()
    _check_torch()
    return backend.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(
    wheel_directory: str, config_settings: dict[str, Any] | None = None, metadata_directory: str | None = None
) -> str:
    """Check torch, then build an editable wheel with scikit-build-core."""
    backend = _backend()
    _check_torch()
    return backend.build_editable(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory: str, config_settings: dict[str, Any] | None = None) -> str:
    """Build the source distribution (no torch needed)."""
    return _backend().build_sdist(sdist_directory, config_settings)
