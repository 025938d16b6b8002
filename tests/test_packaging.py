"""Packaging: what ``import delve_fast`` pulls in, the torch-version check, and the build backend's messages.

The slow tests (``-m slow``) build delve_fast the way the README tells a user to, in fresh
virtual environments that hold only torch, and check what a user would see.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from delve_fast import _loader

ROOT = Path(__file__).resolve().parents[1]
BACKEND_FILE = ROOT / "build_backend" / "delve_fast_backend.py"
HEAVY = ("pandas", "matplotlib", "sklearn", "tqdm", "scipy")


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("DELVE_FAST_HIDE_EXTENSION", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=full_env)


# --------------------------------------------------------------------------- what `import delve_fast` imports


def test_import_does_not_load_pandas_matplotlib_or_demo_packages():
    # torch.hub imports tqdm when it is installed, so compare against what torch alone loads.
    code = (
        "import json, sys; import torch; before = set(sys.modules); import delve_fast; "
        "print(json.dumps({'added': sorted(set(sys.modules) - before), 'all': sorted(sys.modules)}))"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    mods = json.loads(proc.stdout)
    added = {m.split(".")[0] for m in mods["added"]}
    assert not added & set(HEAVY), sorted(added & set(HEAVY))
    everything = {m.split(".")[0] for m in mods["all"]}
    assert not everything & {"pandas", "matplotlib", "sklearn"}  # nobody else loaded them either


def test_csv_writer_loads_pandas_on_first_use(tmp_path):
    # The positive control: the laziness moves the import, it does not lose it.
    code = (
        "import sys; from delve_fast.writers import CSVWriter; "
        "assert 'pandas' not in sys.modules; "
        f"w = CSVWriter({str(tmp_path / 'run')!r}); w.add_scalar('a', 1.0); w.save(); "
        "print('pandas' in sys.modules)"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"
    assert (tmp_path / "run.csv").read_text().splitlines() == [";a", "0;1.0"]


# --------------------------------------------------------------------------- the torch the extension was built against


def test_build_records_the_torch_it_was_compiled_against():
    if _loader.extension() is None:
        pytest.skip(f"compiled extension not loaded: {_loader.load_error()}")
    built = _loader.built_torch_version()
    assert built is not None, "the build did not write delve_fast/_build_config.py"
    assert built.split("+")[0] == torch.__version__.split("+")[0]
    assert _loader.torch_mismatch() is None


def test_other_torch_gives_one_clear_warning_and_the_pure_torch_backend():
    if _loader.built_torch_version() is None:
        pytest.skip("this tree was never built, so no torch version is recorded")
    # Pretend another torch is installed: the recorded version is real, the running one is not.
    code = """
import json, warnings
import torch
real = torch.__version__
torch.__version__ = "2.99.1"
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import delve_fast
    from delve_fast import ops
    mean, m2 = torch.zeros(3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64)
    ops.cov_update_(mean, m2, torch.zeros(2, dtype=torch.float64), torch.randn(5, 3, 1))  # would warn again if the fallback warning repeated
    ops.eigvalsh_desc([torch.eye(3, dtype=torch.float64)])
try:
    ops.resolve_backend("cpu", "cpp")
    cpp_error = None
except RuntimeError as exc:
    cpp_error = str(exc)
print(json.dumps({
    "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)],
    "backend": delve_fast.backend_info()["backend"],
    "ext_loaded": delve_fast._loader.extension() is not None,
    "cpp_error": cpp_error,
    "real": real,
}))
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["warnings"]) == 1, out["warnings"]
    message = out["warnings"][0]
    assert _loader.built_torch_version() in message and "2.99.1" in message  # both versions
    assert "pip install --no-build-isolation" in message and "scikit-build-core" in message  # the rebuild command
    assert out["backend"] == "torch" and not out["ext_loaded"]  # never loaded under a foreign torch
    assert out["cpp_error"] is not None and "2.99.1" in out["cpp_error"]  # backend="cpp" says why it cannot


@pytest.mark.parametrize(
    ("built", "running", "mismatch"),
    [
        ("2.13.0+cpu", "2.13.0+cpu", False),
        ("2.13.0+cpu", "2.13.0", False),  # the local tag names the wheel's variant, not its C++ API
        ("2.13.0+cpu", "2.13.1+cpu", True),
        ("2.13.0", "2.14.0.dev20260101", True),
        (None, "2.13.0", False),  # an unbuilt tree records nothing: no claim either way
    ],
)
def test_torch_mismatch_rule(monkeypatch, built, running, mismatch):
    monkeypatch.setattr(_loader, "built_torch_version", lambda: built)
    monkeypatch.setattr(torch, "__version__", running)
    message = _loader.torch_mismatch()
    assert (message is not None) is mismatch
    if mismatch:
        assert built in message and running in message


# --------------------------------------------------------------------------- the build backend's early checks


