"""Tests of the batched eigenvalue op: compiled vs twin vs ``numpy.linalg.eigvalsh``.

Expected values come from NumPy float64 (on the very matrix the op saw,
upcast exactly) or from arithmetic.

Tolerances
----------
A backward-stable symmetric eigensolver returns eigenvalues of A + E with
||E||_2 <= p(n) * eps * ||A||_2, and by Weyl each eigenvalue then moves by at
most ||E||_2. LAPACK's p(n) is a modest polynomial; in practice the error is a
small multiple of n * eps * ||A||_2 at worst, so we allow an absolute error of
``8 * n * eps(dtype) * ||A||_2`` (eps of the op's working dtype: float32 matrices
are solved in float32). The NumPy float64 reference adds only ~n * 2e-16 *
||A||_2, negligible against that. Clamping can only move an eigenvalue towards
the reference's clamped value, so the bound survives it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from delve_fast import _reference, ops
from delve_fast.testing import devices, require_compiled_device

DEVICES = devices()

DTYPES = [torch.float32, torch.float64]
SIZES = [1, 2, 5, 16, 17, 33, 64, 150, 300]


@pytest.fixture(params=["compiled", "twin"])
def impl(request):
    if request.param == "compiled":
        return "compiled", request.getfixturevalue("compiled").eigvalsh_desc
    return "twin", _reference.eigvalsh_desc


def _fn_for(impl, device):
    name, fn = impl
    if name == "compiled":
        require_compiled_device(device)
    return fn


def spd(n, seed, dtype=torch.float64, device="cpu"):
    """A random symmetric positive definite matrix with a wide eigenvalue spread."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.exp(rng.uniform(-6, 3, n))
    a = (q * lam) @ q.T
    a = (a + a.T) / 2
    return torch.from_numpy(a).to(dtype).to(device)


def psd_rank_deficient(n, rank, seed, dtype=torch.float64, device="cpu"):
    """B B^T with rank < n, formed in ``dtype``: its zero eigenvalues come out as +-round-off."""
    gen = torch.Generator().manual_seed(seed)
    b = torch.randn(n, rank, generator=gen, dtype=torch.float64).to(dtype)
    return (b @ b.t()).to(device)


def expected_desc(a: torch.Tensor) -> np.ndarray:
    """NumPy float64 eigenvalues of the lower triangle of ``a``, descending, clamped at 0."""
    w = np.linalg.eigvalsh(a.detach().cpu().to(torch.float64).numpy(), UPLO="L")
    return np.clip(w[::-1], 0, None).copy()


def tol(a: torch.Tensor) -> float:
    eps = torch.finfo(a.dtype).eps
    norm2 = float(np.linalg.norm(a.detach().cpu().to(torch.float64).numpy(), 2)) if a.numel() else 0.0
    return 8 * a.shape[0] * eps * norm2 + 1e-300


def check_result(out, mats):
    assert isinstance(out, list | tuple) and len(out) == len(mats)
    for w, a in zip(out, mats, strict=True):
        assert w.shape == (a.shape[0],)
        assert w.dtype == a.dtype and w.device == a.device
        assert bool((w >= 0).all()), "negative eigenvalue survived the clamp"
        assert bool((w[1:] <= w[:-1]).all()), "not descending"
        torch.testing.assert_close(w.cpu().to(torch.float64), torch.from_numpy(expected_desc(a)), rtol=0, atol=tol(a))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mixed_list_spd_and_rank_deficient(impl, dtype, device):
    fn = _fn_for(impl, device)
    mats = [spd(n, seed=n, dtype=dtype, device=device) for n in SIZES]
    mats += [psd_rank_deficient(n, r, seed=n, dtype=dtype, device=device) for n, r in [(40, 3), (100, 99), (7, 1)]]
    # Interleave sizes so a kernel that reorders work must restore the order.
    mats = mats[::2] + mats[1::2]
    check_result(fn(mats), mats)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rank_deficient_round_off_is_clamped(impl, dtype):
    fn = _fn_for(impl, "cpu")
    a = psd_rank_deficient(60, 5, seed=1, dtype=dtype)
    # The premise: an unclamped solver does report tiny negatives here.
    raw = np.linalg.eigvalsh(a.to(torch.float64).numpy())
    assert raw.min() < 0
    (w,) = fn([a])
    check_result([w], [a])
    # 55 of the 60 true eigenvalues are zero: they must come out as tiny (clamped) values.
    assert float(w[5:].max()) <= tol(a)
    assert int((w == 0).sum()) >= 1


