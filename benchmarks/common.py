"""Shared pieces of the benchmarks: inputs, the measured paths, the model, machine facts.

Everything that decides *what* is measured lives here, so the pytest files stay
short and the memory probe (a fresh subprocess) uses exactly the same paths.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from delve_fast import _loader, ops
from delve_fast._reference import as_channel_view

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where pytest-benchmark writes its JSON (``.benchmarks/`` is git-ignored).
RESULTS_JSON = Path(os.environ.get("DELVE_FAST_BENCH_JSON", REPO_ROOT / ".benchmarks" / "delve_fast_latest.json"))
#: Threads for every measurement; the issue's machine has 2 cores.
THREADS = int(os.environ.get("DELVE_FAST_BENCH_THREADS", "2"))

#: Issue 5 targets, read by the report.
TARGETS = {
    "train_overhead_max": 0.10,
    "train_overhead_mixed_max": 0.05,
    "update_speedup_64x64x32x32_min": 3.0,
    "update_speedup_all_min": 1.0,
    "roofline_fraction_conv_min": 0.6,
    "reduction_speedup_min": 4.0,
    "memory_extra_compiled_max_mib": 64.0,
}


# --------------------------------------------------------------------------- update-op cases


@dataclass(frozen=True)
class UpdateCase:
    """One batch shape of the update-op benchmark."""

    id: str
    kind: str  # "conv", "conv_cl" (channels_last), "linear", "tokens"
    shape: tuple[int, ...]

    @property
    def channels(self) -> int:
        return self.shape[-1] if self.kind == "tokens" else self.shape[1]

    @property
    def samples(self) -> int:
        """K, the number of C-dimensional samples in the batch."""
        if self.kind == "tokens":
            return self.shape[0] * self.shape[1]
        if self.kind == "linear":
            return self.shape[0]
        n, _, h, w = self.shape
        return n * h * w

    @property
    def syrk_flops(self) -> int:
        """N·S·C·(C+1): the flops of one triangle of the Gram matrix."""
        c = self.channels
        return self.samples * c * (c + 1)

    @property
    def is_conv(self) -> bool:
        return self.kind in ("conv", "conv_cl")

    @property
    def label(self) -> str:
        dims = "×".join(str(d) for d in self.shape)
        return {
            "conv": f"conv ({dims})",
            "conv_cl": f"conv channels_last ({dims})",
            "linear": f"linear ({dims})",
            "tokens": f"tokens ({dims})",
        }[self.kind]


UPDATE_CASES = [
    UpdateCase("conv-64x64x32x32", "conv", (64, 64, 32, 32)),
    UpdateCase("conv-64x128x16x16", "conv", (64, 128, 16, 16)),
    UpdateCase("conv-64x256x8x8", "conv", (64, 256, 8, 8)),
    UpdateCase("conv-64x512x4x4", "conv", (64, 512, 4, 4)),
    UpdateCase("convcl-64x64x32x32", "conv_cl", (64, 64, 32, 32)),
    UpdateCase("linear-256x512", "linear", (256, 512)),
    UpdateCase("linear-256x4096", "linear", (256, 4096)),
    UpdateCase("tokens-32x197x768", "tokens", (32, 197, 768)),
]
CASES_BY_ID = {c.id: c for c in UPDATE_CASES}

#: The update paths. ``compiled_mixed`` exists only once ``ops.cov_update_`` takes ``precision=``.
UPDATE_PATHS = ["compiled", "twin", "delve", "compiled_mixed"]


def make_input(case: UpdateCase, seed: int = 0) -> torch.Tensor:
    """A float32 activation of ``case``'s shape and memory format (post-ReLU-like, non-zero mean)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(case.shape, generator=gen, dtype=torch.float32).abs_()
    if case.kind == "conv_cl":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def fast_view(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The ``(N, C, S)`` view delve_fast's op takes, without copying."""
    if kind == "tokens":
        return x.reshape(-1, x.shape[-1]).unsqueeze(-1)
    return as_channel_view(x)


def delve_matrix(x: torch.Tensor) -> torch.Tensor:
    """The 2-D ``(samples, C)`` matrix delve 0.1.50 hands to its covariance.

    Conv outputs follow delve's ``conv_method='channelwise'`` branch of
    ``SaturationTracker._record_stat``: channels first, flatten, transpose back.
    Tokens are flattened to ``(B·T, D)`` (delve itself would keep only the
    last time step; the flattening is what a like-for-like comparison needs).
    """
    if x.dim() == 4:
        return x.permute(1, 0, 2, 3).flatten(1).permute(1, 0)
    if x.dim() == 3:
        return x.reshape(-1, x.shape[-1])
    return x


def has_precision_arg() -> bool:
    """Whether the op offers the optional ``precision=`` mode (issue 5)."""
    try:
        return "precision" in inspect.signature(ops.cov_update_).parameters
    except (TypeError, ValueError):
        return False


def make_update_fn(path: str, x: torch.Tensor, kind: str) -> Callable[[], None]:
    """A no-argument callable doing one update of a persistent state with batch ``x``.

    Parameters
    ----------
    path : str
        ``compiled``, ``twin``, ``compiled_mixed`` or ``delve``.
    x : torch.Tensor
        The activation, as a layer would output it.
    kind : str
        The case's kind (decides the view).
    """
    if path == "delve":
        from delve.torch_utils import TorchCovarianceMatrix  # noqa: PLC0415

        cov = TorchCovarianceMatrix(device="cpu")

        def run_delve() -> None:
            cov.update(delve_matrix(x), False)

        return run_delve

    view = fast_view(x, kind)
    c = view.shape[1]
    mean = torch.zeros(c, dtype=torch.float64)
    m2 = torch.zeros(c, c, dtype=torch.float64)
    k = view.shape[0] * view.shape[2]
    state = {"count": 0}
    kwargs: dict = {}
    if path == "compiled":
        backend = "cpp"
    elif path == "twin":
        backend = "torch"
    elif path == "compiled_mixed":
        backend = "cpp"
        kwargs["precision"] = "mixed"
    else:
        raise ValueError(f"unknown path {path!r}")

    def run_fast() -> None:
        ops.cov_update_(mean, m2, view, state["count"], backend=backend, **kwargs)
        state["count"] += k

    return run_fast


#: Side of the square fp64 GEMM whose rate is the roofline.
GEMM_N = 2048


def make_gemm_fn(n: int = GEMM_N) -> tuple[Callable[[], object], int]:
    """``torch.mm`` of two ``n × n`` fp64 matrices into a reused output, and its flop count 2n³."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    b = torch.randn(n, n, generator=gen, dtype=torch.float64)
    out = torch.empty(n, n, dtype=torch.float64)

    def gemm() -> None:
        torch.mm(a, b, out=out)

    return gemm, 2 * n**3


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


# --------------------------------------------------------------------------- reduction

#: Channel counts of the 9 tracked layers of the training benchmark's model.
TRACKED_SIZES = [64, 64, 128, 128, 256, 256, 512, 256, 10]


def reduction_covariances(seed: int = 0) -> list[torch.Tensor]:
    """One float64 covariance per tracked layer, with a decaying spectrum like real layers."""
    gen = torch.Generator().manual_seed(seed)
    covs = []
    for c in TRACKED_SIZES:
        q, _ = torch.linalg.qr(torch.randn(c, c, generator=gen, dtype=torch.float64))
        ev = torch.logspace(0, -6, c, dtype=torch.float64)
        covs.append((q * ev) @ q.T)
    return covs


def stats_from_eigenvalues(ev: torch.Tensor, thresh: float = 0.99) -> tuple[float, int]:
    """lsat and idim from descending eigenvalues, as delve 0.1.50 computes them.

    delve counts the eigenvalues whose cumulative share stays below ``thresh``
    (at least 1). Its extra "+1 when the gap exceeds 0.02" slices an already
    filtered matrix, so it never changes the count; neither does it here.
    """
    pct = ev.cumsum(0) / ev.sum()
    k = max(int((pct < thresh).sum()), 1)
    return k / ev.shape[0], k


def reduction_fast(covs: list[torch.Tensor], backend: str) -> list[tuple[float, int]]:
    """delve_fast's reduction: one batched eigenvalue call, then both stats from the eigenvalues."""
    return [stats_from_eigenvalues(ev) for ev in ops.eigvalsh_desc(covs, backend=backend)]


def reduction_delve(covs: list[torch.Tensor], stats: tuple[str, ...] = ("lsat", "idim")) -> list:
    """delve 0.1.50's reduction: per layer, per stat, its own ``torch.linalg.eigh``."""
    from delve.metrics import (  # noqa: PLC0415
        compute_diag_trace,
        compute_intrinsic_dimensionality,
        compute_saturation,
    )

    fns = {"lsat": compute_saturation, "idim": compute_intrinsic_dimensionality, "dtrc": compute_diag_trace}
    return [[fns[s](cov) for s in stats] for cov in covs]


# --------------------------------------------------------------------------- training model


def build_vgg(seed: int = 0) -> nn.Module:
    """The issue's VGG-style model: 7 convs, 4 pools, Linear 2048→256→10, ReLUs."""
    torch.manual_seed(seed)

    def conv(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *conv(3, 64),
        *conv(64, 64),
        nn.MaxPool2d(2),
        *conv(64, 128),
        *conv(128, 128),
        nn.MaxPool2d(2),
        *conv(128, 256),
        *conv(256, 256),
        nn.MaxPool2d(2),
        *conv(256, 512),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2048, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, 10),
    )


