"""One set of statistics for a whole distributed job, through :mod:`torch.distributed`.

Every rank keeps its own :class:`~delve_fast.state.CovarianceState` per layer
and mode (its shard of the data). At ``add_saturations()`` the ranks combine
them exactly and split the eigenvalue work:

1. **Header** (4 int64, MAX): every rank tracks the same ``(mode, layer)`` keys.
2. **Widths** (2 int64 per key, MAX): the feature count of every key, so a
   rank that never saw a layer still allocates zeros of the right size; two
   ranks with different widths for one layer are an error on every rank.
3. **Moments** (float64 ``[n, n * mean]`` per key, SUM): global counts and means.
4. **Centred sums** (float64 upper triangles, SUM): each rank re-centres its
   ``m2`` on the global mean, ``m2_r + n_r (mean_r - mean)(mean_r - mean)^T``,
   which makes the sum exact however far apart the ranks' means are. Every
   rank then holds the merged state of every layer.
5. **Statistics** (one ``all_gather_object``): the layers are dealt out to the
   ranks, balanced by the ``C^3`` cost of their eigen solve; each rank solves
   its share and the statistics are exchanged, so every rank returns the same
   values.

Steps 1 to 4 are pure functions over lists of states (``*_message`` builds a
rank's buffer, ``*_from`` reads the reduced one), so they are tested without
processes; :func:`merge_states` runs them over a process group. No raw sample
is ever sent, and each message has the same size whatever the world size.
"""

from __future__ import annotations

import pickle
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from delve_fast import stats as S
from delve_fast._warn import warn_user
from delve_fast.safe_stats import NUMERIC_ERRORS, nan_cells
from delve_fast.state import CovarianceState

__all__ = [
    "ExchangeStats",
    "last_exchange",
    "resolve_group",
    "is_main_rank",
    "header_message",
    "check_header",
    "width_message",
    "widths_from",
    "moment_message",
    "moments_from",
    "centred_message",
    "merged_from",
    "assign_shares",
    "canonical_state",
    "merge_states",
    "tracker_entries",
    "compute_merged",
    "LOCAL_STATS",
]

#: Stats every rank computes itself from the merged state (no eigenvalues needed, nothing to exchange).
LOCAL_STATS: tuple[str, ...] = ("cov", "trc")

# Width codes: the second slot of a key holds _BIG - C, so a MAX reduction gives the smallest width too.
_BIG = 1 << 40


@dataclass(frozen=True)
class ExchangeStats:
    """What one :func:`compute_merged` call sent from this rank.

    Attributes
    ----------
    collectives : int
        Collective calls made (an ``all_gather_object`` counts as two: sizes, then bytes).
    payload_bytes : int
        Bytes of the buffers this rank handed to the collectives (the pickled
        statistics for ``all_gather_object``). A ring all-reduce puts about
        ``2 (W - 1) / W`` times its buffer on the wire per rank, so the traffic
        stays below twice this figure whatever the world size ``W``.
    by_step : dict
        ``step name -> bytes``.
    """

    collectives: int = 0
    payload_bytes: int = 0
    by_step: dict[str, int] | None = None


_last = ExchangeStats()


def last_exchange() -> ExchangeStats:
    """The :class:`ExchangeStats` of this process's latest :func:`compute_merged` (or :func:`merge_states`) call."""
    return _last


# ----------------------------------------------------------- process groups
def _dist() -> Any:
    import torch.distributed as dist

    return dist