def test_indefinite_negatives_clamped_exactly(impl):
    fn = _fn_for(impl, "cpu")
    a = torch.diag(torch.tensor([3.0, -1.0, 2.0, -5.0], dtype=torch.float64))
    b = torch.tensor([[0.0, 2.0], [2.0, 0.0]], dtype=torch.float64)  # eigenvalues +-2
    wa, wb = fn([a, b])
    torch.testing.assert_close(wa, torch.tensor([3.0, 2.0, 0.0, 0.0], dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(wb, torch.tensor([2.0, 0.0], dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_one_by_one(impl, dtype):
    fn = _fn_for(impl, "cpu")
    out = fn([torch.tensor([[5.5]], dtype=dtype), torch.tensor([[-2.0]], dtype=dtype)])
    assert [w.tolist() for w in out] == [[5.5], [0.0]]
    assert all(w.dtype == dtype for w in out)


def test_empty_list(impl):
    """An empty list gives an empty list, for the raw op too (not only behind ops.eigvalsh_desc's guard)."""
    fn = _fn_for(impl, "cpu")
    assert list(fn([])) == []


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_public_entry_point(compiled, backend):  # noqa: ARG001 (compiled: fail if the build is broken)
    assert ops.eigvalsh_desc([], backend=backend) == []
    mats = [spd(20, 1), psd_rank_deficient(9, 2, seed=2, dtype=torch.float32)]
    out = ops.eigvalsh_desc(iter(mats), backend=backend)  # any iterable of matrices
    assert isinstance(out, list)
    check_result(out, mats)


def test_reads_lower_triangle_only(impl):
    """Like torch.linalg.eigvalsh, only the lower triangle is read."""
    fn = _fn_for(impl, "cpu")
    a = spd(12, seed=3)
    garbage = torch.triu(torch.full_like(a, 1e3), diagonal=1)
    b = torch.tril(a) + garbage
    (w,) = fn([b])
    torch.testing.assert_close(w, torch.from_numpy(expected_desc(a)), rtol=0, atol=tol(a))


def test_many_small_matrices(impl):
    """A long list (more matrices than threads) keeps its order."""
    fn = _fn_for(impl, "cpu")
    mats = [torch.diag(torch.arange(i % 7 + 1, dtype=torch.float64) + i) for i in range(50)]
    out = fn(mats)
    for i, w in enumerate(out):
        expected = torch.arange(i % 7 + 1, dtype=torch.float64).flip(0) + i
        assert torch.equal(w, expected), i


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_matches_twin(compiled, device):
    require_compiled_device(device)
    mats = [spd(n, seed=10 + n, device=device) for n in (3, 31, 128, 8, 8)]
    mats.append(psd_rank_deficient(50, 10, seed=4, dtype=torch.float32, device=device))
    for wc, wt, a in zip(compiled.eigvalsh_desc(mats), _reference.eigvalsh_desc(mats), mats, strict=True):
        torch.testing.assert_close(wc, wt, rtol=0, atol=2 * tol(a))  # each within tol of the exact values


@pytest.mark.parametrize("device", DEVICES)
def test_sizes_and_dtypes_mixed_in_one_call(impl, device):
    """Equal sizes (solved as one batch on CUDA) mixed with other sizes and dtypes: each keeps its own dtype."""
    fn = _fn_for(impl, device)
    mats = [
        spd(5, 1, device=device),
        spd(40, 2, device=device),
        spd(5, 3, device=device),
        spd(40, 4, dtype=torch.float32, device=device),
        spd(1, 5, device=device),
        torch.eye(7, dtype=torch.float64, device=device) * -1e-18,  # round-off negatives only
    ]
    check_result(fn(mats), mats)


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_never_share_storage(impl, device):
    """Every result is its own tensor, as the fake promises: equal-sized inputs (batched on CUDA), one input twice.

    Writing into one result must not change another.
    """
    fn = _fn_for(impl, device)
    a = spd(6, 1, device=device)
    mats = [a, spd(6, 2, device=device), a, spd(6, 3, dtype=torch.float32, device=device), spd(9, 4, device=device)]
    out = fn(mats)
    storages = [w.untyped_storage().data_ptr() for w in out]
    assert len(set(storages)) == len(out), "two results share storage"
    before = [w.clone() for w in out]
    out[0].fill_(-1.0)
    assert all(torch.equal(w, b) for w, b in zip(out[1:], before[1:], strict=True))


def test_input_not_modified(impl):
    fn = _fn_for(impl, "cpu")
    mats = [spd(10, 1), psd_rank_deficient(8, 2, seed=0, dtype=torch.float32)]
    before = [m.clone() for m in mats]
    fn(mats)
    assert all(torch.equal(m, b) for m, b in zip(mats, before, strict=True))


@pytest.mark.parametrize(
    "bad, pattern",
    [
        (torch.zeros(3, 4, dtype=torch.float64), r"square"),
        (torch.zeros(2, 3, 3, dtype=torch.float64), r"square"),
        (torch.zeros(3, 3, dtype=torch.int64), r"(?i)float"),
    ],
    ids=["rectangular", "3d", "integer"],
)
def test_bad_input_rejected(compiled, bad, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        compiled.eigvalsh_desc([spd(3, 0), bad])


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(compiled, device):
    require_compiled_device(device)
    mats = [spd(n, seed=n, device=device) for n in (1, 4, 4, 17)]
    mats.append(psd_rank_deficient(9, 3, seed=1, dtype=torch.float32, device=device))
    torch.library.opcheck(compiled.eigvalsh_desc.default, (mats,))


@pytest.mark.parametrize("device", DEVICES)
def test_input_requiring_grad_gets_no_graph(compiled, device):
    """Covariances that require grad (e.g. a state built from activations) must not get a bogus graph.

    The eigenvalues are reported statistics and the op declares no derivative:
    its output must neither require grad nor carry a grad_fn built by the ops
    the kernel calls internally, and the values must still be right.
    """
    require_compiled_device(device)
    mats = [spd(n, seed=n, device=device).requires_grad_() for n in (2, 5, 5)]
    out = compiled.eigvalsh_desc(mats)
    assert all(not w.requires_grad and w.grad_fn is None for w in out)
    check_result(out, [m.detach() for m in mats])
    # opcheck's schema and autograd-registration checks accept this op with
    # grad-requiring inputs; its gradient checks do not apply (no derivative).
    torch.library.opcheck(
        compiled.eigvalsh_desc.default, (mats,), test_utils=("test_schema", "test_autograd_registration")
    )


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_large_matrices_solved_concurrently(compiled, threads):
    """Several 512-wide matrices in one call, with torch's thread count set explicitly.

    Regression: solving them from inside an OpenMP parallel region once gave
    eigenvalues wrong by up to the largest eigenvalue (MKL's own threading does
    not nest there). The answer must not depend on the thread count.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        mats = [spd(512, seed=s) for s in range(3)] + [spd(300, seed=9), spd(64, seed=10)]
        out = compiled.eigvalsh_desc(mats)
    finally:
        torch.set_num_threads(before)
    check_result(out, mats)


def test_failure_in_a_worker_is_raised_not_fatal(compiled):
    """A solver error in any worker thread reaches the caller as an exception."""
    bad = torch.full((200, 200), float("nan"), dtype=torch.float64)
    with pytest.raises(RuntimeError):
        compiled.eigvalsh_desc([spd(300, seed=1), bad, spd(50, seed=2)])
