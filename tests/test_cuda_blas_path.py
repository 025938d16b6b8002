"""The chunked (cuBLAS on CUDA) covariance update, on every device of the matrix.

On CUDA, ``DELVE_FAST_CUDA_UPDATE=syrk|gemm`` routes ``cov_update_`` to this
path; the private op ``torch.ops.delve_fast._cov_update_chunked`` reaches it
directly on any device, with a chosen chunk size. On the CPU the op runs the
same device-generic code (shift, chunks, TF32 split, merge) with CPU products
that mimic the GPU's: ``syrk`` leaves NaN in the strict lower triangle of every
product (so a merge that read it would fail), and the mixed products are float32
products of TF32-exact inputs. So everything but cuBLAS and the CUDA merge kernel is
tested here without a GPU; the CUDA cases run the real thing where there is one.

Expected values come from NumPy float64 of the very samples the op saw.

Tolerances
----------
double: the state is float64 and the products are float64, so the error is
float64 accumulation over K <= 1e5 samples (see test_ops_cov_update.py):
``RTOL = 1e-9`` of the largest variance keeps a wide margin and still catches
a lost chunk, a wrong weight or a float32 product (~1e-7).

mixed: 3xTF32 leaves each shifted value with a relative representation error of
about 2**-22 (hi + lo, lo rounded to TF32's 11 significant bits) and each
group's float32 sum of at most 512 products a relative error of up to
~514 * 2**-24 (worst case; docs/precision.md), so entries are within
~3.1e-5 * sqrt(cov_ii cov_jj) + 2 * 2**-22. ``MIXED_BOUND = 1e-4`` is that bound with a 3x
margin for tensor-core accumulation on a GPU; the CPU emulation observes ~1e-7.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from delve_fast import _reference, ops, stats
from delve_fast._reference import as_channel_view
from delve_fast.testing import (
    FLOAT_DTYPES,
    assert_cov_close,
    devices,
    fresh_state,
    np_mean_cov,
    require_compiled_device,
    samples_f64,
    vgg_benchmark_model,
)

DEVICES = devices()
GRAMS = ["syrk", "gemm"]
RTOL = 1e-9
MIXED_BOUND = 1e-4


def _op(compiled, device):
    require_compiled_device(device)
    return compiled._cov_update_chunked


def _batches(shape, count=3, seed=0, dtype=torch.float32, device="cpu", offset=4.0):
    """Correlated batches with per-feature offsets, so neither the shift nor the off-diagonals can hide a bug."""
    gen = torch.Generator().manual_seed(seed)
    n, c, s = shape
    out = []
    for _ in range(count):
        z = torch.randn(n, c, s, generator=gen, dtype=torch.float64)
        common = torch.randn(n, 1, s, generator=gen, dtype=torch.float64)
        out.append(((z + 0.6 * common) * 1.5 + offset).to(dtype).to(device))
    return out


def _fold(fn, batches, *args):
    mean, m2, counts = fresh_state(batches[0].shape[1], batches[0].device)
    for x in batches:
        fn(mean, m2, counts, x, *args)
    return mean, m2, counts


def _normalised_error(m2, counts, batches):
    """max |cov - cov_ref| / sqrt(cov_ii cov_jj), against NumPy float64."""
    ref = np_mean_cov(np.concatenate([samples_f64(b) for b in batches]))[1]
    got = (m2 / counts[0]).cpu().numpy()
    scale = np.sqrt(np.outer(np.diag(ref), np.diag(ref)))
    return float(np.max(np.abs(got - ref) / scale))


def _check_double(mean, m2, counts, batches):
    samples = np.concatenate([samples_f64(b) for b in batches])
    ref_mean, ref_cov = np_mean_cov(samples)
    assert counts.cpu().tolist() == [samples.shape[0], 0]
    scale = np.sqrt(np.abs(np.diag(ref_cov)).max()) + np.abs(ref_mean).max()
    torch.testing.assert_close(mean.cpu(), torch.from_numpy(ref_mean), rtol=RTOL, atol=RTOL * scale)
    assert_cov_close(m2 / counts[0], ref_cov, RTOL)
    assert torch.equal(m2, m2.t()), "m2 is not exactly symmetric"


# (shape, chunk): one chunk; chunks of whole rows with a short last one; rows
# longer than a chunk (split rows, S > chunk); C past one 64-wide tile; C = 1.
CASES = [
    ((300, 70, 1), 0),
    ((7, 33, 100), 64),
    ((9, 20, 50), 128),
    ((2, 20, 1000), 96),
    ((40, 130, 3), 50),
    ((13, 1, 7), 16),
    ((1, 5, 1), 0),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gram", GRAMS)
@pytest.mark.parametrize(("shape", "chunk"), CASES, ids=[f"{s}-chunk{c}" for s, c in CASES])
def test_double_matches_numpy(compiled, device, gram, shape, chunk):
    op = _op(compiled, device)
    batches = _batches(shape, device=device)
    _check_double(*_fold(op, batches, False, chunk, gram), batches)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_every_dtype_and_layout(compiled, device, dtype):
    """Any input dtype (upcast exactly) and the features-adjacent layout of a channels_last map."""
    op = _op(compiled, device)
    gen = torch.Generator().manual_seed(4)
    maps = [(torch.randn(6, 40, 5, 7, generator=gen) + 3).to(dtype) for _ in range(2)]
    batches = [as_channel_view(m.contiguous(memory_format=torch.channels_last)).to(device) for m in maps]
    assert batches[0].stride(1) == 1
    _check_double(*_fold(op, batches, False, 64, "syrk"), batches)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gram", GRAMS)
@pytest.mark.parametrize(("shape", "chunk"), CASES[:5], ids=[f"{s}-chunk{c}" for s, c in CASES[:5]])
def test_mixed_within_bound_and_not_float64(compiled, device, gram, shape, chunk):
    op = _op(compiled, device)
    batches = _batches(shape, device=device, offset=40.0)  # far from zero: the shift must do its job
    mean, m2, counts = _fold(op, batches, True, chunk, gram)
    assert _normalised_error(m2, counts, batches) <= MIXED_BOUND
    assert torch.equal(m2, m2.t())
    # The mixed products really are not float64 ones (the test would notice a silent fallback).
    _, m2_double, _ = _fold(op, batches, False, chunk, gram)
    assert not torch.equal(m2, m2_double)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_groups_cross_chunk_edges(compiled, device):
    """Groups of 512 samples with a padded last group, several groups per chunk and a short last chunk."""
    op = _op(compiled, device)
    batches = _batches((1, 24, 3000), count=2, device=device)  # 3000 = 5 full groups + 440
    mean, m2, counts = _fold(op, batches, True, 2048, "syrk")
    assert counts.cpu().tolist() == [6000, 0]
    assert _normalised_error(m2, counts, batches) <= MIXED_BOUND


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mixed", [False, True], ids=["double", "mixed"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_nonfinite_batch_leaves_state_bit_identical(compiled, device, mixed, bad):
    op = _op(compiled, device)
    good, poisoned = _batches((30, 70, 3), count=2, device=device)
    mean, m2, counts = fresh_state(70, device)
    op(mean, m2, counts, good, mixed, 32, "syrk")
    m2[0, 1] = m2[1, 0] = -0.0  # a negative zero must keep its sign bit too
    before = [t.clone() for t in (mean, m2)]
    poisoned[17, 45, 2] = bad  # in the third of several chunks
    op(mean, m2, counts, poisoned, mixed, 32, "syrk")
    for old, new in zip(before, (mean, m2), strict=True):
        assert torch.equal(old.view(torch.int64), new.view(torch.int64)), "state bits changed"
    assert counts.cpu().tolist() == [90, 1]
    # The state goes on folding good batches afterwards.
    op(mean, m2, counts, good, mixed, 32, "syrk")
    assert counts.cpu().tolist() == [180, 1]


@pytest.mark.parametrize("device", DEVICES)
def test_matches_the_twin_and_the_fused_kernel(compiled, device):
    """The three implementations agree on interleaved updates of one stream of batches."""
    op = _op(compiled, device)
    batches = _batches((50, 66, 4), count=4, device=device)
    states = {
        "chunked": _fold(op, batches, False, 64, "syrk"),
        "twin": _fold(_reference.cov_update_, batches, False),
        "fused": _fold(compiled.cov_update_, batches, False),
    }
    ref_mean, ref_m2, ref_counts = states["twin"]
    for name, (mean, m2, counts) in states.items():
        assert torch.equal(counts, ref_counts), name
        torch.testing.assert_close(mean, ref_mean, rtol=RTOL, atol=RTOL * 10)
        assert_cov_close(m2 / counts[0], (ref_m2 / ref_counts[0]).cpu().numpy(), RTOL, msg=name)


def test_tf32_split_emulation_is_what_the_error_depends_on(compiled):
    """Splitting matters: one TF32 rounding (no lo part) would be ~1e-3 off; 3xTF32 is ~1e-7 (CPU emulation).

    The one-rounding error is computed here from NumPy (mantissas rounded to 10
    bits), so the comparison documents why the op pays for three products.
    """
    batches = _batches((2000, 32, 1), count=1, offset=0.0)
    x = samples_f64(batches[0])
    centred = x - x.mean(axis=0)
    bits = centred.astype(np.float32).view(np.int32)
    tf32 = ((bits + 0x1000) & np.int32(-0x2000)).view(np.float32).astype(np.float64)
    one_rounding = tf32.T @ tf32 / len(x)
    ref = centred.T @ centred / len(x)
    scale = np.sqrt(np.outer(np.diag(ref), np.diag(ref)))
    err_one = np.max(np.abs(one_rounding - ref) / scale)
    mean, m2, counts = _fold(compiled._cov_update_chunked, batches, True, 0, "syrk")
    err_split = _normalised_error(m2, counts, batches)
    assert err_one > 1e-5, err_one  # TF32 alone: about 2**-11 per value
    assert err_split < err_one / 30, (err_split, err_one)


def _track(model, batches, update):
    """lsat and idim per Conv/Linear layer, each state fed by ``update(mean, m2, counts, view)``."""
    states = {}

    def hook(name):
        def fn(_module, _inp, out):
            view = as_channel_view(out.detach())
            state = states.setdefault(name, list(fresh_state(view.shape[1])))
            update(*state, view)

        return fn

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in model.named_modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in handles:
        h.remove()
    names = list(states)
    eigs = ops.eigvalsh_desc([states[n][1] / states[n][2][0] for n in names])
    return {n: (stats.saturation(e), stats.intrinsic_dimensionality(e)) for n, e in zip(names, eigs, strict=True)}


def test_mixed_keeps_lsat_and_idim_on_demo_data_and_benchmark_model(compiled):
    """The emulated 3xTF32 mode gives the float64 mode's lsat and idim on the demo's digits and the VGG model."""
    from delve_fast.demo import DigitsCNN, load_digits_split

    op = compiled._cov_update_chunked
    torch.manual_seed(0)
    x_train, _, _, _ = load_digits_split(subset=600)
    cases = [
        (DigitsCNN().eval(), list(x_train.split(64)), 7),
        (vgg_benchmark_model(seed=0).eval(), [torch.randn(16, 3, 32, 32) for _ in range(2)], 9),
    ]
    for model, batches, layers in cases:
        double = _track(model, batches, lambda *a: op(*a, False, 0, "syrk"))
        mixed = _track(model, batches, lambda *a: op(*a, True, 0, "syrk"))
        assert len(double) == layers
        assert mixed == double


@pytest.mark.parametrize("device", DEVICES)
def test_bad_arguments_are_clear_errors(compiled, device):
    op = _op(compiled, device)
    mean, m2, counts = fresh_state(4, device)
    x = torch.randn(3, 4, 2, device=device)
    with pytest.raises(RuntimeError, match="gram='dsyrk' is invalid; valid choices are syrk, gemm"):
        op(mean, m2, counts, x, False, 0, "dsyrk")
    with pytest.raises(RuntimeError, match="samples per chunk must be >= 0"):
        op(mean, m2, counts, x, False, -1, "syrk")
    with pytest.raises(RuntimeError, match="x must be float16, bfloat16, float32 or float64"):
        op(mean, m2, counts, x.to(torch.int32), False, 0, "syrk")
    assert not m2.any() and not counts.any()


def test_inference_state_and_empty_batches(compiled):
    """A state made under inference mode can be updated; empty batches and zero features only count samples."""
    op = compiled._cov_update_chunked
    with torch.inference_mode():
        mean, m2, counts = fresh_state(3)
    op(mean, m2, counts, torch.randn(4, 3, 2), False, 0, "syrk")
    op(mean, m2, counts, torch.randn(0, 3, 2), False, 0, "syrk")
    assert counts.tolist() == [8, 0]
    empty_mean, empty_m2, empty_counts = fresh_state(0)
    op(empty_mean, empty_m2, empty_counts, torch.randn(5, 0, 2), False, 0, "syrk")
    assert empty_counts.tolist() == [10, 0]


# ----------------------------------------------------------------------------- the public op on CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("path", ["syrk", "gemm"])
@pytest.mark.parametrize("precision", ["double", "mixed"])
def test_switch_routes_the_public_op(compiled, monkeypatch, path, precision):
    """DELVE_FAST_CUDA_UPDATE selects the cuBLAS path of cov_update_; its self-check passes silently."""
    require_compiled_device("cuda")
    monkeypatch.setenv(ops.CUDA_UPDATE_ENV_VAR, path)
    batches = _batches((500, 96, 3), device="cuda")
    mean, m2, counts = fresh_state(96, "cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x in batches:
            ops.cov_update_(mean, m2, counts, x, backend="cpp", precision=precision)
    key = f"cov_update_[{path}]@cuda:{torch.cuda.current_device()}"
    assert ops.backend_info()["self_check"][key] is True
    if precision == "double":
        _check_double(mean, m2, counts, batches)
    else:
        assert _normalised_error(m2, counts, batches) <= MIXED_BOUND


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_invalid_switch_value_is_a_clear_error(compiled, monkeypatch):
    require_compiled_device("cuda")
    monkeypatch.setenv(ops.CUDA_UPDATE_ENV_VAR, "cublas")
    mean, m2, counts = fresh_state(4, "cuda")
    with pytest.raises(RuntimeError, match="DELVE_FAST_CUDA_UPDATE='cublas' is invalid; valid choices are fused"):
        compiled.cov_update_(mean, m2, counts, torch.randn(3, 4, 2, device="cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("gram", GRAMS)
@pytest.mark.parametrize("mixed", [False, True], ids=["double", "mixed"])
def test_cuda_path_never_synchronises_and_reuses_memory(compiled, gram, mixed):
    require_compiled_device("cuda")
    op = compiled._cov_update_chunked
    batches = _batches((64, 200, 9), count=2, device="cuda")
    mean, m2, counts = fresh_state(200, "cuda")
    for x in batches:  # warm-up: cuBLAS handle, first allocations
        op(mean, m2, counts, x, mixed, 128, gram)
    torch.cuda.synchronize()
    segments = torch.cuda.memory_stats()["segment.all.allocated"]
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x in batches * 3:
            op(mean, m2, counts, x, mixed, 128, gram)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert torch.cuda.memory_stats()["segment.all.allocated"] == segments, "new cudaMalloc after warm-up"
    assert counts.cpu().tolist() == [8 * 64 * 9, 0]
