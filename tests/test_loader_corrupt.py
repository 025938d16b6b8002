"""A damaged compiled extension never crashes ``import delve_fast``.

Loading a truncated shared library can kill the process with SIGBUS, which no
``try`` catches, so the loader checks the file's ELF tables before importing
it. Each case runs in a subprocess on a scratch copy of the package whose
``_C`` file is cut short.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import delve_fast
from delve_fast import _loader

LIBRARY = _loader._library_path()
needs_extension = pytest.mark.skipif(
    LIBRARY is None or _loader.extension() is None or not sys.platform.startswith("linux"),
    reason="needs the compiled extension as an ELF file (Linux build)",
)

PROBE = """
import json, os, torch
import delve_fast
from delve_fast import _loader
x = torch.randn(8, 3, dtype=torch.float64)
state = delve_fast.CovarianceState()
state.update(x)
print(json.dumps({
    "package": os.path.dirname(delve_fast.__file__),
    "loaded": _loader.extension() is not None,
    "error": _loader.load_error(),
    "count": state.count,
}))
"""


def _scratch_package(root: Path) -> Path:
    """A copy of delve_fast (sources, extension, build record) under ``root``; returns the extension's path."""
    target = root / "delve_fast"
    shutil.copytree(os.path.dirname(delve_fast.__file__), target, ignore=shutil.ignore_patterns("__pycache__"))
    for name in os.listdir(os.path.dirname(LIBRARY)):
        path = os.path.join(os.path.dirname(LIBRARY), name)
        if os.path.isfile(path):
            shutil.copy2(path, target / name)
    return target / os.path.basename(LIBRARY)


def _run(root: Path, backend: str | None) -> subprocess.CompletedProcess:
    import torch

    env = {k: v for k, v in os.environ.items() if k not in ("DELVE_FAST_BACKEND", "DELVE_FAST_HIDE_EXTENSION")}
    # -S skips site-packages' .pth files, so the editable install's import hook cannot
    # redirect 'delve_fast' away from the scratch copy; torch is found through PYTHONPATH.
    site = os.path.dirname(os.path.dirname(torch.__file__))
    env["PYTHONPATH"] = os.pathsep.join([str(root), site])
    if backend is not None:
        env["DELVE_FAST_BACKEND"] = backend
    return subprocess.run(
        [sys.executable, "-S", "-c", PROBE],
        env=env,
        cwd=root,  # -c puts the working directory first on sys.path: keep the source tree out of it
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@needs_extension
def test_intact_scratch_copy_loads_its_extension(tmp_path):
    """The control: the scratch copy is what gets imported, and its intact extension loads."""
    _scratch_package(tmp_path)
    proc = _run(tmp_path, None)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["package"] == str(tmp_path / "delve_fast")
    assert out["loaded"] and out["error"] is None and out["count"] == 8


#: Each case is a fresh interpreter importing torch (seconds): two in the default suite, the rest slow.
CASES = [
    ("half", None),
    ("all_but_1k", "torch"),
    *[
        pytest.param(keep, backend, marks=pytest.mark.slow)
        for keep, backend in [("zero", None), ("header", "torch"), ("half", "torch"), ("all_but_1k", None)]
    ],
]


@needs_extension
@pytest.mark.parametrize(("keep", "backend"), CASES)
def test_truncated_extension_falls_back_to_torch(tmp_path, backend, keep):
    library = _scratch_package(tmp_path)
    size = library.stat().st_size
    cut = {"zero": 0, "header": 64, "half": size // 2, "all_but_1k": size - 1024}[keep]
    with open(library, "r+b") as fh:
        fh.truncate(cut)
    proc = _run(tmp_path, backend)
    assert proc.returncode == 0, f"rc={proc.returncode} (negative: killed by a signal)\n{proc.stderr}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["package"] == str(tmp_path / "delve_fast")
    assert not out["loaded"] and out["count"] == 8
    assert os.path.basename(LIBRARY) in out["error"]
    assert (
        ("not an ELF" in out["error"]) if keep == "zero" else ("truncated" in out["error"] or "damaged" in out["error"])
    )


@needs_extension
def test_check_library_file_reports_the_cut(tmp_path):
    """In process, without loading: the check names the file, its size and the table that ends beyond it."""
    copy = tmp_path / "lib.so"
    shutil.copy2(LIBRARY, copy)
    assert _loader.check_library_file(str(copy)) is None
    size = copy.stat().st_size
    with open(copy, "r+b") as fh:
        fh.truncate(size - 1)
    problem = _loader.check_library_file(str(copy))
    assert problem is not None and "truncated" in problem and f"{size - 1} bytes" in problem and str(copy) in problem
    garbage = tmp_path / "garbage.so"
    garbage.write_bytes(b"\x7fELF" + b"\xff" * 60)
    assert "damaged ELF header" in _loader.check_library_file(str(garbage))
    assert "cannot read" in _loader.check_library_file(str(tmp_path / "absent.so"))
