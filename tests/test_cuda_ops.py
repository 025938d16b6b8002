"""GPU tests of the CUDA kernels: compiled op vs pure-torch twin vs NumPy float64.

Every test here needs a CUDA device and an extension built with CUDA kernels
(``make cuda-build``); without them the whole module skips. Expected values
come from NumPy float64 on the exactly upcast samples, never from the code
under test; the twin (run on the same CUDA tensors) is a second witness.

Tolerances
----------
As in ``test_ops_cov_update.py``: the fp16/bf16/fp32 -> fp64 upcast is exact and
the kernel accumulates in float64 with FMAs, so ``RTOL = 1e-9`` of the largest
variance leaves a wide margin over float64 round-off while catching a lost
tile, a wrong split or a float32 accumulator. The large-offset test (mean 1e6,
std 1e-3) is bounded instead by the float64 representation of the running mean
itself (ulp(1e6) ~ 1e-10, i.e. 1e-7 of the std), hence ``RTOL_OFFSET = 1e-6``; a
naive ``E[xx^T] - mu mu^T`` would be wrong in every digit there.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from delve_fast import _reference, ops
from delve_fast._reference import as_channel_view
from delve_fast.testing import (
    assert_cov_close,
    fresh_state,
    np_mean_cov,
    opcheck_batch,
    require_compiled_device,
    samples_f64,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

RTOL = 1e-9
RTOL_OFFSET = 1e-6
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# C values around the 64-wide Gram tile and the 32-wide merge tile.
CHANNELS = [1, 3, 32, 63, 64, 65, 130, 257]


@pytest.fixture
def cuda_ops(compiled):
    require_compiled_device("cuda")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("delve_fast::cov_update_", "CUDA")
    return compiled


def make_batch(n, c, s, dtype=torch.float32, seed=0, offset=2.0, scale=1.0):
    """Correlated (N, C, S) data on the GPU, built on the CPU so every run sees the same values."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, s, generator=gen, dtype=torch.float64)
    common = torch.randn(n, 1, s, generator=gen, dtype=torch.float64)
    per_feature = torch.exp(0.5 * torch.randn(c, 1, generator=gen, dtype=torch.float64))
    shift = offset * torch.rand(c, 1, generator=gen, dtype=torch.float64)
    x = ((z + 0.7 * common) * per_feature * scale + shift).to(dtype)
    return x.to("cuda")


def fold(fn, batches):
    """Fold batches into a fresh CUDA state with ``fn``; return (mean, m2, count)."""
    c = batches[0].shape[1]
    mean, m2 = fresh_state(c, "cuda")
    count = 0
    for x in batches:
        fn(mean, m2, x, count)
        count += x.shape[0] * x.shape[2]
    return mean, m2, count


def expected(batches):
    samples = np.concatenate([samples_f64(x) for x in batches], axis=0)
    mean, cov = np_mean_cov(samples)
    return mean, cov * samples.shape[0]


def check_against_oracles(cuda_ops, batches, rtol=RTOL):
    """The CUDA op against NumPy float64 and against the twin; m2 exactly symmetric."""
    mean, m2, _ = fold(cuda_ops.cov_update_, batches)
    torch.cuda.synchronize()
    exp_mean, exp_m2 = expected(batches)
    scale = max(1.0, float(np.abs(exp_mean).max()))
    np.testing.assert_allclose(mean.cpu().numpy(), exp_mean, rtol=0, atol=rtol * scale)
    assert_cov_close(m2, exp_m2, rtol)
    assert torch.equal(m2, m2.T), "m2 must be exactly symmetric"
    t_mean, t_m2, _ = fold(_reference.cov_update_, batches)
    assert_cov_close(m2, t_m2.cpu().numpy(), rtol)
    np.testing.assert_allclose(mean.cpu().numpy(), t_mean.cpu().numpy(), rtol=0, atol=rtol * scale)


# ----------------------------------------------------------------------------- layouts and dtypes


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("c", CHANNELS)
def test_linear_rows(cuda_ops, dtype, c):
    """(B, C) activations viewed as (B, C, 1): features are the contiguous axis."""
    x = make_batch(300, c, 1, dtype=dtype, seed=c)
    check_against_oracles(cuda_ops, [x])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("c", [3, 65, 130])
def test_nchw(cuda_ops, dtype, c):
    """Contiguous NCHW viewed as (N, C, H*W): samples are the contiguous axis."""
    x = make_batch(4, c, 7 * 9, dtype=dtype, seed=c)
    check_against_oracles(cuda_ops, [x])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("c", [3, 65, 130])
