"""The benchmark report's arithmetic and verdicts, on a synthetic run.

``make bench`` is not part of the suite (timings are not asserted), but the
report turns its JSON into the targets' verdicts, so the formulas are checked
here on made-up timings whose expected figures are worked out by hand below.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from benchmarks.config import TARGETS
from benchmarks.reduction import reduction_covariances, reduction_delve, reduction_fast
from benchmarks.render import render_markdown
from benchmarks.results import Results
from benchmarks.timing import interleaved_turns, overhead_interval
from benchmarks.update_cases import CASES_BY_ID, GEMM_N
from delve_fast import stats

CASE = "conv-64x64x32x32"
GEMM_FLOPS = 2 * GEMM_N**3


def _update_entry(steady: dict[str, list[float]], first: dict[str, list[float]]) -> dict:
    info = {
        "bench": "update",
        "case": CASE,
        "flops": CASES_BY_ID[CASE].syrk_flops,
        "gemm_n": GEMM_N,
        "gemm_flops": GEMM_FLOPS,
        "median_s": {k: statistics.median(v) for k, v in steady.items()},
        "times_s": steady,
        "skipped": {},
        "steady_calls": 2,
        "control_n": 512,
        "first_median_s": {k: statistics.median(v) for k, v in first.items()},
        "first_times_s": first,
    }
    return {"name": f"test_update[{CASE}]", "stats": {"median": 1.0}, "extra_info": info}


def _run(steady, first) -> Results:
    return Results({"benchmarks": [_update_entry(steady, first)], "datetime": "synthetic"})


# Three rounds. The GEMM runs at 200, 100 and 200 GFLOP/s; the compiled op
# tracks the host's speed, so every round gives the same ratios.
GEMM_T = [GEMM_FLOPS / 200e9, GEMM_FLOPS / 100e9, GEMM_FLOPS / 200e9]
ROOF_T = [CASES_BY_ID[CASE].syrk_flops / (GEMM_FLOPS / t) for t in GEMM_T]  # roofline seconds per round
STEADY = {
    "gemm": GEMM_T,
    "compiled": [r / 0.7 for r in ROOF_T],  # 0.7 of roofline in every round
    "delve": [5 * r / 0.7 for r in ROOF_T],  # 5x slower than compiled
    "control_gemm": [1e-3, 2e-3, 1e-3],
}
FIRST = {
    # The GEMM's first calls are slower; the first-call fraction must still use the steady GEMM.
    "gemm": [1.1 * t for t in GEMM_T],
    "compiled": [r / 0.5 for r in ROOF_T],  # first calls at 0.5 of the steady GEMM's roofline
    "delve": [5 * r / 0.7 for r in ROOF_T],
    "control_gemm": [1.25e-3, 2.5e-3, 1.25e-3],  # +25 %
}


def test_roofline_fraction_and_speedup_from_per_round_ratios():
    r = _run(STEADY, FIRST)
    assert r.roofline_fraction(CASE) == pytest.approx(0.7)
    assert r.roofline_fraction(CASE, first=True) == pytest.approx(0.5)
    assert r.speedup(CASE) == pytest.approx(5.0)
    # The row's GEMM rate is the median of the steady calls: 200 GFLOP/s.
    assert r.rate(CASE) == pytest.approx(200e9)


def test_targets_judge_steady_state_and_report_first_calls():
    r = _run(STEADY, FIRST)
    rows = {name: (measured, ok) for name, measured, ok in r.targets()}
    steady_row = next(k for k in rows if "of roofline" in k and "steady state" in k)
    first_row = next(k for k in rows if k.startswith("the same, first call"))
    assert rows[steady_row] == ("lowest: 0.70 at conv (64×64×32×32)", 0.7 >= TARGETS["roofline_fraction_conv_min"])
    assert rows[first_row] == ("lowest: 0.50 at conv (64×64×32×32)", 0.5 >= TARGETS["roofline_fraction_conv_min"])
    assert rows[steady_row][1] is True and rows[first_row][1] is False


def test_first_call_costs_are_stated_in_the_report():
    text = render_markdown(_run(STEADY, FIRST), None)
    # compiled: 0.7 / 0.5 - 1 = +40 %; control GEMM: +25 % in every round.
    assert "+40% to +40%" in text
    assert "paid +25% to +25%" in text
    assert "| 0.70 |" in text and "| 0.50 |" in text


def test_interleaved_turns_counts_every_call():
    calls = {"a": 0, "b": 0}

    def make(name):
        def fn():
            calls[name] += 1

        return fn

    turns = interleaved_turns({n: make(n) for n in calls}, budget_s=0.0, min_rounds=4, max_rounds=4, steady_calls=3)
    assert [len(turns.first[n]) for n in calls] == [4, 4]
    assert [len(turns.steady[n]) for n in calls] == [4, 4]
    # Two warm-up calls, then 4 rounds of 1 first call and 3 steady calls.
    assert calls == {"a": 2 + 4 * 4, "b": 2 + 4 * 4}
    with pytest.raises(ValueError, match="steady_calls must be >= 0, got -1"):
        interleaved_turns({"a": make("a")}, steady_calls=-1)


# Step times of 60 rounds: the host drifts from 200 to 259 ms, and the tracked
# model is always exactly 4 % slower than the untracked one in the same round.
NONE_MS = [200.0 + r for r in range(60)]
TRACKED_MS = [1.04 * t for t in NONE_MS]


def test_overhead_interval_of_a_constant_ratio_is_that_ratio():
    # Every resample keeps each round's pair, so both medians scale by 1.04.
    lo, hi = overhead_interval(TRACKED_MS, NONE_MS)
    assert lo == pytest.approx(0.04) and hi == pytest.approx(0.04)


def test_overhead_interval_widens_with_noise_and_covers_the_estimate():
    # Alternate +/-10 ms of noise on the tracked steps: medians then move
    # between resamples, but never by more than the noise (10 / 200 = 5 %).
    noisy = [t + (10.0 if r % 2 else -10.0) for r, t in enumerate(TRACKED_MS)]
    lo, hi = overhead_interval(noisy, NONE_MS, level=0.9, resamples=500, seed=3)
    point = statistics.median(noisy) / statistics.median(NONE_MS) - 1.0
    assert lo < point < hi
    assert 0.04 - 0.05 <= lo and hi <= 0.04 + 0.05


def test_overhead_interval_rejects_bad_arguments():
    with pytest.raises(ValueError, match="got 2 and 3"):
        overhead_interval([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="level must lie in"):
        overhead_interval([1.0], [1.0], level=1.0)
    with pytest.raises(ValueError, match="resamples must be at least 1, got 0"):
        overhead_interval([1.0], [1.0], resamples=0)


def _training_entry() -> dict:
    times = {"none": NONE_MS, "fast_mixed": TRACKED_MS}
    info = {
        "bench": "training",
        "variants": ["fast_mixed"],
        "rounds": len(NONE_MS),
        "batch": 64,
        "step_ms": times,
        "median_ms": {v: statistics.median(t) for v, t in times.items()},
        "overhead": {"fast_mixed": 0.04},
        "overhead_paired": {"fast_mixed": 0.04},
        "add_saturations_ms": {},
        "epoch_steps": 782,
        "overhead_interval_95": {"fast_mixed": [0.031, 0.062]},
    }
    return {"name": "test_training_overhead", "stats": {"median": 1.0}, "extra_info": info}


def test_training_verdict_states_the_interval():
    r = Results({"benchmarks": [_training_entry()], "datetime": "synthetic"})
    rows = {name: (measured, ok) for name, measured, ok in r.targets()}
    mixed = next(k for k in rows if "precision='mixed'" in k)
    assert rows[mixed] == ("+4.0% (95% interval +3.1% to +6.2%)", 0.04 <= TARGETS["train_overhead_mixed_max"])
    assert "| +4.0% | +3.1% to +6.2% | +4.0% |" in render_markdown(r, None)


def test_reduction_benchmark_times_the_library_statistics():
    """The benchmarked reduction is delve_fast's own (stats.saturation / intrinsic_dimensionality).

    For eigenvalues [100, 0.5, 0.1] the first direction explains 99.4% >= 99% of
    the variance, so no share stays below the threshold: idim 0, lsat 0, as
    delve 0.1.50 reports (a re-implementation with "at least 1" said 1).
    """
    cov = torch.diag(torch.tensor([100.0, 0.5, 0.1], dtype=torch.float64))
    for backend in ("cpp", "torch"):
        assert reduction_fast([cov], backend) == [(0.0, 0)]
    # On the benchmark's own matrices it agrees with delve's per-stat path whenever delve is installed.
    covs = reduction_covariances()
    fast = reduction_fast(covs, "torch")
    assert [k for _, k in fast] == [stats.intrinsic_dimensionality(torch.linalg.eigvalsh(c).flip(0)) for c in covs]
    try:
        import delve.metrics  # noqa: F401, PLC0415
    except ImportError:
        return
    assert reduction_delve([cov]) == [[0.0, 0]]
    assert fast == [tuple(v) for v in reduction_delve(covs)]
