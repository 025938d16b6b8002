"""Timing on a shared, noisy machine: interleaved rounds, and a bootstrap interval of an overhead."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Turns:
    """Per-round timings of several callables run in interleaved turns (seconds per call, per name)."""

    #: The first call of each turn, made right after a *different* callable ran (caches, TLB and clocks in
    #: whatever state that one left them).
    first: dict[str, list[float]]
    #: The mean of the calls that follow it in the same turn (empty lists when ``steady_calls`` was 0): the
    #: callable's steady state, the same state in which the large GEMM of the roofline is measured.
    steady: dict[str, list[float]]


def interleaved_turns(
    fns: dict[str, Callable[[], object]],
    budget_s: float = 4.0,
    min_rounds: int = 5,
    max_rounds: int = 200,
    steady_calls: int = 0,
) -> Turns:
    """Time several callables in interleaved rounds.

    Each round gives every callable one turn, in an order rotated every round,
    so all of them see the same load of a shared, noisy machine: their ratios
    are far steadier than those of back-to-back runs. A turn is one call timed
    on its own, then ``steady_calls`` more calls whose mean is the turn's
    steady time. Each callable is warmed up twice first; the number of rounds
    fits ``budget_s`` within the bounds.

    Parameters
    ----------
    fns : dict of str to callable
        The no-argument callables to time, by name.
    budget_s : float
        Rough wall-clock budget of all rounds together.
    min_rounds, max_rounds : int
        Bounds on the number of rounds.
    steady_calls : int
        Calls after the first one in each turn (0: first calls only).

    Returns
    -------
    Turns
        One first-call time and one steady time (if asked for) per round and callable.
    """
    if steady_calls < 0:
        raise ValueError(f"steady_calls must be >= 0, got {steady_calls}")
    names = list(fns)
    per_round = 0.0
    for name in names:
        fns[name]()
        t0 = time.perf_counter()
        fns[name]()
        per_round += (time.perf_counter() - t0) * (1 + steady_calls)
    rounds = int(min(max(budget_s / max(per_round, 1e-9), min_rounds), max_rounds))
    out = Turns({name: [] for name in names}, {name: [] for name in names})
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = fns[name]
            t0 = time.perf_counter()
            fn()
            out.first[name].append(time.perf_counter() - t0)
            if steady_calls:
                t0 = time.perf_counter()
                for _ in range(steady_calls):
                    fn()
                out.steady[name].append((time.perf_counter() - t0) / steady_calls)
    return out


def interleaved_times(
    fns: dict[str, Callable[[], object]],
    budget_s: float = 4.0,
    min_rounds: int = 5,
    max_rounds: int = 200,
) -> dict[str, list[float]]:
    """Seconds per call, per name, of one call per turn (:func:`interleaved_turns` without steady calls)."""
    return interleaved_turns(fns, budget_s, min_rounds, max_rounds).first


def overhead_interval(
    with_ms: list[float], without_ms: list[float], level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap interval of ``median(with) / median(without) - 1`` over training rounds.

    Rounds are resampled as pairs (both step times of a round stay together),
    so the interval keeps the pairing that the rotation of each round builds
    in. The seed is fixed so that the report of a run is reproducible.

    Parameters
    ----------
    with_ms, without_ms : list of float
        Step times of the two variants, one per round, in round order.
    level : float, default 0.95
        Coverage of the two-sided percentile interval, in (0, 1).
    resamples : int, default 2000
        Bootstrap resamples.
    seed : int, default 0
        Seed of the resampling generator.

    Returns
    -------
    tuple of float
        The interval's lower and upper overhead, as fractions.
    """
    if len(with_ms) != len(without_ms) or not with_ms:
        raise ValueError(
            f"need the same, non-zero number of rounds for both variants, got {len(with_ms)} and {len(without_ms)}"
        )
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    a = torch.tensor(with_ms, dtype=torch.float64)
    b = torch.tensor(without_ms, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(with_ms), (resamples, len(with_ms)), generator=gen)
    # torch.median picks the lower middle value; quantile(0.5) is the statistics.median definition.
    ratios = torch.quantile(a[idx], 0.5, dim=1) / torch.quantile(b[idx], 0.5, dim=1) - 1.0
    tail = (1.0 - level) / 2.0
    lo, hi = torch.quantile(ratios, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    return lo, hi