def resolve_group(distributed: Any) -> Any | None:
    """Turn the tracker's ``distributed`` argument into a process group, or None (per-rank behaviour).

    Parameters
    ----------
    distributed : None, bool or torch.distributed.ProcessGroup
        ``None`` (default): the default process group when
        :mod:`torch.distributed` is initialised with more than one rank, else
        off. ``True``: the default group, which must be initialised.
        ``False``: off, every rank works alone. A ``ProcessGroup``: that group.

    Returns
    -------
    ProcessGroup or None

    Raises
    ------
    RuntimeError
        ``True`` or a group while :mod:`torch.distributed` is not initialised,
        or a group this process is not a member of.
    TypeError
        Any other value.
    """
    if distributed is False:
        return None
    dist = _dist()
    available = dist.is_available()
    initialised = available and dist.is_initialized()
    if distributed is None:
        if initialised and dist.get_world_size() > 1:
            return dist.group.WORLD
        return None
    if distributed is True:
        if not initialised:
            raise RuntimeError(
                "distributed=True needs torch.distributed to be initialised first "
                "(call torch.distributed.init_process_group before creating the tracker), "
                "or pass distributed=False"
            )
        return dist.group.WORLD
    if available and isinstance(distributed, dist.ProcessGroup):
        if not initialised:
            raise RuntimeError("a ProcessGroup was passed but torch.distributed is not initialised")
        if dist.get_rank(distributed) < 0:
            raise RuntimeError("this process is not a member of the ProcessGroup passed as distributed=")
        return distributed
    raise TypeError(
        f"distributed must be None (automatic), True, False or a torch.distributed.ProcessGroup, got {distributed!r}"
    )


def is_main_rank(group: Any | None) -> bool:
    """Whether this process writes files: always without a group, else only rank 0 of the group."""
    return group is None or _dist().get_rank(group) == 0


def _buffer_device(group: Any, fallback: torch.device) -> torch.device:
    # NCCL moves only CUDA tensors; gloo and others take the states' own device.
    if _dist().get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return fallback