@pytest.fixture()
def backend_module():
    spec = importlib.util.spec_from_file_location("delve_fast_backend_under_test", BACKEND_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_backend_under_build_isolation_names_it_and_gives_the_command(backend_module, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError, as in pip's isolated env
    monkeypatch.setattr(sys, "path", [*sys.path, "/tmp/pip-build-env-abc123/overlay/lib/python3/site-packages"])
    with pytest.raises(SystemExit) as exc:
        backend_module.get_requires_for_build_wheel()
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "build isolation" in err
    assert "pip install scikit-build-core pybind11 ninja cmake && pip install --no-build-isolation ." in err


def test_backend_without_torch_outside_isolation_says_install_torch(backend_module, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "pip-build-env" not in p])
    monkeypatch.delenv("PYTHONPATH", raising=False)
    with pytest.raises(SystemExit):
        backend_module.get_requires_for_build_editable()
    err = capsys.readouterr().err
    assert "install torch first" in err and "build isolation" not in err


def test_backend_without_build_tools_names_them(backend_module, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "scikit_build_core", None)
    with pytest.raises(SystemExit):
        backend_module.build_wheel("unused")
    err = capsys.readouterr().err
    assert "scikit-build-core pybind11 ninja cmake" in err and "Traceback" not in err


def test_backend_sdist_needs_no_torch(backend_module, monkeypatch):
    pytest.importorskip("scikit_build_core")
    monkeypatch.setitem(sys.modules, "torch", None)
    assert isinstance(backend_module.get_requires_for_build_sdist(), list)


def test_backend_passes_through_when_all_is_there(backend_module):
    pytest.importorskip("scikit_build_core")
    from scikit_build_core import build

    assert backend_module.get_requires_for_build_wheel() == build.get_requires_for_build_wheel()


# --------------------------------------------------------------------------- metadata and docs


def test_license_file_matches_metadata():
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == {"text": "MIT"}
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert {"Homepage", "Repository", "Issues"} <= set(meta["urls"])
    assert not {"tqdm", "scikit-learn"} & {d.split(">")[0].split("=")[0] for d in meta["dependencies"]}
    assert any(d.startswith("scikit-learn") for d in meta["optional-dependencies"]["demo"])


def test_docs_stand_alone():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    # benchmarks.md is generated by benchmarks/report.py, which has its own wording.
    docs = [d for d in docs if d.name != "benchmarks.md"]
    for doc in docs:
        text = doc.read_text()
        for phrase in ("the issue", "shared/", "/work/", "reference/delve"):
            assert phrase not in text.lower(), f"{doc.name} mentions {phrase!r}"


# --------------------------------------------------------------------------- slow: the README's commands in fresh venvs

TORCH_SPEC = "torch==" + torch.__version__.split("+")[0]


def _source_copy(dest: Path) -> Path:
    """The tracked and untracked-but-not-ignored files, as a user's checkout (no build/, no .venv)."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in listing:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _venv_with_torch(where: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=300)
    py = where / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "--quiet", TORCH_SPEC], check=True, timeout=900)
    return py


def _pip(py: Path, *args: str, cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [py, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )


@pytest.mark.slow
def test_install_into_a_fresh_venv_with_only_torch(tmp_path):
    src = _source_copy(tmp_path / "src")
    py = _venv_with_torch(tmp_path / "venv")

    # pip's default build isolation: fails at once, naming the cause and the command.
    start = time.monotonic()
    proc = _pip(py, "install", ".", cwd=src, timeout=900)
    isolated_seconds = time.monotonic() - start
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "build isolation" in text and "pip install --no-build-isolation ." in text, text[-3000:]
    assert "Collecting pandas" not in text  # stopped before resolving the runtime dependencies

    # --no-build-isolation before the build tools are installed: a message, not BackendUnavailable.
    proc = _pip(py, "install", "--no-build-isolation", ".", cwd=src, timeout=900)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "BackendUnavailable" not in text and "scikit-build-core pybind11 ninja cmake" in text, text[-3000:]

    # The README's commands.
    proc = _pip(py, "install", "scikit-build-core", "pybind11", "ninja", "cmake", cwd=src)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _pip(py, "install", "--no-build-isolation", ".", TORCH_SPEC, cwd=src)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = subprocess.run(
        [py, "-c", "import sys, delve_fast; print(delve_fast.backend_info()['backend'], 'tqdm' in sys.modules)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.split()[0] == "cpp", check.stdout
    print(f"pip install . under build isolation failed after {isolated_seconds:.1f} s")


@pytest.mark.slow
def test_make_wheel_installs_into_a_fresh_venv(tmp_path):
    src = _source_copy(tmp_path / "src")
    build_venv = tmp_path / "build-venv"
    proc = subprocess.run(
        ["make", "wheel", f"VENV={build_venv}", f"TORCH_SPEC={TORCH_SPEC}"],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    wheels = list((src / "dist").glob("delve_fast-*.whl"))
    assert len(wheels) == 1, wheels
    py = _venv_with_torch(tmp_path / "user-venv")
    proc = _pip(py, "install", str(wheels[0]), TORCH_SPEC, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = subprocess.run(
        [py, "-W", "error::RuntimeWarning", "-c", "import delve_fast; print(delve_fast.backend_info()['backend'])"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "cpp"
