"""Backend selection: auto / cpp / torch, the environment variable, and a missing extension.

In-process tests spy on ``torch.ops.delve_fast.*`` and ``delve_fast._reference.*``
to see which implementation actually ran. The missing-extension paths run in
a subprocess (``DELVE_FAST_HIDE_EXTENSION=1``, or a blocked ``delve_fast._C``
import), because the extension is loaded once per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import delve_fast
from delve_fast import _reference, ops
from delve_fast.testing import fresh_state, np_mean_cov, samples_f64


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    """Each test here starts from an unset DELVE_FAST_BACKEND."""
    monkeypatch.delenv("DELVE_FAST_BACKEND", raising=False)


@pytest.fixture
def spies(compiled, monkeypatch):
    """Record which implementation of each op ran; the wrapped functions still compute."""
    calls = []

    def spy(tag, fn):
        def wrapper(*args, **kwargs):
            calls.append(tag)
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(compiled, "cov_update_", spy("cpp:cov", compiled.cov_update_))
    monkeypatch.setattr(compiled, "eigvalsh_desc", spy("cpp:eig", compiled.eigvalsh_desc))
    monkeypatch.setattr(_reference, "cov_update_", spy("torch:cov", _reference.cov_update_))
    monkeypatch.setattr(_reference, "eigvalsh_desc", spy("torch:eig", _reference.eigvalsh_desc))
    return calls


def _run_both_ops(backend=None):
    """Call both public ops once and check the answers against NumPy float64."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 7, 4, generator=gen) * 2 + 1
    mean, m2 = fresh_state(7)
    ops.cov_update_(mean, m2, x, 0, backend=backend)
    ref_mean, ref_cov = np_mean_cov(samples_f64(x))
    # fp64 accumulation of 120 samples: errors ~1e-15 relative; 1e-10 is a wide margin.
    torch.testing.assert_close(mean, torch.from_numpy(ref_mean), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m2 / 120, torch.from_numpy(ref_cov), rtol=1e-10, atol=1e-10)
    a = torch.from_numpy(ref_cov)
    (w,) = ops.eigvalsh_desc([a], backend=backend)
    expected = np.clip(np.linalg.eigvalsh(ref_cov)[::-1], 0, None).copy()
    # eigenvalues of a 7x7 fp64 matrix: error ~ 7 * eps * ||A||, far below 1e-10.
    torch.testing.assert_close(w, torch.from_numpy(expected), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- which one runs


def test_auto_uses_compiled_ops(spies):
    _run_both_ops()
    assert spies == ["cpp:cov", "cpp:eig"]
    info = delve_fast.backend_info()
    assert info["backend"] == "cpp" and info["requested"] == "auto"


def test_env_torch_forces_twin(spies, monkeypatch):
    monkeypatch.setenv("DELVE_FAST_BACKEND", "torch")
    _run_both_ops()
    assert spies == ["torch:cov", "torch:eig"]
    info = delve_fast.backend_info()
    assert info["backend"] == "torch"
    assert "torch" in info["reason"]


def test_env_cpp_uses_compiled(spies, monkeypatch):
    monkeypatch.setenv("DELVE_FAST_BACKEND", "cpp")
    _run_both_ops()
    assert spies == ["cpp:cov", "cpp:eig"]


def test_argument_overrides_env(spies, monkeypatch):
    monkeypatch.setenv("DELVE_FAST_BACKEND", "torch")
    _run_both_ops(backend="cpp")
    assert spies == ["cpp:cov", "cpp:eig"]
    spies.clear()
    monkeypatch.setenv("DELVE_FAST_BACKEND", "cpp")
    _run_both_ops(backend="torch")
    assert spies == ["torch:cov", "torch:eig"]
    assert delve_fast.backend_info("torch")["backend"] == "torch"


def test_backend_names_are_case_and_space_insensitive(spies, monkeypatch):
    monkeypatch.setenv("DELVE_FAST_BACKEND", " Torch ")
    _run_both_ops()
    assert spies == ["torch:cov", "torch:eig"]


# ----------------------------------------------------------------------------- bad names


@pytest.mark.parametrize(
    "call",
    [
        lambda b: ops.cov_update_(*fresh_state(3), torch.randn(2, 3, 1), 0, backend=b),
        lambda b: ops.eigvalsh_desc([torch.eye(2)], backend=b),
        lambda b: delve_fast.backend_info(b),
        lambda b: ops.resolve_backend("cpu", b),
    ],
    ids=["cov_update_", "eigvalsh_desc", "backend_info", "resolve_backend"],
)
def test_invalid_backend_argument(call):
    with pytest.raises(ValueError, match="gpu") as err:
        call("gpu")
    for name in ("auto", "cpp", "torch"):
        assert name in str(err.value)


def test_invalid_backend_env(monkeypatch):
    monkeypatch.setenv("DELVE_FAST_BACKEND", "fastest")
    with pytest.raises(ValueError, match="DELVE_FAST_BACKEND") as err:
        ops.cov_update_(*fresh_state(3), torch.randn(2, 3, 1), 0)
    for name in ("fastest", "auto", "cpp", "torch"):
        assert name in str(err.value)


# ----------------------------------------------------------------------------- backend_info


def test_backend_info_keys(compiled):  # noqa: ARG001 (compiled: fail if the build is broken)
    info = delve_fast.backend_info()
    assert {"backend", "cuda", "reason"} <= set(info)
    assert info["backend"] in ("cpp", "torch")
    assert isinstance(info["cuda"], bool)
    assert isinstance(info["reason"], str) and info["reason"]
    # cuda reports whether CUDA kernels were built, consistent with build_info().
    assert info["cuda"] == bool(info["build"].get("cuda"))


def test_kernel_for_other_device(compiled):  # noqa: ARG001
    """A device type without a compiled kernel: auto falls back, cpp names the device."""
    assert ops.resolve_backend("mps", "auto") == "torch"
    with pytest.raises(RuntimeError, match="'mps'"):
        ops.resolve_backend("mps", "cpp")
    if not delve_fast.backend_info()["cuda"]:
        assert ops.resolve_backend("cuda", "auto") == "torch"
        with pytest.raises(RuntimeError, match="cuda"):
            ops.resolve_backend("cuda", "cpp")


def test_distrusted_kernel_falls_back(compiled, monkeypatch):  # noqa: ARG001
    """A kernel that failed its first-use self-check is never used again."""
    monkeypatch.setattr(ops, "_distrusted_devices", {"cpu"})
    assert ops.resolve_backend("cpu", "auto") == "torch"
    with pytest.raises(RuntimeError, match="self-check"):
        ops.resolve_backend("cpu", "cpp")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.gpu
def test_cuda_self_check_passes(compiled):  # noqa: ARG001
    """On a GPU the compiled CUDA kernel (if built) must pass its self-check and be used."""
    if not delve_fast.backend_info()["cuda"]:
        pytest.skip("extension built without CUDA kernels")
    x = torch.randn(8, 5, 3, device="cuda")
    mean, m2 = fresh_state(5, "cuda")
    ops.cov_update_(mean, m2, x, 0)
    assert "cuda" not in ops._distrusted_devices
    assert ops.resolve_backend("cuda", "auto") == "cpp"


# ----------------------------------------------------------------------------- missing extension

_CHILD = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np
    warnings.simplefilter("always")  # so "once" must come from delve_fast itself
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if "--block-import" in sys.argv:
            sys.modules["delve_fast._C"] = None  # makes "from delve_fast import _C" raise ImportError
        import torch
        import delve_fast
        from delve_fast import ops
        out = {"imported": True, "info": {k: v for k, v in delve_fast.backend_info().items() if k != "build"}}
        out["op_registered"] = hasattr(torch.ops.delve_fast, "cov_update_")
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(40, 6, 3, generator=gen) * 3 + 1
        mean = torch.zeros(6, dtype=torch.float64)
        m2 = torch.zeros(6, 6, dtype=torch.float64)
        try:
            ops.cov_update_(mean, m2, x, 0)
            ops.cov_update_(mean, m2, x[:10], 120)
            w = ops.eigvalsh_desc([m2 / 150])
            out["cov"] = (m2 / 150).tolist()
            out["eig"] = w[0].tolist()
            samples = torch.cat([x, x[:10]]).double().permute(0, 2, 1).reshape(-1, 6).numpy()
            out["ref_cov"] = np.cov(samples, rowvar=False, bias=True).tolist()
        except Exception as exc:
            out["error"] = [type(exc).__name__, str(exc)]
    out["warnings"] = [[w.category.__name__, str(w.message)] for w in caught if "delve_fast" in str(w.message)]
    print(json.dumps(out))
    """
)


def _child(backend=None, hide=True, block_import=False):
    env = dict(os.environ)
    env.pop("DELVE_FAST_BACKEND", None)
    env.pop("DELVE_FAST_HIDE_EXTENSION", None)
    if backend is not None:
        env["DELVE_FAST_BACKEND"] = backend
    if hide:
        env["DELVE_FAST_HIDE_EXTENSION"] = "1"
    args = [sys.executable, "-c", _CHILD] + (["--block-import"] if block_import else [])
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_correct(out):
    # fp64 over 150 samples: errors ~1e-15; 1e-10 is a wide margin.
    np.testing.assert_allclose(out["cov"], out["ref_cov"], rtol=1e-10, atol=1e-10)
    expected = np.clip(np.linalg.eigvalsh(np.array(out["cov"]))[::-1], 0, None)
    np.testing.assert_allclose(out["eig"], expected, rtol=1e-10, atol=1e-10)


def test_hidden_extension_cpp_raises_clear_error():
    out = _child(backend="cpp")
    assert out["imported"], "import delve_fast must never break"
    assert not out["op_registered"], "the extension was not actually hidden"
    assert out["error"][0] == "RuntimeError"
    msg = out["error"][1]
    assert "cpp" in msg and "DELVE_FAST_HIDE_EXTENSION" in msg  # names the backend and the cause
    assert out["info"]["backend"] == "torch"
    assert "cpp" in out["info"]["reason"]


def test_hidden_extension_auto_warns_once_and_is_correct():
    out = _child(backend=None)
    assert out["imported"] and not out["op_registered"]
    assert "error" not in out, out.get("error")
    assert [w[0] for w in out["warnings"]] == ["RuntimeWarning"], out["warnings"]
    assert "pure-torch" in out["warnings"][0][1]
    _assert_correct(out)
    info = out["info"]
    assert info["backend"] == "torch" and info["cuda"] is False
    assert "DELVE_FAST_HIDE_EXTENSION" in info["reason"]


def test_hidden_extension_torch_backend_is_silent():
    """Asking for the twin is not a fallback: no warning, correct answers."""
    out = _child(backend="torch")
    assert "error" not in out, out.get("error")
    assert out["warnings"] == []
    _assert_correct(out)


def test_failed_import_of_extension_is_survived():
    """A real load failure (not the test switch): import works, the reason names the exception."""
    out = _child(backend=None, hide=False, block_import=True)
    assert out["imported"] and not out["op_registered"]
    assert "error" not in out, out.get("error")
    # The blocked import raises ModuleNotFoundError (an ImportError); its name must reach the user.
    assert len(out["warnings"]) == 1 and "ModuleNotFoundError" in out["warnings"][0][1]
    assert "ModuleNotFoundError" in out["info"]["reason"]
    _assert_correct(out)
