"""DELVE_FAST_CUDA_UPDATE on the Python side: each CUDA update path gets its own self-check verdict.

No GPU is needed: the self-check is faked and only the bookkeeping of
``delve_fast.ops`` is exercised (as in test_backend.py's per-device test).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from delve_fast import ops

CUDA0 = torch.device("cuda", 0)


@pytest.fixture
def fresh_verdicts(monkeypatch):
    monkeypatch.setattr(ops, "_trust", {})
    monkeypatch.delenv(ops.SELF_CHECK_ENV_VAR, raising=False)
    monkeypatch.delenv(ops.CUDA_UPDATE_ENV_VAR, raising=False)


def _spec_failing_on(failing_path, checked):
    def fake_check(kernel, device):  # noqa: ARG001
        path = ops._kernel_variant("cov_update_", device) or "fused"
        checked.append(path)
        return path != failing_path

    return dataclasses.replace(ops.OPS["cov_update_"], self_check=fake_check)


def test_default_path_keeps_the_plain_name(fresh_verdicts):  # noqa: ARG001
    assert ops._check_label("cov_update_", CUDA0) == "cov_update_"
    assert ops._check_label("cov_update_", torch.device("cpu")) == "cov_update_"
    assert ops._check_label("eigvalsh_desc", CUDA0) == "eigvalsh_desc"


@pytest.mark.parametrize("path", ["syrk", "gemm"])
def test_each_path_is_checked_once_and_on_its_own(fresh_verdicts, monkeypatch, path):  # noqa: ARG001
    checked = []
    spec = _spec_failing_on(path, checked)
    assert ops._trusted(spec, CUDA0, "auto") is True  # fused
    monkeypatch.setenv(ops.CUDA_UPDATE_ENV_VAR, path)
    assert ops._check_label("cov_update_", CUDA0) == f"cov_update_[{path}]"
    with pytest.warns(RuntimeWarning, match=rf"compiled cov_update_\[{path}\] kernel on cuda:0 disagrees"):
        assert ops._trusted(spec, CUDA0, "auto") is False
    assert ops._trusted(spec, CUDA0, "auto") is False  # the verdict is kept, not re-checked
    assert ops._distrusted(CUDA0) == [f"cov_update_[{path}]"]
    with pytest.raises(RuntimeError, match=rf"cov_update_\[{path}\] kernel on cuda:0 failed its self-check"):
        ops._trusted(spec, CUDA0, "cpp")
    # Back on the fused path, its own (good) verdict applies and the failed one does not count.
    monkeypatch.setenv(ops.CUDA_UPDATE_ENV_VAR, "fused")
    assert ops._trusted(spec, CUDA0, "auto") is True
    assert ops._distrusted(CUDA0) == []
    assert checked == ["fused", path]
    assert ops.backend_info()["self_check"] == {"cov_update_@cuda:0": True, f"cov_update_[{path}]@cuda:0": False}


def test_switch_names_are_the_kernels(compiled):  # noqa: ARG001
    """The Python list of paths is the one the CUDA kernel accepts (csrc/cuda/cov_update_blas.h)."""
    from pathlib import Path

    header = (Path(__file__).resolve().parents[1] / "csrc" / "cuda" / "cov_update_blas.cu").read_text()
    assert "valid choices are " + ", ".join(ops.CUDA_UPDATE_PATHS) in header