def delve_fast_tracker_available() -> tuple[bool, str]:
    try:
        from delve_fast.tracker import SaturationTracker  # noqa: F401, PLC0415
    except Exception as exc:  # not written yet, or broken
        return False, f"delve_fast.tracker not importable: {type(exc).__name__}: {exc}"
    return True, ""


def tracker_accepts(name: str) -> bool:
    try:
        from delve_fast.tracker import SaturationTracker  # noqa: PLC0415

        return name in inspect.signature(SaturationTracker.__init__).parameters
    except Exception:
        return False


def make_tracker(variant: str, model: nn.Module, savefile: str):
    """Attach a tracker of ``variant`` to ``model`` (or nothing for ``none``)."""
    stats = ["lsat", "idim"]
    if variant == "none":
        return None
    if variant == "delve":
        import delve  # noqa: PLC0415

        logging.getLogger("delve").setLevel(logging.WARNING)  # it logs every hooked layer at INFO

        return delve.SaturationTracker(savefile, save_to="csv", modules=model, stats=stats, device="cpu")
    from delve_fast.tracker import SaturationTracker  # noqa: PLC0415

    kwargs = {}
    if variant == "fast_cpp":
        kwargs["backend"] = "cpp"
    elif variant == "fast_torch":
        kwargs["backend"] = "torch"
    elif variant == "fast_mixed":
        kwargs["backend"] = "cpp"
        kwargs["precision"] = "mixed"
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return SaturationTracker(savefile, save_to="csv", modules=model, stats=stats, device="cpu", **kwargs)