def test_channels_last(cuda_ops, dtype, c):
    x4 = make_batch(3, c, 35, dtype=dtype, seed=c).reshape(3, c, 5, 7).contiguous(memory_format=torch.channels_last)
    x = as_channel_view(x4)
    assert x.stride(1) == 1, "expected a channels_last view"
    check_against_oracles(cuda_ops, [x])


def test_non_contiguous_views(cuda_ops):
    base = make_batch(40, 90, 24, dtype=torch.float32, seed=1)
    for x in (
        base[:, ::2, 1::3],  # strided features and samples
        base[::3, 5:70],  # sliced batch and features
        base.transpose(0, 2).transpose(1, 2)[:, :, :5],  # (S, C, N) permuted, no copy
        make_batch(600, 65, 1, seed=2).squeeze(-1).t().contiguous().t().unsqueeze(-1),  # column-major (K, C)
        make_batch(1, 33, 1, seed=3).expand(50, 33, 4),  # zero strides: one sample repeated
    ):
        assert not x.is_contiguous()
        check_against_oracles(cuda_ops, [x])


def test_input_is_not_modified(cuda_ops):
    x = make_batch(8, 70, 10, dtype=torch.float64, seed=4)
    before = x.clone()
    fold(cuda_ops.cov_update_, [x, x])
    assert torch.equal(x, before)


# ----------------------------------------------------------------------------- merging and splits


def test_several_updates(cuda_ops):
    """Uneven batch sizes, single samples, and a batch smaller than the shift estimate."""
    batches = [
        make_batch(5, 37, 11, seed=10),
        make_batch(3, 37, 11, seed=11),
        make_batch(1, 37, 1, seed=12),
        make_batch(700, 37, 1, seed=13),
        make_batch(2, 37, 300, seed=14),
    ]
    check_against_oracles(cuda_ops, batches)


@pytest.mark.parametrize("k,c", [(1, 64), (2, 1), (31, 65), (33, 5)])
def test_tiny_batches(cuda_ops, k, c):
    check_against_oracles(cuda_ops, [make_batch(k, c, 1, seed=k + c)])


