"""Tests of the covariance update: compiled op vs pure-torch twin vs NumPy float64.

One body per test for every device of the matrix (``delve_fast.testing.devices()``:
CPU always, CUDA where a GPU and CUDA kernels exist, skipped otherwise), and
every input dtype where the dtype matters. Shapes straddle the tiles of both
kernels: the CPU's 16-feature blocks and 256-sample tiles, the CUDA kernel's
64-wide Gram tiles, 32-wide merge tiles and sample splits.

Every expected value comes from NumPy float64 (``np.cov(..., bias=True)`` of the
stacked samples, upcast exactly from the dtype the op saw) or from arithmetic,
never from the code under test.

Tolerances
----------
The state is float64 whatever the input dtype, and the fp16/bf16/fp32 -> fp64
upcast is exact, so the only error is float64 accumulation (with FMAs on CUDA) over K <= 2e5
samples. A worst-case bound for a sum of K products is about K * eps64 ~ 1e-11
relative to sum |x_i x_j|; our data keep |mean| / std <= ~5, so that is within
~30x of the covariance scale. ``RTOL = 1e-9`` (relative, with an absolute part
of RTOL times the largest variance, see ``assert_cov_close``) keeps a >10x margin
over that bound while still catching any real error (a lost sample, a wrong
merge weight, a missing block, or a float32 accumulator, which is ~1e-7 off).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from delve_fast import _reference, ops
from delve_fast._reference import as_channel_view
from delve_fast.testing import (
    FLOAT_DTYPES,
    assert_cov_close,
    devices,
    fold_all,
    fresh_state,
    np_mean_cov,
    opcheck_batch,
    require_compiled_device,
    samples_f64,
)

DEVICES = devices()

RTOL = 1e-9
IMPLS = ["compiled", "twin"]


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(params=IMPLS)
def impl(request):
    """(name, fn) for the compiled op and the twin, each called as fn(mean, m2, counts, x)."""
    if request.param == "compiled":
        return "compiled", request.getfixturevalue("compiled").cov_update_
    return "twin", _reference.cov_update_


def _fn_for(impl, device):
    name, fn = impl
    if name == "compiled":
        require_compiled_device(device)
    return fn


def make_batch(n, c, s, dtype=torch.float64, seed=0, device="cpu", offset=2.0):
    """Correlated (N, C, S) data: per-feature offsets and scales, plus a shared factor.

    The shared factor makes every off-diagonal covariance non-zero, so a bug in
    the off-diagonal blocks cannot hide behind zeros.
    """
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, s, generator=gen, dtype=torch.float64)
    common = torch.randn(n, 1, s, generator=gen, dtype=torch.float64)
    scale = torch.exp(0.5 * torch.randn(c, 1, generator=gen, dtype=torch.float64))
    shift = offset * torch.rand(c, 1, generator=gen, dtype=torch.float64)
    x = (z + 0.7 * common) * scale + shift
    return x.to(dtype).to(device)


def run_updates(fn, batches, device="cpu"):
    """Fold ``batches`` in order into a fresh state; return (mean, m2, count)."""
    return fold_all(fn, batches, device)


def numpy_reference(batches):
    """(mean, cov, K) of the concatenated samples of ``batches``, in NumPy float64."""
    samples = np.concatenate([samples_f64(x) for x in batches], axis=0)
    return (*np_mean_cov(samples), samples.shape[0])


def check_vs_numpy(mean, m2, count, batches, rtol=RTOL, ref=None):
    """The state must match NumPy float64 of the concatenated samples."""
    ref_mean, ref_cov, k = ref if ref is not None else numpy_reference(batches)
    assert count == k
    scale = np.sqrt(np.abs(np.diag(ref_cov)).max()) + np.abs(ref_mean).max()
    torch.testing.assert_close(
        mean.cpu(), torch.from_numpy(ref_mean), rtol=rtol, atol=rtol * scale, msg=lambda m: "mean: " + m
    )
    cov = m2 / count
    assert_cov_close(cov, ref_cov, rtol, msg="cov")
    # m2 must be kept exactly symmetric (the lower triangle is mirrored).
    assert torch.equal(m2, m2.t()), "m2 is not symmetric"


def compare_all(batches, device, compiled_fn, rtol=RTOL):
    """compiled and twin each vs NumPy, and compiled vs twin."""
    states = {}
    ref = numpy_reference(batches)
    for name, fn in (("compiled", compiled_fn), ("twin", _reference.cov_update_)):
        mean, m2, count = run_updates(fn, batches, device)
        check_vs_numpy(mean, m2, count, batches, rtol, ref=ref)
        states[name] = (mean, m2 / count)
    (mc, cc), (mt, ct) = states["compiled"], states["twin"]
    torch.testing.assert_close(mc, mt, rtol=rtol, atol=rtol * float(mt.abs().max() + 1))
    assert_cov_close(cc, ct.cpu().numpy(), rtol, msg="compiled vs twin")


# ----------------------------------------------------------------------------- shapes


def _random_shapes(count=20, seed=20261101):
    """Seeded (N, C, S) sample: C log-uniform in [1, 600], N*S log-uniform in [1, 1e5].

    K is capped so that C^2 * K <= 3e8 (about 4 ms of fp64 GEMM), which keeps
    the whole sweep a few seconds; the largest C and K appear in explicit cases.
    """
    rng = np.random.default_rng(seed)
    shapes = []
    for i in range(count):
        c = int(round(np.exp(rng.uniform(0, np.log(600)))))
        k = int(round(np.exp(rng.uniform(0, np.log(1e5)))))
        k = max(1, min(k, int(3e8 // (c * c))))
        if i % 2 == 0:
            n, s = k, 1
        else:
            s = int(rng.integers(2, 65))
            n = max(1, k // s)
        shapes.append((n, c, s))
    return shapes


EDGE_SHAPES = [
    (1, 1, 1),  # a single sample of a single feature
    (7, 1, 1),  # C = 1
    (1, 1, 300),  # C = 1, N = 1, S > 1
    (1, 15, 1),  # N*S = 1
    (300, 15, 1),  # block edges of the 16-wide kernel ...
    (300, 16, 1),
    (300, 17, 1),
    (60, 31, 5),
    (60, 33, 5),
    (1, 33, 977),  # N = 1, many spatial positions
    (7, 13, 9),  # odd sizes everywhere
    (3, 600, 1),  # largest C, very few samples (rank-deficient)
    (2, 600, 700),  # largest C, K = 1400
    (100000, 16, 1),  # K = 1e5, S = 1
    (25, 40, 4000),  # K = 1e5, S > 1
    (1, 64, 1),  # one sample filling one CUDA Gram tile
    (2, 1, 1),
    (31, 65, 1),  # one slab short of 32 samples, one feature past the CUDA tile
    (33, 5, 1),  # one sample past a 32-sample slab
]

# C around the CPU's 16-feature blocks and the CUDA kernel's 64-wide Gram and 32-wide merge tiles.
TILE_EDGE_CHANNELS = [1, 3, 15, 16, 17, 32, 63, 64, 65, 130, 257]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", _random_shapes(), ids=lambda s: "x".join(map(str, s)))
def test_random_shapes(compiled, shape, device):
    require_compiled_device(device)
    x = make_batch(*shape, seed=sum(shape), device=device)
    compare_all([x], device, compiled.cov_update_)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", EDGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_edge_shapes(compiled, shape, device):
    require_compiled_device(device)
    x = make_batch(*shape, seed=7, device=device)
    compare_all([x], device, compiled.cov_update_)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("c", TILE_EDGE_CHANNELS)
def test_tile_edges(compiled, dtype, c, device):
    """(B, C) rows viewed as (B, C, 1), features the contiguous axis, at every tile edge of both kernels."""
    require_compiled_device(device)
    x = make_batch(300, c, 1, dtype=dtype, seed=c, device=device)
    compare_all([x], device, compiled.cov_update_)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k, c", [(200_000, 16), (50_000, 130), (4_096, 520)])
def test_many_samples(compiled, k, c, device):
    """Enough samples to split them between CUDA blocks (and CPU threads), then a partial second batch."""
    require_compiled_device(device)
    x = make_batch(k, c, 1, dtype=torch.float32, seed=c, device=device)
    compare_all([x, x[: k // 3]], device, compiled.cov_update_)


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(compiled, device):
    """Partial sums are reduced in a fixed order: two runs on the same data agree bit for bit.

    Deterministic by construction (the same work split, thread count and
    summation order on the same data), so exact equality is the contract.
    """
    require_compiled_device(device)
    x = make_batch(60_000, 70, 1, dtype=torch.float32, seed=5, device=device)
    a = run_updates(compiled.cov_update_, [x], device)
    b = run_updates(compiled.cov_update_, [x], device)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.slow
def test_largest_shape(compiled):
    """C = 600 with N*S = 1e5 (the top of the issue's range; ~0.5 GB of float64)."""
    x = make_batch(1000, 600, 100, dtype=torch.float32, seed=3)
    compare_all([x], "cpu", compiled.cov_update_)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    "shape",
    [(20000, 33, 1), (8, 200, 400), (50, 17, 300), (4, 300, 250), (3, 517, 97)],
    ids=["many-samples", "many-features", "nchw", "few-tiles-shared", "few-tiles-odd-c"],
)
def test_thread_counts(compiled, shape, threads):
    """Both work splits of the CPU kernel (per-thread accumulators / shared panel) at other thread counts.

    Two updates each, so that the second one merges into a non-empty state: with
    few tiles per thread the shared-panel split finishes that merge (and the
    mirror) inside the last tile's Gram instead of in a separate pass.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        batches = [make_batch(*shape, seed=11), make_batch(*shape, seed=12) + 3.0]
        mean, m2, count = run_updates(compiled.cov_update_, batches)
    finally:
        torch.set_num_threads(old)
    check_vs_numpy(mean, m2, count, batches)
    torch.testing.assert_close(m2, m2.T, rtol=0, atol=0)


def test_empty_batch_is_a_no_op(impl):
    fn = _fn_for(impl, "cpu")
    x = make_batch(50, 5, 2, seed=1)
    mean, m2, counts = fresh_state(5)
    fn(mean, m2, counts, x)
    before = (mean.clone(), m2.clone(), counts.clone())
    fn(mean, m2, counts, torch.empty(0, 5, 2))
    fn(mean, m2, counts, torch.empty(4, 5, 0))
    assert torch.equal(mean, before[0]) and torch.equal(m2, before[1]) and torch.equal(counts, before[2])


# ----------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape, channels_last",
    [((513, 17, 1), False), ((9, 40, 37), False), ((3, 70, 1000), False), ((3, 65, 35), True), ((4, 130, 63), False)],
    ids=["linear", "conv", "conv-big", "conv-channels-last", "conv-two-cuda-tiles"],
)
def test_dtypes(compiled, dtype, shape, channels_last, device):
    """Same fp64 tolerance for every dtype: the oracle sees the same (rounded) values, upcast exactly."""
    require_compiled_device(device)
    x = make_batch(*shape, dtype=dtype, seed=5, device=device)
    if channels_last:
        n, c, s = shape
        x = as_channel_view(x.reshape(n, c, 5, s // 5).contiguous(memory_format=torch.channels_last))
        assert x.stride(1) == 1, "expected a channels_last view"
    compare_all([x], device, compiled.cov_update_)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_dtypes_across_updates(compiled, device):
    require_compiled_device(device)
    batches = [make_batch(40 + i, 19, 3, dtype=dt, seed=i, device=device) for i, dt in enumerate(FLOAT_DTYPES)]
    compare_all(batches, device, compiled.cov_update_)


# ----------------------------------------------------------------------------- layouts


def _layouts(device):
    """(name, make) pairs: each make(seed) returns (x viewed (N, C, S), the tensor it views)."""

    def rnd(shape, seed, dtype=torch.float32):
        gen = torch.Generator().manual_seed(seed)
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * 1.5 + 0.5).to(dtype).to(device)

    def slice_steps(seed):
        base = rnd((14, 23, 30), seed)
        return base[::2, 1:21, ::3], base

    def transposed_nsc(seed):
        base = rnd((9, 25, 19), seed)  # (N, S, C) storage: features adjacent
        return base.transpose(1, 2), base

    def permuted_cns(seed):
        base = rnd((18, 11, 7), seed)  # (C, N, S) storage
        return base.permute(1, 0, 2), base

    def permuted_snc(seed):
        base = rnd((6, 13, 21), seed)  # (S, N, C) storage
        return base.permute(1, 2, 0), base

    def linear_transposed(seed):
        base = rnd((35, 200), seed)  # (C, B) storage, used as a (B, C) Linear output
        return as_channel_view(base.t()), base

    def expanded_stride0(seed):
        base = rnd((10, 18, 1), seed)  # S dimension broadcast with stride 0
        return base.expand(10, 18, 6), base

    def as_strided_generic(seed):
        n, c, s = 7, 20, 9
        base = rnd(((c - 1) * (n * s + 5) + n * s,), seed)
        # sample-major inside a feature, padded gap between features
        return base.as_strided((n, c, s), (1, n * s + 5, n)), base

    def broadcast_channels(seed):
        base = rnd((12, 1, 5), seed)  # every feature is the same value (channel stride 0)
        return base.expand(12, 19, 5), base

    def channels_last(seed):
        base = rnd((6, 24, 5, 7), seed).contiguous(memory_format=torch.channels_last)
        return as_channel_view(base), base

    def nchw(seed):
        base = rnd((4, 24, 9, 11), seed, dtype=torch.bfloat16)
        return as_channel_view(base), base

    def channels_last_sliced(seed):
        base = rnd((6, 40, 5, 7), seed).contiguous(memory_format=torch.channels_last)
        v = base[:, 3:37:2]  # channel step 2 on a channels_last tensor
        return as_channel_view(v), base

    def tokens(seed):
        base = rnd((3, 50, 48), seed, dtype=torch.float16)  # (B, T, D)
        return as_channel_view(base.reshape(-1, 48)), base

    def tokens_sliced(seed):
        base = rnd((3, 50, 51), seed)
        v = base[..., :48]  # (B, T, D) with row padding: still a view as (B*T, D)
        return as_channel_view(v.reshape(-1, 48)), base

    def float64_contiguous(seed):
        base = rnd((300, 21, 1), seed, dtype=torch.float64)
        return base, base

    return [
        (f.__name__, f)
        for f in (
            slice_steps,
            transposed_nsc,
            permuted_cns,
            permuted_snc,
            linear_transposed,
            expanded_stride0,
            broadcast_channels,
            as_strided_generic,
            channels_last,
            nchw,
            channels_last_sliced,
            tokens,
            tokens_sliced,
            float64_contiguous,
        )
    ]


_LAYOUT_NAMES = [name for name, _ in _layouts("cpu")]


def _layout(name, device):
    return dict(_layouts(device))[name]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", _LAYOUT_NAMES)
def test_layouts(compiled, layout, device):
    """Every strided layout gives the NumPy covariance, without copying in as_channel_view."""
    require_compiled_device(device)
    x, base = _layout(layout, device)(seed=len(layout))
    assert x.dim() == 3
    # The (N, C, S) view must share storage with the activation: no copy.
    assert x.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()
    # Only these three are contiguous; the rest must really exercise strides.
    assert x.is_contiguous() == (layout in ("nchw", "tokens", "float64_contiguous"))
    compare_all([x], device, compiled.cov_update_)


def test_as_channel_view_shapes_and_no_copy():
    x4 = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    v = as_channel_view(x4)
    assert v.shape == (2, 3, 20)
    assert v.data_ptr() == x4.data_ptr()
    # The view addresses the same elements: feature c of sample (n, h*W + w) is x4[n, c, h, w].
    assert torch.equal(v[1, 2, 3 * 5 + 4], x4[1, 2, 3, 4])
    assert as_channel_view(torch.randn(7, 3)).shape == (7, 3, 1)
    assert as_channel_view(torch.randn(3)).shape == (1, 3, 1)
    with pytest.raises(ValueError, match="rank"):
        as_channel_view(torch.randn(1, 2, 3, 4, 5))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["slice_steps", "channels_last", "tokens", "float64_contiguous", "expanded_stride0"])
def test_input_not_modified(impl, layout, device):
    fn = _fn_for(impl, device)
    x, base = _layout(layout, device)(seed=3)
    before = base.clone()
    mean, m2, counts = fresh_state(x.shape[1], device)
    fn(mean, m2, counts, x)
    fn(mean, m2, counts, x)  # second call takes the merge path
    assert torch.equal(base, before)


# ----------------------------------------------------------------------------- sequences


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "c, sizes",
    [
        (23, [(1, 1), (5, 3), (300, 1), (2, 2), (4097, 1), (17, 40), (1, 1)]),
        # C = 33 with 20000 samples takes the per-thread-accumulator split of the
        # CPU kernel; C = 200 the shared-panel split.
        (33, [(20000, 1), (3, 7), (1, 1), (50, 200)]),
        (200, [(2, 1), (900, 1), (4, 60), (1, 1)]),
    ],
    ids=["c23", "c33", "c200"],
)
def test_several_updates_then_reset(impl, device, c, sizes):
    """Batches of different sizes and layouts in a row, checked after every update, then a reset."""
    fn = _fn_for(impl, device)
    batches = []
    for i, (n, s) in enumerate(sizes):
        x = make_batch(n, c, s, seed=100 + i, device=device, offset=3.0 + i)  # drifting mean
        if i % 3 == 1:
            x = x.permute(0, 2, 1).contiguous().permute(0, 2, 1)  # features adjacent
        batches.append(x)
    mean, m2, counts = fresh_state(c, device)
    for i, x in enumerate(batches):
        fn(mean, m2, counts, x)
        count = int(counts[0])
        check_vs_numpy(mean, m2, count, batches[: i + 1])

    # Reset in place: the same tensors, zeroed, count back to 0. Nothing of the
    # old data may survive.
    mean.zero_()
    m2.zero_()
    counts.zero_()
    fresh = [make_batch(64, c, 5, seed=999, device=device, offset=-4.0), make_batch(3, c, 1, seed=998, device=device)]
    for x in fresh:
        fn(mean, m2, counts, x)
        count = int(counts[0])
    check_vs_numpy(mean, m2, count, fresh)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_and_twin_interleave(compiled, device):
    """The state is one format: alternating the implementations gives the NumPy answer."""
    require_compiled_device(device)
    c = 31
    batches = [make_batch(n, c, s, seed=n, device=device) for n, s in [(33, 4), (1, 1), (500, 1), (7, 19)]]
    mean, m2, counts = fresh_state(c, device)
    for i, x in enumerate(batches):
        (compiled.cov_update_ if i % 2 == 0 else _reference.cov_update_)(mean, m2, counts, x)
        count = int(counts[0])
    check_vs_numpy(mean, m2, count, batches)


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_public_entry_point(compiled, backend):  # noqa: ARG001 (compiled: fail if the build is broken)
    batches = [make_batch(40, 18, 6, seed=1), make_batch(3, 18, 1, seed=2, dtype=torch.bfloat16)]
    mean, m2, counts = fresh_state(18)
    for x in batches:
        ops.cov_update_(mean, m2, counts, x, backend=backend)
        count = int(counts[0])
    check_vs_numpy(mean, m2, count, batches)


def test_state_never_joins_autograd_graph(impl):
    """Activations from a training forward pass require grad; the float64 state must stay a plain buffer.

    If the state picked up a grad_fn it would keep every batch's autograd graph
    (and activations) alive for the whole run.
    """
    fn = _fn_for(impl, "cpu")
    w = torch.randn(6, 6, requires_grad=True)
    batches = [torch.randn(n, 5, 6) @ w for n in (8, 3)]  # (N, C=5, S=6), part of a graph
    assert all(x.requires_grad for x in batches)
    mean, m2, counts = fresh_state(5)
    for x in batches:
        fn(mean, m2, counts, x)
        count = int(counts[0])
    assert not mean.requires_grad and mean.grad_fn is None
    assert not m2.requires_grad and m2.grad_fn is None
    check_vs_numpy(mean, m2, count, batches)


# ----------------------------------------------------------------------------- stability


def _stable_batches(device="cpu"):
    """Per-feature mean 1e6 (+ integer feature offsets, exactly representable), std 1e-3, float64."""
    gen = torch.Generator().manual_seed(42)
    c = 8
    mu = 1e6 + torch.arange(c, dtype=torch.float64)
    batches = []
    for n in (1000, 37, 2500, 1, 600):
        z = torch.randn(n, c, 1, generator=gen, dtype=torch.float64)
        z[:, 1:] += 0.5 * z[:, :1]  # correlated features
        batches.append((mu[None, :, None] + 1e-3 * z).to(device))
    return batches, mu.numpy()


def _exact_reference(batches, mu):
    """Covariance of the stored float64 values, computed without cancellation.

    Every value lies in [mu/2, 2*mu], so ``x - mu`` is exact (Sterbenz); the
    covariance of the exactly-shifted data is the covariance of the data.
    """
    samples = np.concatenate([samples_f64(x) for x in batches], axis=0) - mu
    return np.cov(samples, rowvar=False, bias=True), samples.shape[0]


def _rel_err(cov, ref):
    return float(np.linalg.norm(np.asarray(cov) - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize("device", DEVICES)
def test_stability_large_mean_small_std(impl, device):
    fn = _fn_for(impl, device)
    batches, mu = _stable_batches(device)
    ref, k = _exact_reference(batches, mu)
    mean, m2, count = run_updates(fn, batches, device)
    assert count == k
    cov = (m2 / count).cpu().numpy()
    assert _rel_err(cov, ref) <= 1e-6
    # The mean itself is accurate to float64 round-off of 1e6 (ulp = 1.2e-10).
    ref_mean = mu + (np.concatenate([samples_f64(x) for x in batches]) - mu).mean(axis=0)
    np.testing.assert_allclose(mean.cpu().numpy(), ref_mean, rtol=0, atol=1e-8)


def test_stability_naive_formula_fails():
    """The naive E[xx^T] - mu mu^T in float64 loses every digit on the same data."""
    batches, mu = _stable_batches()
    ref, k = _exact_reference(batches, mu)
    s1 = np.zeros(len(mu))
    s2 = np.zeros((len(mu), len(mu)))
    for x in batches:
        a = samples_f64(x)
        s1 += a.sum(axis=0)
        s2 += a.T @ a
    m = s1 / k
    naive = s2 / k - np.outer(m, m)
    assert _rel_err(naive, ref) > 1e-2


# ----------------------------------------------------------------------------- errors


def _bad_calls(c=6):
    good_x = torch.randn(4, c, 3)
    z = lambda *s, dt=torch.float64: torch.zeros(*s, dtype=dt)  # noqa: E731
    n = z(2)
    return {
        "state-mean-float32": ((z(c, dt=torch.float32), z(c, c), n, good_x), r"float64"),
        "state-m2-float32": ((z(c), z(c, c, dt=torch.float32), n, good_x), r"float64"),
        "mean-wrong-shape": ((z(c + 1), z(c, c), n, good_x), r"shape"),
        "m2-wrong-shape": ((z(c), z(c, c + 1), n, good_x), r"shape"),
        "m2-1d": ((z(c), z(c * c), n, good_x), r"shape"),
        "counts-float32": ((z(c), z(c, c), z(2, dt=torch.float32), good_x), r"counts"),
        "counts-wrong-shape": ((z(c), z(c, c), z(3), good_x), r"counts"),
        "integer-x-int64": ((z(c), z(c, c), n, torch.ones(4, c, 3, dtype=torch.int64)), r"(?i)float16|dtype"),
        "integer-x-int32": ((z(c), z(c, c), n, torch.ones(4, c, 3, dtype=torch.int32)), r"(?i)float16|dtype"),
        "x-2d": ((z(c), z(c, c), n, torch.randn(4, c)), r"\(N, C, S\)"),
        "x-4d": ((z(c), z(c, c), n, torch.randn(4, c, 2, 2)), r"\(N, C, S\)"),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
@pytest.mark.parametrize("route", ["raw-op", "cpp", "torch"])
def test_bad_args_rejected_with_clear_error(compiled, route, case):
    args, pattern = _bad_calls()[case]
    mean, m2, counts = args[0].clone(), args[1].clone(), args[2].clone()
    if route == "raw-op":
        call = lambda: compiled.cov_update_(mean, m2, counts, *args[3:])  # noqa: E731
    else:
        call = lambda: ops.cov_update_(mean, m2, counts, *args[3:], backend=route)  # noqa: E731
    with pytest.raises((RuntimeError, ValueError, TypeError), match=pattern):
        call()
    # A rejected call leaves the state untouched.
    assert torch.equal(mean, args[0]) and torch.equal(m2, args[1]) and torch.equal(counts, args[2])


def test_negative_count_rejected_by_the_kernel(compiled):
    """The compiled kernel reads counts on the CPU and refuses a count that is not a whole number >= 0."""
    for bad in (-1.0, 2.5, float("nan")):
        mean, m2, counts = fresh_state(6)
        counts[0] = bad
        with pytest.raises(RuntimeError, match=r"counts\[0\]"):
            compiled.cov_update_(mean, m2, counts, torch.randn(4, 6, 3))
        assert torch.equal(m2, torch.zeros(6, 6))


@pytest.mark.parametrize("device", DEVICES[1:])
def test_state_on_other_device_rejected(compiled, device):
    require_compiled_device(device)
    mean, m2, counts = fresh_state(5, "cpu")
    with pytest.raises(RuntimeError, match="state on cpu but x on cuda"):
        compiled.cov_update_(mean, m2, counts, torch.randn(3, 5, 1, device=device))


# ----------------------------------------------------------------------------- CUDA streams and devices


@pytest.mark.parametrize("device", DEVICES[1:])
def test_runs_on_current_stream(compiled, device):
    """The CUDA kernels are ordered on the caller's stream, not the default one."""
    require_compiled_device(device)
    x = make_batch(1000, 50, 3, seed=6, device=device)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        mean, m2, counts = fresh_state(50, device)
        compiled.cov_update_(mean, m2, counts, x)
        compiled.cov_update_(mean, m2, counts, x)
    stream.synchronize()
    check_vs_numpy(mean, m2, 6000, [x, x])


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_cuda_device(compiled):
    """The op runs on the tensors' device, whatever the current device is."""
    require_compiled_device("cuda")
    x = make_batch(100, 40, 2, seed=7, device="cuda:1")
    mean, m2, count = run_updates(compiled.cov_update_, [x], "cuda:1")
    check_vs_numpy(mean, m2, count, [x])


# ----------------------------------------------------------------------------- opcheck


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "channels_last"])
@pytest.mark.parametrize("count", [0, 25])
def test_opcheck(compiled, dtype, layout, count, device):
    require_compiled_device(device)
    gen = torch.Generator().manual_seed(0)
    x = opcheck_batch(layout, gen)
    x = x.to(dtype).to(device)
    mean = torch.randn(19, generator=gen, dtype=torch.float64) if count else torch.zeros(19, dtype=torch.float64)
    a = torch.randn(19, 19, generator=gen, dtype=torch.float64)
    m2 = a @ a.t() if count else torch.zeros(19, 19, dtype=torch.float64)
    counts = torch.tensor([float(count), 0.0], dtype=torch.float64)
    torch.library.opcheck(compiled.cov_update_.default, (mean.to(device), m2.to(device), counts.to(device), x))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_input_requires_grad(compiled, device):
    """opcheck's autograd-registration test only bites when an input requires grad."""
    require_compiled_device(device)
    x = torch.randn(5, 7, 3, device=device, requires_grad=True)
    mean, m2, counts = fresh_state(7, device)
    torch.library.opcheck(compiled.cov_update_.default, (mean, m2, counts, x))