class _Channel:
    """The collectives of one exchange, with a byte count."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.collectives = 0
        self.by_step: dict[str, int] = {}

    def _count(self, step: str, nbytes: int, calls: int = 1) -> None:
        self.collectives += calls
        self.by_step[step] = self.by_step.get(step, 0) + nbytes

    def all_reduce(self, step: str, buf: torch.Tensor, op: str) -> torch.Tensor:
        dist = _dist()
        self._count(step, buf.numel() * buf.element_size())
        dist.all_reduce(buf, op=getattr(dist.ReduceOp, op), group=self.group)
        return buf

    def all_gather_object(self, step: str, obj: Any) -> list[Any]:
        dist = _dist()
        # torch pickles the object itself; this second pickle only measures it (+ the int64 size message).
        self._count(step, len(pickle.dumps(obj)) + 8, calls=2)
        out: list[Any] = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def stats(self) -> ExchangeStats:
        return ExchangeStats(self.collectives, sum(self.by_step.values()), dict(self.by_step))


# ------------------------------------------------------ pure message phases
def header_message(keys: Sequence[str]) -> torch.Tensor:
    """int64 ``[crc, -crc, K, -K]`` of the key names: a MAX all-reduce shows whether all ranks agree."""
    crc = zlib.crc32("\x00".join(keys).encode())
    return torch.tensor([crc, -crc, len(keys), -len(keys)], dtype=torch.int64)


def check_header(reduced: torch.Tensor, n_keys: int) -> None:
    """Raise (on every rank alike) when the ranks track different layers."""
    crc_max, neg_crc_max, k_max, neg_k_max = (int(v) for v in reduced.tolist())
    if crc_max != -neg_crc_max or k_max != -neg_k_max:
        raise RuntimeError(
            f"the ranks track different layers (between {-neg_k_max} and {k_max} (mode, layer) keys; "
            f"this rank has {n_keys}): build the same model and the same tracker arguments on every rank"
        )


def width_message(states: Sequence[CovarianceState | None]) -> torch.Tensor:
    """int64 ``[C_k, BIG - C_k]`` per key (zeros for a key this rank did not record).

    A state that left out every batch (each held a NaN or an Inf) still sends
    its width: the layer was recorded, and its cells must be NaN, not absent.
    """
    out = torch.zeros(2 * len(states), dtype=torch.int64)
    for k, state in enumerate(states):
        if state is not None and state.n_features and (state.count > 0 or state.skipped_batches > 0):
            out[2 * k] = state.n_features
            out[2 * k + 1] = _BIG - state.n_features
    return out


def widths_from(reduced: torch.Tensor, keys: Sequence[str]) -> list[int]:
    """Each key's width from the MAX-reduced :func:`width_message` (0: no rank recorded it).

    Raises
    ------
    ValueError
        When two ranks saw the same key with different widths.
    """
    pairs = reduced.view(-1, 2).tolist()
    widths = []
    for key, (widest, code) in zip(keys, pairs, strict=True):
        narrowest = _BIG - code if code else 0
        if widest != narrowest:
            raise ValueError(
                f"{key}: the ranks recorded different feature counts (from {narrowest} to {widest}); "
                "every rank must see the same layer widths (same model, same conv_method and interpolation)"
            )
        widths.append(int(widest))
    return widths


def moment_message(
    states: Sequence[CovarianceState | None], widths: Sequence[int], device: torch.device | None = None
) -> torch.Tensor:
    """float64 ``[n_k, n_k * mean_k]`` for every key of non-zero width, one flat buffer."""
    parts = []
    for state, c in zip(states, widths, strict=True):
        if c == 0:
            continue
        if state is None or state.count == 0:
            parts.append(torch.zeros(1 + c, dtype=torch.float64, device=device))
        else:
            n = torch.tensor([float(state.count)], dtype=torch.float64, device=device)
            parts.append(torch.cat([n, state.mean.to(device, torch.float64) * state.count]))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=device)


def moments_from(reduced: torch.Tensor, widths: Sequence[int]) -> tuple[list[int], list[torch.Tensor | None]]:
    """Global counts and means from the SUM-reduced :func:`moment_message` (None where the count is 0)."""
    counts: list[int] = []
    means: list[torch.Tensor | None] = []
    offset = 0
    for c in widths:
        if c == 0:
            counts.append(0)
            means.append(None)
            continue
        # float64 holds every count below 2**53 exactly, so rounding recovers the integer sum.
        n = int(round(float(reduced[offset])))
        counts.append(n)
        means.append(reduced[offset + 1 : offset + 1 + c] / n if n > 0 else None)
        offset += 1 + c
    return counts, means


def _triu(c: int, device: torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = torch.triu_indices(c, c, device=device)
    return rows, cols


def centred_message(
    states: Sequence[CovarianceState | None],
    counts: Sequence[int],
    means: Sequence[torch.Tensor | None],
    device: torch.device | None = None,
) -> torch.Tensor:
    """float64 upper triangles of ``m2_r + n_r d d^T`` (``d = mean_r - mean``) for every key with samples anywhere.

    A rank without samples for a key sends zeros of the right size, so the
    reduced buffer is the merged centred sum whatever the ranks' means.
    """
    parts = []
    for state, n, mean in zip(states, counts, means, strict=True):
        if n == 0:
            continue
        c = int(mean.shape[0])
        rows, cols = _triu(c, device)
        if state is None or state.count == 0:
            parts.append(torch.zeros(rows.shape[0], dtype=torch.float64, device=device))
            continue
        d = state.mean.to(device, torch.float64) - mean.to(device)
        m2 = state.m2.to(device, torch.float64) + torch.outer(d, d) * state.count
        parts.append(m2[rows, cols])
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=device)


def merged_from(
    reduced: torch.Tensor,
    counts: Sequence[int],
    means: Sequence[torch.Tensor | None],
    device: torch.device | None = None,
) -> list[CovarianceState]:
    """The merged states from the SUM-reduced :func:`centred_message` (empty states where the count is 0)."""
    out: list[CovarianceState] = []
    offset = 0
    for n, mean in zip(counts, means, strict=True):
        state = CovarianceState(device=device)
        if n > 0:
            c = int(mean.shape[0])
            rows, cols = _triu(c, reduced.device)
            tri = reduced[offset : offset + rows.shape[0]]
            offset += rows.shape[0]
            m2 = torch.zeros(c, c, dtype=torch.float64, device=reduced.device)
            m2[rows, cols] = tri
            m2[cols, rows] = tri  # both halves from one value: exactly symmetric
            state.load_state_dict({"count": n, "mean": mean, "m2": m2})
        out.append(state)
    return out


def assign_shares(widths: Sequence[int], world_size: int) -> list[int]:
    """Owner rank of each eigen solve, balancing the ``C^3`` costs (longest first, to the least loaded rank).

    Deterministic, so every rank computes the same assignment. Width 0 (no
    work) goes to rank 0.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    owners = [0] * len(widths)
    loads = [0] * world_size
    for k in sorted(range(len(widths)), key=lambda i: (-widths[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        owners[k] = rank
        loads[rank] += widths[k] ** 3
    return owners


def _chw_permutation(order: Any, device: torch.device | None) -> torch.Tensor | None:
    # A channels_last flatten state holds features in (H, W, C) order; delve's is (C, H, W).
    if order is None or order[0] != "hwc":
        return None
    c, h, w = order[1]
    return torch.arange(c * h * w, device=device).reshape(h, w, c).permute(2, 0, 1).reshape(-1)


def canonical_state(state: CovarianceState | None, order: Any = None) -> CovarianceState | None:
    """``state`` in delve's feature order: a permuted copy for a channels_last ``flatten`` state, else itself.

    Two ranks may record one layer in different memory formats; merging in one
    common order keeps the sum meaningful.
    """
    if state is None or state.n_features is None:
        return None
    perm = _chw_permutation(order, state.mean.device)
    if perm is None or state.count == 0:  # an empty state has no feature order to fix
        return state
    out = CovarianceState(device=state.device)
    out.load_state_dict({"count": state.count, "mean": state.mean[perm], "m2": state.m2[perm][:, perm]})
    return out


# ---------------------------------------------------------- over a group
def _merge(
    channel: _Channel, keys: Sequence[str], states: Sequence[CovarianceState | None], device: torch.device
) -> tuple[list[CovarianceState], list[int]]:
    """The merged state of every key and its width (0 where no rank recorded it)."""
    if len(keys) != len(states):
        raise ValueError(f"{len(keys)} keys but {len(states)} states")
    check_header(channel.all_reduce("header", header_message(keys).to(device), "MAX").cpu(), len(keys))
    if not keys:
        return [], []
    widths = widths_from(channel.all_reduce("widths", width_message(states).to(device), "MAX").cpu(), keys)
    if not any(widths):
        return [CovarianceState(device=device) for _ in keys], widths
    counts, means = moments_from(channel.all_reduce("moments", moment_message(states, widths, device), "SUM"), widths)
    if not any(counts):
        return [CovarianceState(device=device) for _ in keys], widths
    centred = channel.all_reduce("centred", centred_message(states, counts, means, device), "SUM")
    return merged_from(centred, counts, means, device), widths


def merge_states(
    keys: Sequence[str],
    states: Sequence[CovarianceState | None],
    group: Any = None,
    device: str | torch.device | None = None,
) -> list[CovarianceState]:
    """Merge every rank's states key by key, exactly, in four collectives; every rank gets the result.

    Parameters
    ----------
    keys : sequence of str
        One name per state, identical on every rank (checked).
    states : sequence of CovarianceState or None
        This rank's states; None (or an empty state) where it has no samples.
    group : ProcessGroup, optional
        Default: the default process group.
    device : str or torch.device, optional
        Where the buffers and merged states live (default: the CPU; CUDA for NCCL).

    Returns
    -------
    list of CovarianceState
        The merged state of each key (empty where no rank had samples). The
        inputs are not changed.
    """
    global _last
    dist = _dist()
    group = dist.group.WORLD if group is None else group
    dev = _buffer_device(group, torch.device("cpu") if device is None else torch.device(device))
    channel = _Channel(group)
    merged, _ = _merge(channel, keys, states, dev)
    _last = channel.stats()
    return merged


# ------------------------------------------------------- tracker statistics
@dataclass(frozen=True)
class _MergedLayer:
    """What a stat function may read of a merged layer (``StatContext.state``)."""

    state: CovarianceState
    saved_samples: torch.Tensor | None = None

    @property
    def n_samples(self) -> int:
        return self.state.count

    def mean(self) -> torch.Tensor:
        return self.state.mean.clone()

    def fix(self, center: bool = True) -> torch.Tensor:
        return self.state.covariance(center=center)


#: ``(mode, layer, TorchCovarianceMatrix or None, flatten order or None)`` for every mode and layer.
Entry = tuple[str, str, Any, Any]


def tracker_entries(recorder: Any, layer_names: Sequence[str]) -> list[Entry]:
    """Every ``(mode, layer)`` of a :class:`~delve_fast.recorder.LayerRecorder`, with its state or None.

    All modes and layers are listed, in the same order on every rank, whether
    or not this rank recorded them.
    """
    cov = S.STATMAP["cov"]
    return [
        (mode, name, recorder.logs[f"{mode}-{cov}"].get(name), recorder.flatten_order(mode, name))
        for mode in S.MODES
        for name in layer_names
    ]


def _permuted_samples(tcm: Any, order: Any) -> torch.Tensor | None:
    samples = getattr(tcm, "saved_samples", None)
    if samples is None:
        return None
    perm = _chw_permutation(order, samples.device)
    return samples if perm is None else samples[:, perm]


def compute_merged(
    entries: Sequence[Entry],
    mode_stats: dict[str, Sequence[str]],
    threshold: float,
    rule: str = "delve",
    *,
    average: bool = False,
    backend: str | None = None,
    group: Any = None,
    device: str | torch.device | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tracker's statistics of the whole job: merged states, shared eigen work, same values on every rank.

    Parameters
    ----------
    entries : sequence of (mode, layer, state, flatten order)
        Every mode and layer, as :func:`tracker_entries` lists them; ``state``
        is a :class:`~delve_fast.covariance.TorchCovarianceMatrix` or None.
    mode_stats, threshold, rule, average, backend
        As for :func:`delve_fast.stats.compute_layers`.
    group : ProcessGroup, optional
        Default: the default process group.
    device : str or torch.device, optional
        Where the merged states live (default: the CPU; CUDA for NCCL).

    Returns
    -------
    values : dict
        Column name to value, in the order a single process gives them; the
        same on every rank. Layers and modes without samples on any rank are
        left out.
    samples : dict
        ``embed`` projections, on rank 0 only (empty elsewhere): rank 0's own
        stored samples projected on the merged covariance's leading
        eigenvectors (no sample is sent between ranks).
    """
    global _last
    dist = _dist()
    group = dist.group.WORLD if group is None else group
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    dev = _buffer_device(group, torch.device("cpu") if device is None else torch.device(device))
    channel = _Channel(group)
    keys = [f"{mode}-{layer}" for mode, layer, _, _ in entries]
    _warn_skipped_batches(entries, rank)
    own = [canonical_state(None if tcm is None else tcm.state, order) for _, _, tcm, order in entries]
    merged, widths = _merge(channel, keys, own, dev)
    values: dict[str, Any] = {}
    samples: dict[str, Any] = {}
    recorded = [k for k, width in enumerate(widths) if width > 0]
    if not recorded:
        _last = channel.stats()
        return values, samples

    # Every rank holds the same merged states, so every rank finds the same broken layers and no
    # rank stops before the collectives below (a rank that raised would leave the others waiting).
    broken = set(_broken_layers(entries, merged, recorded))
    active = [k for k in recorded if k not in broken]
    per_sample = {key for key in S.STATS if S.STATS[key].per_sample}
    local = set(LOCAL_STATS)
    owners = dict(zip(active, assign_shares([merged[k].n_features for k in active], world), strict=True))
    mine = [k for k in active if owners[k] == rank]
    covs = {k: merged[k].covariance() for k in active}

    def context(k: int, eigenvalues: np.ndarray, trace: float, saved: torch.Tensor | None = None) -> S.StatContext:
        mode, layer, _, _ = entries[k]
        return S.StatContext(eigenvalues, covs[k], trace, _MergedLayer(merged[k], saved), threshold, rule, mode, layer)

    # This rank's share of the eigen solves, in one batched call; the rest arrives from the others.
    # A share that fails is sent as None (NaN cells on every rank), never raised before the exchange.
    share: dict[int, tuple[dict[str, Any], float | None] | None] = {}
    # The statistics that need the eigenvalues: everything but the per-rank and per-sample ones.
    spectral = {
        mode: [key for key in keys if key not in local and key not in per_sample] for mode, keys in mode_stats.items()
    }
    for k, outcome in _solve_share(mine, covs, entries, spectral, context, threshold, rule, average, backend):
        share[k] = outcome
    for part in channel.all_gather_object("statistics", share):
        share.update(part)
    broken.update(k for k in active if share[k] is None)

    no_eigenvalues = np.zeros(0)
    for k in recorded:
        mode, layer, tcm, order = entries[k]
        if k in broken:
            continue
        trace = float(covs[k].diagonal().sum())
        row = dict(share[k][0])
        row.update(S.compute(context(k, no_eigenvalues, trace), [key for key in mode_stats[mode] if key in local])[0])
        for key in mode_stats[mode]:  # the single-process column order
            column = f"{mode}-{S.STATS[key].name}_{layer}"
            if column in row:
                values[column] = row[column]
        wanted = [key for key in mode_stats[mode] if key in per_sample]
        if wanted and rank == 0:
            ctx = context(k, no_eigenvalues, trace, _permuted_samples(tcm, order))
            samples.update(S.compute(ctx, wanted)[1])
    # The single-process order: computed layers, their averages, then the NaN cells and averages.
    if average:
        for mode in S.MODES:
            sats = [share[k][1] for k in recorded if entries[k][0] == mode and k not in broken]
            if sats:
                values[f"average-{mode}-sat"] = float(np.mean(sats))
    for k in sorted(broken):
        mode, layer = entries[k][0], entries[k][1]
        values.update(nan_cells(mode, layer, widths[k], mode_stats[mode]))
    if average:
        for mode in S.MODES:
            if f"average-{mode}-sat" not in values and any(entries[k][0] == mode for k in recorded):
                values[f"average-{mode}-sat"] = float("nan")
    _last = channel.stats()
    return values, samples


def _warn_skipped_batches(entries: Sequence[Entry], rank: int) -> None:
    """One warning per layer and mode of this rank's shard that left out NaN or Inf batches."""
    mine = [(mode, layer, tcm.state) for mode, layer, tcm, _ in entries if tcm is not None]
    mine = [(mode, layer, state) for mode, layer, state in mine if state.counts is not None]
    if not mine:
        return
    rows = torch.stack([state.counts for _, _, state in mine]).tolist()  # one tracker, one device: one transfer
    for (mode, layer, _), (n, skipped) in zip(mine, rows, strict=True):
        if skipped:
            warn_user(
                f"delve_fast: layer {layer!r} ({mode}), rank {rank}: {int(skipped)} batch(es) holding NaN or Inf "
                f"were left out of this rank's shard since the covariance was last reset ({int(n)} samples kept)",
                RuntimeWarning,
            )


def _broken_layers(entries: Sequence[Entry], merged: Sequence[CovarianceState], recorded: Sequence[int]) -> list[int]:
    """Recorded keys whose merged state has no sample or is not finite (NaN cells), with a warning each."""
    out = []
    for k in recorded:
        mode, layer = entries[k][0], entries[k][1]
        state = merged[k]
        if state.count == 0:
            reason = "every recorded batch on every rank held NaN or Inf and was left out"
        elif not (torch.isfinite(state.m2).all() and torch.isfinite(state.mean).all()):
            reason = "its merged covariance holds NaN or Inf"
        else:
            continue
        warn_user(f"delve_fast: layer {layer!r} ({mode}): {reason}; its statistics are NaN", RuntimeWarning)
        out.append(k)
    return out


def _solve_share(
    mine: Sequence[int],
    covs: dict[int, torch.Tensor],
    entries: Sequence[Entry],
    spectral: dict[str, Sequence[str]],
    context: Callable[..., S.StatContext],
    threshold: float,
    rule: str,
    average: bool,
    backend: str | None,
) -> list[tuple[int, tuple[dict[str, Any], float | None] | None]]:
    """This rank's eigen solves and statistics: one batched call, then layer by layer if that fails."""

    def solve(ks: Sequence[int]) -> list[tuple[int, tuple[dict[str, Any], float | None]]]:
        eigs, traces = S.spectra([covs[k] for k in ks], backend=backend)
        out = []
        for k, lam, trace in zip(ks, eigs, traces, strict=True):
            vals, _ = S.compute(context(k, lam, float(trace)), spectral[entries[k][0]])
            out.append((k, (vals, S.saturation(lam, threshold, rule=rule) if average else None)))
        return out

    if not mine:
        return []
    try:
        return solve(mine)
    except NUMERIC_ERRORS:
        pass
    results: list[tuple[int, tuple[dict[str, Any], float | None] | None]] = []
    for k in mine:  # find the layers that fail on their own
        try:
            results.extend(solve([k]))
        except NUMERIC_ERRORS as exc:
            mode, layer = entries[k][0], entries[k][1]
            warn_user(
                f"delve_fast: layer {layer!r} ({mode}): its statistics could not be computed "
                f"({type(exc).__name__}: {exc}); its statistics are NaN",
                RuntimeWarning,
            )
            results.append((k, None))
    return results