@pytest.mark.parametrize("k,c", [(200_000, 16), (50_000, 130), (4_096, 520)])
def test_many_samples_split_k(cuda_ops, k, c):
    """Enough samples that the kernel splits them across blocks and reduces the partials."""
    x = make_batch(k, c, 1, dtype=torch.float32, seed=c)
    check_against_oracles(cuda_ops, [x, x[: k // 3]])


def test_large_offset_is_stable(cuda_ops):
    """mean 1e6, std 1e-3: the shifted accumulation keeps the covariance to ~1e-7 of its scale."""
    batches = [make_batch(300, 20, 3, dtype=torch.float64, seed=s, offset=0.0, scale=1e-3) + 1e6 for s in range(3)]
    mean, m2, count = fold(cuda_ops.cov_update_, batches)
    exp_mean, exp_m2 = expected(batches)
    np.testing.assert_allclose(mean.cpu().numpy(), exp_mean, rtol=1e-14)
    assert_cov_close(m2, exp_m2, RTOL_OFFSET)
    assert count == 2700
    assert torch.all(m2.diagonal() > 0), "variances of std-1e-3 data must survive the 1e6 offset"


def test_deterministic(cuda_ops):
    """Split-K partials are reduced in a fixed order: two runs agree bit for bit."""
    x = make_batch(60_000, 70, 1, seed=5)
    a = fold(cuda_ops.cov_update_, [x])
    b = fold(cuda_ops.cov_update_, [x])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_runs_on_current_stream(cuda_ops):
    """The kernels are ordered on the caller's stream, not the default one."""
    x = make_batch(1000, 50, 3, seed=6)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        mean, m2 = fresh_state(50, "cuda")
        cuda_ops.cov_update_(mean, m2, x, 0)
        cuda_ops.cov_update_(mean, m2, x, 3000)
    stream.synchronize()
    exp_mean, exp_m2 = expected([x, x])
    np.testing.assert_allclose(mean.cpu().numpy(), exp_mean, rtol=0, atol=1e-9 * max(1, np.abs(exp_mean).max()))
    assert_cov_close(m2, exp_m2, RTOL)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device(cuda_ops):
    """The op runs on the tensors' device, whatever the current device is."""
    x = make_batch(100, 40, 2, seed=7).to("cuda:1")
    mean = torch.zeros(40, dtype=torch.float64, device="cuda:1")
    m2 = torch.zeros(40, 40, dtype=torch.float64, device="cuda:1")
    cuda_ops.cov_update_(mean, m2, x, 0)
    exp_mean, exp_m2 = expected([x])
    np.testing.assert_allclose(mean.cpu().numpy(), exp_mean, rtol=0, atol=1e-9 * max(1, np.abs(exp_mean).max()))
    assert_cov_close(m2, exp_m2, RTOL)


def test_state_on_other_device_is_rejected(cuda_ops):
    mean, m2 = fresh_state(4, "cpu")
    with pytest.raises(RuntimeError, match="state on"):
        cuda_ops.cov_update_(mean, m2, make_batch(3, 4, 1), 0)


def test_ops_self_check_trusts_the_kernel(cuda_ops):
    """ops.cov_update_ verifies the CUDA kernel on first use; it must pass, without a warning."""
    x = make_batch(10, 12, 5, seed=8)
    mean, m2 = fresh_state(12, "cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.cov_update_(mean, m2, x, 0, backend="cpp")
    assert "cuda" in ops._verified_devices
    assert ops.resolve_backend("cuda", "auto") == "cpp"


# ----------------------------------------------------------------------------- eigenvalues


def test_eigvalsh_desc_cuda(cuda_ops):
    """Mixed sizes and dtypes, several of one size (batched together): NumPy eigvalsh, descending, >= 0."""
    gen = torch.Generator().manual_seed(9)
    mats = []
    for n, dtype in [
        (5, torch.float64),
        (40, torch.float64),
        (5, torch.float64),
        (40, torch.float32),
        (1, torch.float64),
    ]:
        a = torch.randn(n, n + 3, generator=gen, dtype=torch.float64)
        mats.append((a @ a.T).to(dtype).cuda())
    mats.append(torch.zeros(7, 7, dtype=torch.float64, device="cuda") - 1e-18 * torch.eye(7, device="cuda"))
    out = cuda_ops.eigvalsh_desc(mats)
    assert len(out) == len(mats)
    for m, vals in zip(mats, out, strict=True):
        assert vals.device == m.device and vals.dtype == m.dtype and vals.shape == (m.shape[0],)
        exp = np.clip(np.linalg.eigvalsh(m.cpu().double().numpy())[::-1], 0, None)
        tol = 1e-4 if m.dtype == torch.float32 else 1e-10
        np.testing.assert_allclose(vals.cpu().double().numpy(), exp, rtol=tol, atol=tol * max(1.0, exp.max()))
        assert torch.all(vals[:-1] >= vals[1:]) and torch.all(vals >= 0)


def test_eigvalsh_desc_cuda_matches_twin(cuda_ops):
    mats = [make_batch(n, n, 1, dtype=torch.float64, seed=n).squeeze(-1) for n in (8, 8, 8, 16)]
    mats = [m @ m.T for m in mats]
    got = cuda_ops.eigvalsh_desc(mats)
    ref = _reference.eigvalsh_desc(mats)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * float(b.max()))


# ----------------------------------------------------------------------------- opcheck


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "channels_last"])
@pytest.mark.parametrize("count", [0, 25])
def test_opcheck_cov_update_cuda(cuda_ops, dtype, layout, count):
    gen = torch.Generator().manual_seed(20)
    x = opcheck_batch(layout, gen)
    x = x.to(dtype).cuda()
    mean = torch.randn(19, generator=gen, dtype=torch.float64) if count else torch.zeros(19, dtype=torch.float64)
    a = torch.randn(19, 19, generator=gen, dtype=torch.float64)
    m2 = a @ a.t() if count else torch.zeros(19, 19, dtype=torch.float64)
    torch.library.opcheck(torch.ops.delve_fast.cov_update_.default, (mean.cuda(), m2.cuda(), x, count))


def test_opcheck_cov_update_cuda_input_requires_grad(cuda_ops):
    x = torch.randn(5, 7, 3, device="cuda", requires_grad=True)
    mean, m2 = fresh_state(7, "cuda")
    torch.library.opcheck(torch.ops.delve_fast.cov_update_.default, (mean, m2, x, 0))


def test_opcheck_eigvalsh_desc_cuda(cuda_ops):
    gen = torch.Generator().manual_seed(21)
    mats = []
    for n in (4, 4, 6):
        a = torch.randn(n, n, generator=gen, dtype=torch.float64)
        mats.append((a @ a.T).cuda())
    torch.library.opcheck(torch.ops.delve_fast.eigvalsh_desc.default, (mats,))


def test_opcheck_eigvalsh_desc_cuda_input_requires_grad(cuda_ops):
    gen = torch.Generator().manual_seed(22)
    mats = []
    for n in (2, 5):
        a = torch.randn(n, n, generator=gen, dtype=torch.float64)
        mats.append((a @ a.T).cuda().requires_grad_())
    torch.library.opcheck(torch.ops.delve_fast.eigvalsh_desc.default, (mats,))