#: Steps of one CIFAR-10 epoch at batch 64 (50 000 / 64): the add_saturations() cadence.
EPOCH_STEPS = 782


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


def run_training_overhead(
    variants: list[str],
    rounds: int = 20,
    warmup: int = 2,
    sat_calls: int = 3,
    sat_steps: int = 2,
    batch: int = 64,
) -> dict:
    """Time training steps of identical models with and without each tracker, interleaved.

    One model per variant (``none`` = no tracker) with the same initial
    weights; each round runs one SGD step of every model, in an order that
    rotates every round, so slow drifts of the noisy machine hit all variants
    alike. Overhead is ``median(with) / median(without) - 1``.

    Afterwards ``add_saturations()`` of each tracker is timed ``sat_calls``
    times, each after ``sat_steps`` training steps (trackers reset their state
    at every call, as delve's default ``reset_covariance=True`` does).

    Returns
    -------
    dict
        ``step_ms`` (variant → list of step times), ``median_ms``,
        ``overhead`` (variant → fraction), ``overhead_paired`` (median of
        per-round ratios), ``overhead_interval_95`` (variant → bootstrap
        interval, see :func:`overhead_interval`), ``add_saturations_ms``
        (variant → list).
    """
    torch.set_num_threads(THREADS)
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(batch, 3, 32, 32, generator=gen) for _ in range(4)]
    ys = [torch.randint(0, 10, (batch,), generator=gen) for _ in range(4)]
    loss_fn = nn.CrossEntropyLoss()
    all_variants = ["none", *[v for v in variants if v != "none"]]
    with tempfile.TemporaryDirectory(prefix="delve_fast_bench_") as tmp:
        models, trackers, opts = {}, {}, {}
        for v in all_variants:
            models[v] = build_vgg(seed=0)
            models[v].train()
            trackers[v] = make_tracker(v, models[v], str(Path(tmp) / v))
            opts[v] = torch.optim.SGD(models[v].parameters(), lr=0.01, momentum=0.9)

        def step(v: str, i: int) -> float:
            x, y = xs[i % len(xs)], ys[i % len(ys)]
            t0 = time.perf_counter()
            opts[v].zero_grad(set_to_none=True)
            loss = loss_fn(models[v](x), y)
            loss.backward()
            opts[v].step()
            return time.perf_counter() - t0

        times: dict[str, list[float]] = {v: [] for v in all_variants}
        n = len(all_variants)
        for r in range(warmup + rounds):
            shift = r % n
            order = all_variants[shift:] + all_variants[:shift]
            for v in order:
                t = step(v, r)
                if r >= warmup:
                    times[v].append(t * 1e3)

        sat_ms: dict[str, list[float]] = {}
        for v in all_variants:
            if trackers[v] is None:
                continue
            sat_ms[v] = []
            for c in range(sat_calls):
                for i in range(sat_steps):
                    step(v, c * sat_steps + i)
                with contextlib.redirect_stdout(None):
                    t0 = time.perf_counter()
                    trackers[v].add_saturations()
                    sat_ms[v].append((time.perf_counter() - t0) * 1e3)
        for t in trackers.values():
            if t is not None and hasattr(t, "close"):
                with contextlib.suppress(Exception):
                    t.close()

    med = {v: statistics.median(ts) for v, ts in times.items()}
    return {
        "rounds": rounds,
        "batch": batch,
        "threads": THREADS,
        "step_ms": times,
        "median_ms": med,
        "overhead": {v: med[v] / med["none"] - 1.0 for v in all_variants if v != "none"},
        "overhead_paired": {
            v: statistics.median(a / b for a, b in zip(times[v], times["none"], strict=True)) - 1.0
            for v in all_variants
            if v != "none"
        },
        "overhead_interval_95": {v: overhead_interval(times[v], times["none"]) for v in all_variants if v != "none"},
        "add_saturations_ms": sat_ms,
        "epoch_steps": EPOCH_STEPS,
    }


# --------------------------------------------------------------------------- machine


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    info = _loader.build_info() or {}
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "mkl": torch.backends.mkl.is_available(),
        "python": platform.python_version(),
        "delve_fast_backend": ops.backend_info().get("backend"),
        "cpu_kernel_isa": info.get("cpu_kernel_isa"),
    }
