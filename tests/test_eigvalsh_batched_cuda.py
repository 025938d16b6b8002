"""The CUDA eigenvalue solvers of ``eigvalsh_desc``: cuSOLVER's batched solver and torch's, by switch.

``DELVE_FAST_CUDA_EIG`` picks the solver (auto, batched, torch); every choice must
give NumPy float64's eigenvalues within the tolerance derived in
tests/test_ops_eigvalsh.py (``8 n eps ||A||_2``, eps of the matrix's dtype: a
backward-stable solver moves each eigenvalue by at most ``p(n) eps ||A||_2``,
Weyl). All tests need a GPU and the CUDA build; they skip otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from delve_fast.testing import require_compiled_device

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

SOLVERS = ["auto", "batched", "torch"]


@pytest.fixture(params=SOLVERS)
def solver(request, compiled, monkeypatch):
    require_compiled_device("cuda")
    monkeypatch.setenv("DELVE_FAST_CUDA_EIG", request.param)
    return compiled.eigvalsh_desc


def spd(n: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Random symmetric positive definite matrix on the GPU, eigenvalues spread over e^-6 .. e^3."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = (q * np.exp(rng.uniform(-6, 3, n))) @ q.T
    return torch.from_numpy((a + a.T) / 2).to(dtype).cuda()


def expected_desc(a: torch.Tensor) -> np.ndarray:
    w = np.linalg.eigvalsh(a.cpu().to(torch.float64).numpy(), UPLO="L")
    return np.clip(w[::-1], 0, None).copy()


def tol(a: torch.Tensor) -> float:
    a64 = a.cpu().to(torch.float64).numpy()
    return 8 * a.shape[0] * torch.finfo(a.dtype).eps * float(np.linalg.norm(a64, 2)) + 1e-300


def check(out, mats):
    assert len(out) == len(mats)
    for w, a in zip(out, mats, strict=True):
        assert w.shape == (a.shape[0],) and w.dtype == a.dtype and w.device == a.device
        assert bool((w[1:] <= w[:-1]).all()) and bool((w >= 0).all())
        torch.testing.assert_close(w.cpu().to(torch.float64), torch.from_numpy(expected_desc(a)), rtol=0, atol=tol(a))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [8, 33, 64, 128, 300, 700])
def test_groups_of_equal_width(solver, n, dtype):
    """Widths below, inside and above the batched solver's auto range, several matrices each."""
    mats = [spd(n, seed=100 * n + i, dtype=dtype) for i in range(3)]
    check(solver(mats), mats)


def test_mixed_widths_keep_their_order(solver):
    mats = [spd(n, seed=i) for i, n in enumerate([64, 40, 64, 128, 40, 1, 64])]
    mats.append(spd(64, seed=99, dtype=torch.float32))
    check(solver(mats), mats)


def test_reads_lower_triangle_only(solver):
    a = [spd(96, seed=s) for s in range(3)]
    garbage = torch.triu(torch.full_like(a[0], 1e3), diagonal=1)
    out = solver([torch.tril(x) + garbage for x in a])
    check(out, a)


def test_inputs_untouched_and_outputs_separate(solver):
    mats = [spd(64, seed=s) for s in range(4)]
    before = [m.clone() for m in mats]
    out = solver(mats)
    for m, b in zip(mats, before, strict=True):
        assert torch.equal(m, b), "the solver overwrote its input"
    assert len({w.untyped_storage().data_ptr() for w in out}) == len(out)


def test_nan_matrix_is_reported_by_index(compiled, monkeypatch):
    """The batched solver's info is checked: a NaN matrix raises, naming it, or yields NaN (never silent zeros)."""
    require_compiled_device("cuda")
    monkeypatch.setenv("DELVE_FAST_CUDA_EIG", "batched")
    mats = [spd(64, seed=s) for s in range(3)]
    mats[1][5, 3] = float("nan")
    mats[1][3, 5] = float("nan")
    try:
        out = compiled.eigvalsh_desc(mats)
    except RuntimeError as err:
        assert "matrix 1" in str(err), err
    else:
        assert bool(out[1].isnan().any()), out[1]
        check([out[0], out[2]], [mats[0], mats[2]])


def test_invalid_switch_names_the_choices(compiled, monkeypatch):
    require_compiled_device("cuda")
    monkeypatch.setenv("DELVE_FAST_CUDA_EIG", "fast")
    with pytest.raises(RuntimeError, match=r"DELVE_FAST_CUDA_EIG='fast'.*auto, batched, torch"):
        compiled.eigvalsh_desc([spd(4, seed=0)])
