"""Backend selection: auto / cpp / torch, the environment variable, and a missing extension.

In-process tests spy on ``torch.ops.delve_fast.*`` and ``delve_fast._reference.*``
to see which implementation actually ran. The missing-extension paths run in
a subprocess (``DELVE_FAST_HIDE_EXTENSION=1``, or a blocked ``delve_fast._C``
import), because the extension is loaded once per process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

import delve_fast
from delve_fast import ops
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
    for name, tag in (("cov_update_", "torch:cov"), ("eigvalsh_desc", "torch:eig")):
        spec = ops.OPS[name]
        monkeypatch.setitem(ops.OPS, name, dataclasses.replace(spec, twin=spy(tag, spec.twin)))
    return calls


def _run_both_ops(backend=None):
    """Call both public ops once and check the answers against NumPy float64."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 7, 4, generator=gen) * 2 + 1
    mean, m2, counts = fresh_state(7)
    ops.cov_update_(mean, m2, counts, x, backend=backend)
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
        lambda b: ops.cov_update_(*fresh_state(3), torch.randn(2, 3, 1), backend=b),
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
        ops.cov_update_(*fresh_state(3), torch.randn(2, 3, 1))
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
    # The kernels come from the dispatcher, one entry per op of the table, and agree with the build flag.
    assert set(info["kernels"]) == set(ops.OPS) == {"cov_update_", "eigvalsh_desc"}
    for name, devices in info["kernels"].items():
        assert "cpu" in devices, name
        assert ("cuda" in devices) == info["cuda"], name
        assert ops.has_compiled_kernel("cpu", name)


def test_has_compiled_kernel_names_the_valid_ops():
    with pytest.raises(ValueError, match=r"'cov_update'.*cov_update_, eigvalsh_desc"):
        ops.has_compiled_kernel("cpu", "cov_update")
    assert not ops.has_compiled_kernel("mps", "cov_update_")


def test_kernel_for_other_device(compiled):  # noqa: ARG001
    """A device type without a compiled kernel: auto falls back, cpp names the device."""
    assert ops.resolve_backend("mps", "auto") == "torch"
    with pytest.raises(RuntimeError, match="'mps'"):
        ops.resolve_backend("mps", "cpp")
    if not delve_fast.backend_info()["cuda"]:
        assert ops.resolve_backend("cuda", "auto") == "torch"
        with pytest.raises(RuntimeError, match="cuda"):
            ops.resolve_backend("cuda", "cpp")


# ----------------------------------------------------------------------------- first-use self-check
#
# Accelerator kernels check themselves against the twin on first use. The CPU
# kernels are exempt (the suite covers them), so these tests treat "cpu" as a
# checked device and inject faulty kernels in place of the compiled op.


@pytest.fixture
def checked_cpu(compiled, monkeypatch):
    """Make the CPU a self-checked device, with no verdicts yet and the check enabled."""
    monkeypatch.setattr(ops, "_SUITE_TESTED_DEVICE_TYPES", frozenset())
    monkeypatch.setattr(ops, "_trust", {})
    monkeypatch.delenv(ops.SELF_CHECK_ENV_VAR, raising=False)
    return compiled


def _inject(monkeypatch, compiled, name, fn):
    """Replace ``torch.ops.delve_fast.<name>`` by ``fn``; returns the list of calls it receives."""
    calls = []

    def wrapper(*args):
        # Tensors the op updates in place (cov_update_'s counts) are recorded as they were at the call.
        calls.append(
            tuple(a.clone() if isinstance(a, torch.Tensor) and a.dim() == 1 and a.numel() == 2 else a for a in args)
        )
        return fn(*args)

    monkeypatch.setattr(compiled, name, wrapper)
    return calls


def _state_after_one_update(backend=None):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(50, 9, 3, generator=gen) * 2 + 3
    mean, m2, counts = fresh_state(9)
    ops.cov_update_(mean, m2, counts, x, backend=backend)
    ref_mean, ref_cov = np_mean_cov(samples_f64(x))
    return mean, m2 / 150, ref_mean, ref_cov


