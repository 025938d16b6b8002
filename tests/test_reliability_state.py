"""Reliability of the covariance state and the hook: non-finite batches, threads, memory, small faults.

Expected values come from NumPy float64 over the samples (``delve_fast.testing``)
or from a second run of the same code on the same data without the fault:
that comparison is bit-exact because both runs execute identical ops in
identical order on the same data (the skipped batch leaves the state bit-for-bit
as it was), which is deterministic by construction.

Tolerances
----------
``RTOL = 1e-9`` of the largest variance: the state is float64 and the data here
keep ``|mean| / std <= 5`` over at most ~2e4 samples, so the float64 round-off
of any summation order (``~K * eps * (1 + (mean/std)^2)``, about 1e-10) is ten
times smaller, while a lost or doubly counted batch, a stale count or a torn
update (the faults under test) is off by 1e-3 or more.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from delve_fast import CovarianceState, SaturationTracker, _reference, ops
from delve_fast import stats as S
from delve_fast.state import StateTooLargeError, state_nbytes
from delve_fast.testing import (
    FLOAT_DTYPES,
    assert_cov_close,
    devices,
    fresh_state,
    np_mean_cov,
    require_compiled_device,
    samples_f64,
)

RTOL = 1e-9
BACKENDS = ["cpp", "torch"]
DEVICES = devices()


@pytest.fixture(params=["compiled", "twin"])
def impl(request):
    """``(name, fn)``: the compiled op or the twin, called as ``fn(mean, m2, counts, x)``."""
    if request.param == "compiled":
        return "compiled", request.getfixturevalue("compiled").cov_update_
    return "twin", _reference.cov_update_


@pytest.fixture
def update(impl):
    """The implementation's function, on the CPU."""
    return impl[1]


def _on(impl, device):
    name, fn = impl
    if name == "compiled":
        require_compiled_device(device)
    return fn


@pytest.fixture
def threads():
    """Restore torch's thread count after a test that changes it."""
    old = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(old)


def _batch(n, c, s, seed, offset=2.0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, s, generator=gen, dtype=torch.float64) + offset).to(dtype)


def _poisoned(x, where, value):
    y = x.clone()
    y[where] = value
    return y


# ----------------------------------------------------------------------------- the op skips non-finite batches

