"""Property-based tests of the covariance state (Hypothesis).

The same samples, cut into batches at any points, folded in any order, each
batch in any memory layout and any input dtype, must give the state of NumPy
float64 over all samples, on both backends; and batches holding NaN or Inf,
inserted anywhere, must change nothing at all.

Tolerance (derived, per example)
--------------------------------
The kernels shift each batch by a reference (the running mean, or the mean of
the first samples), so every product they sum is of values at most ``R`` in
magnitude, ``R = max |x - mean|`` over the samples (the shift is a mean of
samples, so it lies within their range: ``|x - shift| <= 2R``). A float64 sum
of ``K`` such products errs by at most ``K * eps * (2R)^2`` (the classic
``n * eps * sum |terms|`` bound); the rank-one merge corrections and the final
division add a few more of the same size. Per covariance entry (``m2 / K``),
the error is therefore below ``8 * K * eps * R^2``, and the mean's below
``8 * K * eps * max|x|``. These bounds are worst cases; a lost, doubled or
misweighted batch is off by a fraction of the variance itself, which is orders
of magnitude larger for the sizes drawn here (``K <= 400``, so the bound is at
most ~1e-12 relative).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from delve_fast import ops  # noqa: E402
from delve_fast.testing import FLOAT_DTYPES, fresh_state, samples_f64  # noqa: E402

EPS = np.finfo(np.float64).eps
BACKENDS = ["cpp", "torch"]
LAYOUTS = ["rows", "features_adjacent", "nchw", "strided_slice"]
# derandomize: the default run is reproducible; the `compiled` fixture is stateless, so
# sharing it between examples is safe.
SETTINGS = settings(
    max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _as_layout(rows: np.ndarray, layout: str, dtype: torch.dtype) -> torch.Tensor:
    """``(k, C)`` samples as an ``(N, C, S)`` batch holding the same samples in the same order."""
    k, c = rows.shape
    t = torch.from_numpy(rows).to(dtype)
    if layout == "rows":  # (N, C, 1), features contiguous
        return t.unsqueeze(-1)
    if layout == "features_adjacent":  # (1, C, K) with unit stride along C
        return t.t().unsqueeze(0)
    if layout == "nchw":  # (1, C, K) with unit stride along the samples
        return t.t().contiguous().unsqueeze(0)
    # Every other row of a twice-as-long buffer: non-unit sample stride.
    buf = torch.zeros(2 * k, c, dtype=dtype)
    buf[::2] = t
    return buf[::2].unsqueeze(-1)


@st.composite
def batched_samples(draw):
    c = draw(st.integers(1, 40))
    k = draw(st.integers(2, 400))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    offset = draw(st.sampled_from([0.0, 3.0, -250.0]))
    rows = rng.standard_normal((k, c)) * rng.uniform(0.5, 2.0, size=c) + offset
    cuts = sorted(draw(st.sets(st.integers(1, k - 1), max_size=min(6, k - 1))))
    pieces = [rows[a:b] for a, b in zip([0, *cuts], [*cuts, k], strict=True)]
    order = draw(st.permutations(range(len(pieces))))
    batches = []
    for i in order:
        layout = draw(st.sampled_from(LAYOUTS))
        dtype = draw(st.sampled_from(FLOAT_DTYPES))
        batches.append(_as_layout(pieces[i], layout, dtype))
    threads = draw(st.sampled_from([1, 2]))
    return batches, threads


def _fold(batches, backend):
    mean, m2, counts = fresh_state(batches[0].shape[1])
    for x in batches:
        ops.cov_update_(mean, m2, counts, x, backend=backend)
    return mean, m2, counts


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(case=batched_samples())
def test_any_split_order_layout_and_dtype_gives_the_numpy_state(compiled, backend, case):  # noqa: ARG001
    batches, threads = case
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        mean, m2, counts = _fold(batches, backend)
    finally:
        torch.set_num_threads(old)
    # The samples the op saw: each batch's values after its dtype cast (the upcast is exact).
    rows = np.concatenate([samples_f64(x) for x in batches])
    k = rows.shape[0]
    ref_mean = rows.mean(axis=0)
    ref_cov = (rows - ref_mean).T @ (rows - ref_mean) / k
    r = np.abs(rows - ref_mean).max()
    assert counts.tolist() == [k, 0]
    cov_err = np.abs((m2 / k).numpy() - ref_cov).max()
    assert cov_err <= 8 * k * EPS * r * r + 1e-300, f"cov error {cov_err:.3g}, bound {8 * k * EPS * r * r:.3g}"
    mean_err = np.abs(mean.numpy() - ref_mean).max()
    assert mean_err <= 8 * k * EPS * np.abs(rows).max() + 1e-300
    assert torch.equal(m2, m2.T)


@st.composite
def batches_with_poison(draw):
    c = draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    sizes = draw(st.lists(st.integers(1, 60), min_size=1, max_size=4))
    clean = [torch.from_numpy(rng.standard_normal((n, c, 1)) + 1.0) for n in sizes]
    sequence = list(clean)
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 60))
        bad = torch.from_numpy(rng.standard_normal((n, c, 1)))
        bad[draw(st.integers(0, n - 1)), draw(st.integers(0, c - 1)), 0] = draw(
            st.sampled_from([float("nan"), float("inf"), float("-inf")])
        )
        sequence.insert(draw(st.integers(0, len(sequence))), bad.to(draw(st.sampled_from(FLOAT_DTYPES))))
    return clean, sequence


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(case=batches_with_poison())
def test_nonfinite_batches_anywhere_change_nothing(compiled, backend, case):  # noqa: ARG001
    """Bit-exact: the clean batches run the same ops in the same order either way."""
    clean, sequence = case
    mean_a, m2_a, counts_a = _fold(clean, backend)
    mean_b, m2_b, counts_b = _fold(sequence, backend)
    assert torch.equal(mean_a, mean_b) and torch.equal(m2_a, m2_b)
    assert counts_b[0] == counts_a[0] and counts_b[1] == len(sequence) - len(clean)