def _assert_state_correct(mean, cov, ref_mean, ref_cov):
    # fp64 over 150 samples: errors ~1e-15; 1e-10 is a wide margin, far below the injected faults (1e-6).
    torch.testing.assert_close(mean, torch.from_numpy(ref_mean), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(cov, torch.from_numpy(ref_cov), rtol=1e-10, atol=1e-10)


def test_self_check_accepts_the_real_kernels(checked_cpu, monkeypatch, recwarn):
    """The compiled CPU kernels pass the check the accelerators get, and then serve the calls."""
    calls = _inject(monkeypatch, checked_cpu, "cov_update_", checked_cpu.cov_update_)
    _assert_state_correct(*_state_after_one_update())
    (w,) = ops.eigvalsh_desc([torch.eye(3) * 2.0])
    torch.testing.assert_close(w, torch.full((3,), 2.0))
    assert not [r for r in recwarn if "delve_fast" in str(r.message)]
    assert ops.backend_info()["self_check"] == {"cov_update_@cpu": True, "eigvalsh_desc@cpu": True}
    # The check's own calls, then the user's: the kernel served it.
    assert len(calls) > 1 and calls[-1][3].shape == (50, 9, 3)


def test_self_check_input_covers_tiles_dtypes_and_precisions(checked_cpu, monkeypatch):
    calls = _inject(monkeypatch, checked_cpu, "cov_update_", checked_cpu.cov_update_)
    ops.cov_update_(*fresh_state(4), torch.randn(3, 4, 1))
    check_calls = calls[:-1]
    seen = [(x.shape[1], x.shape[0] * x.shape[2], x.dtype, mixed) for _, _, _, x, mixed in check_calls]
    assert {dt for _, _, dt, _ in seen} == {torch.float16, torch.bfloat16, torch.float32, torch.float64}
    # More than one 64-wide CUDA Gram tile, in both precisions, with enough samples for two sample splits.
    assert {mixed for c, k, _, mixed in seen if c > 64 and k > 1024} == {False, True}
    assert len({c for c, _, _, _ in seen}) >= 3
    # Cases also fold a second batch into a non-empty state (the merge path), in both layouts.
    assert any(counts[0] > 0 for _, _, counts, _, _ in check_calls)
    assert {x.stride(1) == 1 for _, _, _, x, _ in check_calls} == {False, True}
    # And batches holding a NaN and an Inf, which must be skipped.
    assert {"nan", "inf"} <= {
        "nan" if x.isnan().any() else "inf" for _, _, _, x, _ in check_calls if not x.isfinite().all()
    }


def _off_by_a_millionth(real):
    def kernel(mean, m2, counts, x, mixed):
        real(mean, m2, counts, x, mixed)
        m2.mul_(1 + 1e-6)  # symmetric, plausible, wrong

    return kernel


def test_faulty_kernel_is_replaced_by_the_twin_under_auto(checked_cpu, monkeypatch):
    calls = _inject(monkeypatch, checked_cpu, "cov_update_", _off_by_a_millionth(checked_cpu.cov_update_))
    with pytest.warns(RuntimeWarning, match=r"cov_update_ kernel on cpu disagrees.*falling back to the twin"):
        result = _state_after_one_update()
    _assert_state_correct(*result)
    checked = len(calls)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per device, not per call
        _assert_state_correct(*_state_after_one_update())
    assert len(calls) == checked, "a kernel that failed its check was called again"
    assert ops.resolve_backend("cpu", "auto") == "torch"
    with pytest.raises(RuntimeError, match=r"cov_update_ kernel on cpu failed its self-check"):
        ops.resolve_backend("cpu", "cpp")
    assert ops.backend_info()["self_check"] == {"cov_update_@cpu": False}


def test_raising_kernel_is_replaced_by_the_twin_under_auto(checked_cpu, monkeypatch):
    def boom(*args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    _inject(monkeypatch, checked_cpu, "cov_update_", boom)
    with pytest.warns(RuntimeWarning, match=r"raised RuntimeError: CUDA error: an illegal memory access"):
        result = _state_after_one_update()
    _assert_state_correct(*result)


def test_raising_kernel_under_cpp_is_a_clear_error(checked_cpu, monkeypatch):
    def boom(*args):
        raise RuntimeError("kernel launch failed")

    calls = _inject(monkeypatch, checked_cpu, "cov_update_", boom)
    mean, m2, counts = fresh_state(4)
    with pytest.raises(RuntimeError, match=r"cov_update_ kernel on cpu raised RuntimeError: kernel launch failed"):
        ops.cov_update_(mean, m2, counts, torch.randn(3, 4, 1), backend="cpp")
    # The verdict is kept: the next call fails too, without running the kernel again.
    with pytest.raises(RuntimeError, match=r"backend 'cpp'.*cov_update_ kernel on cpu failed its self-check"):
        ops.cov_update_(mean, m2, counts, torch.randn(3, 4, 1), backend="cpp")
    assert len(calls) == 1
    assert torch.equal(mean, torch.zeros(4, dtype=torch.float64)) and not m2.any()


def test_aliasing_eigenvalue_outputs_fail_the_check(checked_cpu, monkeypatch):
    """Outputs that are rows of one stacked tensor (a batched solve's) make a failed kernel."""
    real = checked_cpu.eigvalsh_desc

    def aliasing(covs):
        vals = torch.stack(list(real(covs[:2])))  # the check's first two matrices share a size
        return [vals[0], vals[1], *real(covs[2:])]

    _inject(monkeypatch, checked_cpu, "eigvalsh_desc", aliasing)
    with pytest.warns(RuntimeWarning, match="eigvalsh_desc kernel on cpu disagrees"):
        (w,) = ops.eigvalsh_desc([torch.eye(2, dtype=torch.float64) * 3.0])
    torch.testing.assert_close(w, torch.full((2,), 3.0, dtype=torch.float64))


def test_self_check_can_be_switched_off(checked_cpu, monkeypatch):
    monkeypatch.setenv(ops.SELF_CHECK_ENV_VAR, "0")
    calls = _inject(monkeypatch, checked_cpu, "cov_update_", _off_by_a_millionth(checked_cpu.cov_update_))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, cov, _, ref_cov = _state_after_one_update()
    assert len(calls) == 1, "with the check off, the user's call is the kernel's only call"
    torch.testing.assert_close(cov, torch.from_numpy(ref_cov) * (1 + 1e-6), rtol=1e-10, atol=1e-10)
    assert ops.backend_info()["self_check"] == {}


def test_self_check_verdicts_are_per_device(checked_cpu):  # noqa: ARG001
    """Two devices of one type are checked, and trusted or not, separately (no GPU needed: the check is faked)."""
    checked = []

    def fake_check(kernel, device):  # noqa: ARG001
        checked.append(str(device))
        return device.index == 0

    spec = dataclasses.replace(ops.OPS["cov_update_"], self_check=fake_check)
    assert ops._trusted(spec, torch.device("cuda", 0), "auto") is True
    with pytest.warns(RuntimeWarning, match="on cuda:1 disagrees"):
        assert ops._trusted(spec, torch.device("cuda", 1), "auto") is False
    assert ops._trusted(spec, torch.device("cuda", 0), "auto") is True
    assert checked == ["cuda:0", "cuda:1"], "each device is checked once"
    with pytest.raises(RuntimeError, match="on cuda:1 failed its self-check"):
        ops._trusted(spec, torch.device("cuda", 1), "cpp")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.gpu
def test_cuda_self_check_passes(compiled):  # noqa: ARG001
    """On a GPU the compiled CUDA kernels (if built) pass their self-check, silently, and are used."""
    if not ops.has_compiled_kernel("cuda"):
        pytest.skip("extension built without CUDA kernels")
    x = torch.randn(8, 5, 3, device="cuda")
    mean, m2, counts = fresh_state(5, "cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.cov_update_(mean, m2, counts, x, backend="cpp")
        ops.eigvalsh_desc([m2], backend="cpp")
    key = f"cuda:{torch.cuda.current_device()}"
    checks = ops.backend_info()["self_check"]
    assert checks[f"cov_update_@{key}"] is True and checks[f"eigvalsh_desc@{key}"] is True
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
        counts = torch.zeros(2, dtype=torch.float64)
        try:
            ops.cov_update_(mean, m2, counts, x)
            ops.cov_update_(mean, m2, counts, x[:10])
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