# (threads, (N, C, S)) reaching each path of the CPU kernel: per-thread accumulators
# (many samples), one shared tile (K <= 256), several shared tiles (checked by a scan
# first), and C = 70 (more than one 64-wide CUDA tile, and a partial 16-block).
PATHS = {
    "split": (1, (600, 20, 3)),
    "split-2threads": (2, (2000, 33, 1)),
    "shared-one-tile": (2, (50, 70, 5)),
    "shared-tiles": (2, (1000, 40, 1)),
    "shared-tiles-nchw": (2, (20, 40, 25)),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_nonfinite_batch_leaves_state_bit_identical(impl, threads, device, path, dtype, bad):
    """Thread counts pick the CPU kernel's path; on CUDA the shapes cover one and several tiles and splits."""
    update = _on(impl, device)
    nthreads, (n, c, s) = PATHS[path]
    threads(nthreads)
    mean, m2, counts = fresh_state(c, device)
    clean = _batch(n, c, s, seed=1, dtype=dtype).to(device)
    update(mean, m2, counts, clean)
    before = (mean.clone(), m2.clone())
    # Last sample, first sample, a middle one: the shift, the tiles and the tail all see it.
    for i, where in enumerate([(n - 1, c - 1, s - 1), (0, 0, 0), (n // 2, c // 3, s // 2)]):
        update(mean, m2, counts, _poisoned(_batch(n, c, s, seed=2 + i, dtype=dtype), where, bad).to(device))
        assert torch.equal(mean, before[0]) and torch.equal(m2, before[1]), f"state changed by batch {i}"
    assert counts.tolist() == [n * s, 3.0]
    # Clean batches afterwards are folded in as if the bad ones never came.
    more = _batch(n, c, s, seed=9, dtype=dtype).to(device)
    update(mean, m2, counts, more)
    ref_mean, ref_cov = np_mean_cov(np.concatenate([samples_f64(clean), samples_f64(more)]))
    assert counts.tolist() == [2 * n * s, 3.0]
    assert_cov_close(m2 / (2 * n * s), ref_cov, RTOL)
    np.testing.assert_allclose(mean.cpu().numpy(), ref_mean, rtol=RTOL, atol=RTOL * 10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", list(PATHS))
def test_nonfinite_first_batch_leaves_empty_state(impl, threads, device, path):
    """A bad batch into an empty state (its shift comes from the batch itself) leaves zeros and count 0."""
    update = _on(impl, device)
    nthreads, (n, c, s) = PATHS[path]
    threads(nthreads)
    mean, m2, counts = fresh_state(c, device)
    update(mean, m2, counts, _poisoned(_batch(n, c, s, seed=3), (0, 1, 0), float("nan")).to(device))
    assert not mean.any() and not m2.any() and counts.tolist() == [0.0, 1.0]
    x = _batch(n, c, s, seed=4).to(device)
    update(mean, m2, counts, x)
    _, ref_cov = np_mean_cov(samples_f64(x))
    assert_cov_close(m2 / (n * s), ref_cov, RTOL)


def test_opposite_infinities_in_one_feature_are_skipped(update):
    """+Inf and -Inf in one feature sum to NaN, still non-finite."""
    mean, m2, counts = fresh_state(4)
    x = _batch(10, 4, 2, seed=5)
    x[1, 2, 0], x[7, 2, 1] = float("inf"), float("-inf")
    update(mean, m2, counts, x)
    assert counts.tolist() == [0.0, 1.0] and not m2.any()


def test_nonfinite_skip_on_strided_views(update):
    """channels_last and sliced views: the check reads through the strides, the NaN is found wherever it is."""
    base = _batch(6, 9, 16, seed=6).reshape(6, 9, 4, 4).contiguous(memory_format=torch.channels_last)
    base[4, 8, 3, 2] = float("nan")
    view = base.flatten(2)  # strides (144, 1, 9)
    mean, m2, counts = fresh_state(9)
    update(mean, m2, counts, view)
    update(mean, m2, counts, view[:, :, ::2])  # the NaN is at s = 14: still inside the slice
    assert counts.tolist() == [0.0, 2.0]
    update(mean, m2, counts, view[:4])  # rows without the NaN are fine
    assert counts.tolist() == [64.0, 2.0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_graph_replay_keeps_counting_on_the_device(impl):
    """Captured once, replayed per batch: the count lives on the device, so every replay merges correctly."""
    update = _on(impl, "cuda")
    c = 20
    batches = [_batch(64, c, 3, seed=40 + i) for i in range(4)]
    batches[2][5, 7, 1] = float("nan")  # skipped on replay too
    static_x = batches[0].clone().cuda()
    mean, m2, counts = fresh_state(c, "cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as CUDA graphs require
        update(mean, m2, counts, static_x)
    torch.cuda.current_stream().wait_stream(side)
    for t in (mean, m2, counts):
        t.zero_()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        update(mean, m2, counts, static_x)
    for x in batches:
        static_x.copy_(x)
        graph.replay()
    torch.cuda.synchronize()
    clean = [x for i, x in enumerate(batches) if i != 2]
    _, ref_cov = np_mean_cov(np.concatenate([samples_f64(x) for x in clean]))
    assert counts.tolist() == [3 * 64 * 3, 1.0]
    assert_cov_close(m2 / (3 * 64 * 3), ref_cov, RTOL)


@pytest.mark.parametrize("layout", ["channels_last", "sample_stride"])
def test_scan_before_shared_tiles_reads_through_strides(update, threads, layout):
    """Several shared tiles (2 threads, K = 600): the pre-scan must find a NaN in any layout, at any place."""
    threads(2)
    for where in [(0, 0, 0), (11, 39, 24), (5, 17, 3)]:
        x = _batch(24, 40, 25, seed=7)
        x[where] = float("nan")
        if layout == "channels_last":  # features adjacent: strides (1000, 1, 40)
            x = x.permute(0, 2, 1).contiguous().permute(0, 2, 1)
        else:  # every other sample of a longer buffer
            x = torch.repeat_interleave(x, 2, dim=2)[:, :, ::2]
        mean, m2, counts = fresh_state(40)
        update(mean, m2, counts, x)
        assert counts.tolist() == [0.0, 1.0] and not m2.any(), where


# ----------------------------------------------------------------------------- CovarianceState


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_counts_skips_and_round_trips(backend):
    st = CovarianceState(backend=backend)
    st.update(torch.randn(30, 4))
    st.update(torch.full((5, 4), float("nan")))
    assert (st.count, st.skipped_batches) == (30, 1)
    assert "skipped_batches=1" in repr(st)
    other = CovarianceState(backend=backend)
    other.load_state_dict(st.state_dict())
    assert (other.count, other.skipped_batches) == (30, 1)
    other.merge(st)
    assert (other.count, other.skipped_batches) == (60, 2)
    legacy = {k: v for k, v in st.state_dict().items() if k != "skipped_batches"}
    other.load_state_dict(legacy)  # a dict saved before skipped_batches existed
    assert (other.count, other.skipped_batches) == (30, 0)
    st.reset()
    assert (st.count, st.skipped_batches) == (0, 0)


def test_state_pickles_without_its_lock():
    import copy
    import pickle

    st = CovarianceState()
    st.update(torch.randn(20, 3))
    for clone in (copy.deepcopy(st), pickle.loads(pickle.dumps(st))):
        assert clone.count == 20 and torch.equal(clone.m2, st.m2)
        clone.update(torch.randn(5, 3))  # the clone has a working lock of its own
        assert clone.count == 25 and st.count == 20


# ----------------------------------------------------------------------------- the tracker and non-finite data


class TwoBranches(nn.Module):
    """Two independent Linear layers, so a NaN fed to one cannot reach the other."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(6, 5).double()
        self.b = nn.Linear(6, 4).double()

    def forward(self, xa: torch.Tensor, xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(xa), self.b(xb)


def _run(tmp_path, backend, batches, name, **kwargs):
    model = TwoBranches()
    tracker = SaturationTracker(
        str(tmp_path / name),
        save_to=["csv", "npy"],
        modules=model,
        device="cpu",
        backend=backend,
        stats=["lsat", "idim", "trc", "cov"],
        **kwargs,
    )
    epochs = []
    with torch.no_grad():
        for epoch in batches:
            for xa, xb in epoch:
                model(xa, xb)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                tracker.add_scalar("user-loss", 0.5)
                values = tracker.add_saturations()
            epochs.append((values, [str(w.message) for w in caught if "delve_fast" in str(w.message)]))
    tracker.close()
    return tracker, epochs


def _data(seed, n=40):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=gen, dtype=torch.float64), torch.randn(n, 6, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tracker_skips_nonfinite_batches_and_warns_once_per_layer(tmp_path, backend):
    (a0, b0), (a1, b1), (a2, b2) = _data(1), _data(2), _data(3)
    bad = a1.clone()
    bad[3, 2] = float("nan")
    inf = a2.clone()
    inf[0, 0] = float("inf")
    poisoned = [[(a0, b0), (bad, b1), (inf, b2)], [(a1, b1)]]
    # The same run with the bad batches of layer a replaced by empty ones.
    clean = [[(a0, b0), (a0[:0], b1), (a0[:0], b2)], [(a1, b1)]]
    tracker, got = _run(tmp_path, backend, poisoned, "poisoned")
    _, want = _run(tmp_path, backend, clean, "clean")
    (values0, warns0), (values1, warns1) = got
    # One warning, for layer a only, with the count.
    assert len(warns0) == 1 and "'a'" in warns0[0] and "2 batch(es)" in warns0[0] and "40 samples" in warns0[0]
    assert not warns1  # the state was reset: the next epoch is clean
    # The bad batches left layer a exactly as if they had never come, and b is untouched.
    for key, value in want[0][0].items():
        np.testing.assert_array_equal(values0[key], value, err_msg=key)
    assert all(np.all(np.isfinite(v)) for v in values0.values())
    assert tracker.epoch == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_without_valid_data_reports_nan_cells(tmp_path, backend):
    (a0, b0), (a1, b1) = _data(4), _data(5)
    tracker, got = _run(tmp_path, backend, [[(a0 * np.nan, b0)], [(a1, b1)]], "allbad")
    (values0, warns0), (values1, warns1) = got
    for stat in ("saturation", "intrinsic-dimensionality", "covariance-trace"):
        assert np.isnan(values0[f"train-{stat}_a"])
        assert np.isfinite(values0[f"train-{stat}_b"])
    assert values0["train-covariance-matrix_a"].shape == (5, 5) and np.isnan(values0["train-covariance-matrix_a"]).all()
    assert len(warns0) == 1 and "all 1 recorded batch" in warns0[0] and "NaN" in warns0[0]
    assert np.isfinite(values1["train-saturation_a"]) and not warns1
    assert tracker.epoch == 2
    # The user's scalar and both epochs reached the CSV.
    import pandas as pd

    frame = pd.read_csv(tmp_path / "allbad.csv", sep=";", index_col=0)
    assert list(frame.index) == [0, 1] and (frame["user-loss"] == 0.5).all()
    assert np.isnan(frame.loc[0, "train-saturation_a"]) and np.isfinite(frame.loc[1, "train-saturation_a"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_eigenvalue_failure_gives_nan_cells_and_the_epoch_advances(tmp_path, backend, monkeypatch):
    """A solver that cannot handle layer a's matrix: NaN cells and a warning for a, numbers for b."""
    real = ops.eigvalsh_desc

    def failing(covs, backend=None):
        if any(c.shape[0] == 5 for c in covs):  # layer a has 5 features
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return real(covs, backend=backend)

    monkeypatch.setattr(ops, "eigvalsh_desc", failing)
    (a0, b0), (a1, b1) = _data(6), _data(7)
    tracker, got = _run(tmp_path, backend, [[(a0, b0)], [(a1, b1)]], "eigfail", average_sat=True)
    for values, warns in got:
        assert np.isnan(values["train-saturation_a"]) and np.isnan(values["train-intrinsic-dimensionality_a"])
        assert np.isfinite(values["train-saturation_b"])
        # trc needs no eigenvalues, but a layer whose statistics failed reports NaN throughout.
        assert np.isnan(values["train-covariance-trace_a"])
        # The average covers the layers that have numbers.
        assert values["average-train-sat"] == values["train-saturation_b"]
        assert len(warns) == 1 and "'a'" in warns[0] and "LinAlgError" in warns[0]
    assert tracker.epoch == 2
    assert not tracker.logs["train-covariance-matrix"]["a"].is_initialized  # reset after each epoch


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_state_gives_nan_cells(tmp_path, backend):
    """A state that is non-finite by other means (here a checkpoint) never reaches the solver."""
    model = TwoBranches()
    tracker = SaturationTracker(str(tmp_path / "r"), save_to="csv", modules=model, device="cpu", backend=backend)
    a0, b0 = _data(8)
    with torch.no_grad():
        model(a0, b0)
    state = tracker.logs["train-covariance-matrix"]["a"].state
    saved = state.state_dict()
    saved["m2"][1, 1] = float("inf")
    state.load_state_dict(saved)
    with pytest.warns(RuntimeWarning, match=r"layer 'a' \(train\): its covariance holds NaN or Inf"):
        values = tracker.add_saturations()
    assert np.isnan(values["train-saturation_a"]) and np.isfinite(values["train-saturation_b"])
    assert tracker.epoch == 1
    tracker.close()


# ----------------------------------------------------------------------------- threads


def _hammer(n_threads, work):
    errors = []
    barrier = threading.Barrier(n_threads)

    def run(i):
        try:
            barrier.wait()
            work(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(n_threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_hammering_one_state_match_numpy(backend):
    c, shards = 24, 4
    gen = torch.Generator().manual_seed(10)
    data = [
        [torch.randn(n, c, generator=gen, dtype=torch.float64) * 2 + 3 for n in (1, 7, 33, 64) * 10]
        for _ in range(shards)
    ]
    st = CovarianceState(backend=backend)

    def work(i):
        for x in data[i]:
            st.update(x)

    _hammer(shards, work)
    rows = np.concatenate([x.numpy() for shard in data for x in shard])
    ref_mean, ref_cov = np_mean_cov(rows)
    assert st.count == rows.shape[0] and st.skipped_batches == 0
    assert_cov_close(st.covariance(), ref_cov, RTOL)
    np.testing.assert_allclose(st.mean.numpy(), ref_mean, rtol=RTOL, atol=RTOL * 10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_forwarding_through_one_tracked_model_match_numpy(tmp_path, backend):
    """Four threads forward different shards through one model, as nn.DataParallel replicas do."""
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 8)).double()
    tracker = SaturationTracker(
        str(tmp_path / "t"), save_to="csv", modules=model, device="cpu", backend=backend, stats=["cov"], nosave=True
    )
    gen = torch.Generator().manual_seed(12)
    shards = [[torch.randn(n, 10, generator=gen, dtype=torch.float64) + 1 for n in (5, 17, 64) * 8] for _ in range(4)]

    def work(i):
        with torch.no_grad():
            for x in shards[i]:
                model(x)

    _hammer(4, work)
    inputs = torch.cat([x for shard in shards for x in shard])
    with torch.no_grad():
        hidden = model[0](inputs)
        out = model[2](model[1](hidden))
    values = tracker.add_saturations()
    for layer, acts in (("0", hidden), ("2", out)):
        _, ref_cov = np_mean_cov(acts.numpy())
        assert tracker.seen_samples["train"] == {}  # reset by add_saturations
        assert_cov_close(torch.from_numpy(values[f"train-covariance-matrix_{layer}"]), ref_cov, RTOL)
    tracker.close()


# ----------------------------------------------------------------------------- memory guard


def test_flatten_conv_state_over_budget_raises_before_allocating(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1))
    tracker = SaturationTracker(
        str(tmp_path / "m"), save_to="csv", modules=model, device="cpu", conv_method="flatten", nosave=True
    )
    with pytest.raises(StateTooLargeError) as info, torch.no_grad():
        model(torch.randn(8, 3, 16, 16))
    message = str(info.value)
    for part in (
        "'0'",
        "16384 features",
        "2.0 GiB",
        str(state_nbytes(16384)),
        "conv_method",
        "interpolation_strategy",
        "layer_filter",
    ):
        assert part in message, part
    assert tracker.logs["train-covariance-matrix"] == {} and tracker.state_bytes() == 0
    tracker.close()


def test_state_budget_boundary_and_state_bytes(tmp_path):
    model = nn.Sequential(nn.Linear(4, 20), nn.Linear(20, 3))
    need = state_nbytes(20)
    assert need == 8 * (20 * 20 + 20 + 2)
    ok = SaturationTracker(
        str(tmp_path / "a"), save_to="csv", modules=model, device="cpu", nosave=True, max_state_bytes=need
    )
    with torch.no_grad():
        model(torch.randn(6, 4))
    assert ok.state_bytes() == need + state_nbytes(3)
    assert f"state_bytes={need + state_nbytes(3)}" in repr(ok)
    ok.close()
    tight = SaturationTracker(
        str(tmp_path / "b"), save_to="csv", modules=model, device="cpu", nosave=True, max_state_bytes=need - 1
    )
    with pytest.raises(StateTooLargeError, match=r"layer '0' \(train\) has 20 features"), torch.no_grad():
        model(torch.randn(6, 4))
    tight.close()


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "1GiB"])
def test_max_state_bytes_is_validated(tmp_path, bad):
    with pytest.raises(ValueError, match="max_state_bytes must be a positive int"):
        SaturationTracker(
            str(tmp_path / "v"), save_to="csv", modules=nn.Linear(2, 2), device="cpu", max_state_bytes=bad
        )


# ----------------------------------------------------------------------------- smaller faults


@pytest.mark.parametrize("backend", BACKENDS)
def test_embed_stores_copies_not_views(tmp_path, backend):
    """With a float64 model the stored samples must not change when a later ReLU(inplace=True) runs."""
    torch.manual_seed(13)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True)).double()
    tracker = SaturationTracker(
        str(tmp_path / "e"), save_to="csv", modules=model, device="cpu", backend=backend, stats=["embed"], nosave=True
    )
    x = torch.randn(30, 4, dtype=torch.float64)
    with torch.no_grad():
        pre_relu = torch.nn.functional.linear(x, model[0].weight, model[0].bias)  # not through the hook
        model(x)
    stored = tracker.logs["train-covariance-matrix"]["0"].saved_samples
    assert (pre_relu < 0).any()  # the ReLU really had something to change
    assert torch.equal(stored, pre_relu)
    tracker.close()


def test_embed_does_not_store_samples_of_skipped_batches():
    from delve_fast.covariance import TorchCovarianceMatrix

    cov = TorchCovarianceMatrix(device="cpu", save_data=True)
    good = torch.randn(5, 3, dtype=torch.float64)
    cov.update(good)
    cov.update(torch.full((4, 3), float("nan"), dtype=torch.float64))
    assert torch.equal(cov.saved_samples, good)


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_made_under_inference_mode_keeps_working(backend):
    st = CovarianceState(backend=backend)
    a, b = torch.randn(20, 5), torch.randn(30, 5)
    with torch.inference_mode():
        st.update(a)
    st.update(b)  # a normal forward pass after an inference_mode one
    with torch.inference_mode():
        st.update(a)
    _, ref_cov = np_mean_cov(np.concatenate([a.double().numpy(), b.double().numpy(), a.double().numpy()]))
    assert st.count == 70
    assert_cov_close(st.covariance(), ref_cov, RTOL)


def test_twin_accepts_inference_tensors_as_state():
    """The twin itself writes a state whose tensors were made under inference_mode (outside that mode)."""
    with torch.inference_mode():
        mean, m2, counts = fresh_state(4)
    x = torch.randn(10, 4, 1)
    _reference.cov_update_(mean, m2, counts, x)
    _, ref_cov = np_mean_cov(samples_f64(x))
    assert counts.tolist() == [10.0, 0.0]
    assert_cov_close(m2 / 10, ref_cov, RTOL)


def test_threshold_one_is_not_decided_by_rounding():
    """Eigenvalues whose float64 cumulative share ends just below 1.0 still count all n as reaching it."""
    rng = np.random.default_rng(0)
    for _ in range(1000):
        lam = np.sort(rng.uniform(0.1, 1.0, size=17))[::-1]
        if np.cumsum(lam)[-1] / lam.sum() < 1.0:
            break
    else:
        pytest.fail("no rounding example found")
    assert S.intrinsic_dimensionality(lam, 1.0) == 16  # p_1..p_16 fall short; p_17 is the whole variance
    # The gap rule adds one direction when the last short share misses 1 by more than 0.02.
    assert S.intrinsic_dimensionality(lam, 1.0, rule="gap") == (17 if lam[-1] / lam.sum() > 0.02 else 16)


def test_threshold_one_agrees_between_backends(tmp_path):
    torch.manual_seed(14)
    model = nn.Sequential(nn.Linear(12, 12))
    x = torch.randn(500, 12)
    got = {}
    for backend in BACKENDS:
        tracker = SaturationTracker(
            str(tmp_path / backend), save_to="csv", modules=model, device="cpu", backend=backend,
            stats=["idim", "lsat"], sat_threshold=1.0, nosave=True,
        )  # fmt: skip
        with torch.no_grad():
            model(x)
        got[backend] = tracker.add_saturations()
        tracker.close()
    # Full-rank data: 11 of the 12 cumulative shares fall short of the whole variance.
    assert got["cpp"]["train-intrinsic-dimensionality_0"] == got["torch"]["train-intrinsic-dimensionality_0"] == 11
    assert got["cpp"]["train-saturation_0"] == got["torch"]["train-saturation_0"] == 11 / 12
