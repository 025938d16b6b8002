"""Per-layer, per-mode bookkeeping of what the forward hooks record.

:class:`LayerRecorder` owns one covariance state per (mode, layer) and the
counters that decide whether a forward pass is recorded at all
(``log_interval``, ``max_samples``). The tracker's hooks ask it, view the
output, and hand the batch back; the tracker itself keeps no counters.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from delve_fast import stats as S
from delve_fast import views
from delve_fast.covariance import TorchCovarianceMatrix
from delve_fast.masking import WeightedMoments
from delve_fast.state import StateTooLargeError, state_nbytes

__all__ = ["LayerRecorder", "Pending"]

_COV = S.STATMAP["cov"]

#: ``(mode, layer name, state)`` of a layer and mode that holds samples.
Pending = tuple[str, str, TorchCovarianceMatrix]


class LayerRecorder:
    """The covariance states and recording counters of every tracked layer and mode.

    Parameters
    ----------
    make_state : callable
        ``make_state(mode)`` builds the empty state of a layer the first time
        it is recorded in ``mode``.
    log_interval : int
        Record every ``log_interval``-th forward pass (counted per layer and mode).
    max_samples : int, optional
        Batch rows (dim 0 entries) recorded per layer and mode between two
        :meth:`end_epoch` calls; ``None`` means no limit.
    max_state_bytes : int, optional
        Largest covariance state (bytes of one layer and mode, see
        :func:`delve_fast.state.state_nbytes`) that :meth:`fold` may create;
        ``None`` means no limit.

    Attributes
    ----------
    logs : dict
        ``'<mode>-covariance-matrix'`` to ``{layer: state}``, delve's layout.
    seen_samples : dict
        ``mode`` to ``{layer: batch rows recorded this epoch}``.
    """

    def __init__(
        self,
        make_state: Callable[[str], TorchCovarianceMatrix],
        log_interval: int,
        max_samples: int | None,
        max_state_bytes: int | None = None,
    ) -> None:
        self._make_state = make_state
        self.log_interval = log_interval
        self.max_samples = max_samples
        self.max_state_bytes = max_state_bytes
        # Guards the counters and the creation of states when hooks run in
        # several threads (nn.DataParallel replicas); each state serialises its
        # own updates, so different layers still fold in parallel.
        self._lock = threading.Lock()
        self.logs: dict[str, dict[str, TorchCovarianceMatrix]] = {f"{m}-{_COV}": {} for m in S.MODES}
        self.seen_samples: dict[str, dict[str, int]] = {m: {} for m in S.MODES}
        self.forward_counts: dict[str, dict[str, int]] = {m: {} for m in S.MODES}
        # (mode, layer) -> feature order of a conv 'flatten' state (see views.flatten_view).
        self.flatten_orders: dict[tuple[str, str], views.FlattenOrder] = {}
        # (mode, layer) -> token-masked samples not yet merged into the state (see delve_fast.masking).
        self.masked: dict[tuple[str, str], WeightedMoments] = {}

    def admit(self, mode: str, name: str) -> tuple[bool, int | None]:
        """Count one forward pass; say whether to record it and how many rows fit.

        Returns
        -------
        record : bool
            False when ``log_interval`` skips this pass or ``max_samples`` is reached.
        room : int or None
            Batch rows still allowed this epoch (``None``: no limit).
        """
        with self._lock:
            counts = self.forward_counts[mode]
            counts[name] = counts.get(name, 0) + 1
            if counts[name] % self.log_interval:
                return False, None
            if self.max_samples is None:
                return True, None
            room = self.max_samples - self.seen_samples[mode].get(name, 0)
            return room > 0, room

    def flatten_order(self, mode: str, name: str) -> views.FlattenOrder | None:
        """The feature order a ``flatten`` state of this layer started with, if any."""
        return self.flatten_orders.get((mode, name))

    def fold(self, mode: str, name: str, batch: views.Batch, keep: torch.Tensor | None = None) -> None:
        """Fold a viewed batch into the layer's state, creating the state on first use.

        Safe to call from several threads at once: the result is the state a
        single thread would leave after the same batches (to float64 rounding
        of the order). With ``keep`` (``(N, S)`` bool, from a token mask) only
        the kept samples count; they gather on the device and join the state
        in :meth:`flush`.

        Raises
        ------
        StateTooLargeError
            When the state does not exist yet and would exceed ``max_state_bytes``.
        """
        with self._lock:
            states = self.logs[f"{mode}-{_COV}"]
            state = states.get(name)
            if state is None:
                self._check_size(mode, name, int(batch.view.shape[1]))
                state = states[name] = self._make_state(mode)
            if batch.flatten_order is not None:
                self.flatten_orders.setdefault((mode, name), batch.flatten_order)
            seen = self.seen_samples[mode]
            seen[name] = seen.get(name, 0) + batch.rows
            if keep is not None:
                moments = self.masked.get((mode, name))
                if moments is None:
                    moments = self.masked[(mode, name)] = WeightedMoments(state.device)
                moments.update(batch.view, keep)
                if state.save_data:  # the embed store takes kept tokens by boolean selection (one sync)
                    kept = batch.view.transpose(1, 2)[keep].unsqueeze(-1)
                    # Masked samples never pass the op's non-finite skip: every stored row counts.
                    state._store_samples(kept, torch.ones((), dtype=torch.bool, device=kept.device))
                return
        state.update_view(batch.view)

    def flush(self) -> None:
        """Merge the token-masked samples gathered so far into their states."""
        with self._lock:
            for (mode, name), moments in self.masked.items():
                moments.merge_into(self.logs[f"{mode}-{_COV}"][name].state)

    def _check_size(self, mode: str, name: str, width: int) -> None:
        need = state_nbytes(width)
        if self.max_state_bytes is None or need <= self.max_state_bytes:
            return
        raise StateTooLargeError(
            f"layer {name!r} ({mode}) has {width} features: its float64 covariance state would need "
            f"{_human(need)} ({need} bytes, {width}^2 float64), above max_state_bytes={self.max_state_bytes} "
            f"({_human(self.max_state_bytes)}). Remedies: a conv_method that pools ('channelwise', 'mean', "
            "'max', 'median') instead of 'flatten'; interpolation_strategy (e.g. 'nearest') with a smaller "
            "interpolation_downsampling to shrink conv maps; layer_filter or ignore_layer_names to leave the "
            "layer out; or raise max_state_bytes (None disables the check)."
        )

    def state_bytes(self) -> int:
        """Bytes held by every covariance state and stored embed sample, all layers and modes."""
        with self._lock:
            states = [state for per_mode in self.logs.values() for state in per_mode.values()]
        total = 0
        for state in states:
            total += state.state.nbytes + state.saved_nbytes
        return total

    def pending(self, layer_names: Iterable[str]) -> list[Pending]:
        """Every layer and mode with samples or skipped batches, modes first, then in ``layer_names`` order."""
        self.flush()
        names = list(layer_names)
        return [
            (mode, name, state)
            for mode in S.MODES
            for name in names
            if (state := self.logs[f"{mode}-{_COV}"].get(name)) is not None
            and (state.n_samples > 0 or state.state.skipped_batches > 0)
        ]

    def end_epoch(self, layer_names: Iterable[str], reset: bool) -> None:
        """Start the next epoch: reset the states (when ``reset``) and the ``max_samples`` budget."""
        if reset:
            for mode, name, state in self.pending(layer_names):
                state.reset()
                self.flatten_orders.pop((mode, name), None)
        for mode in S.MODES:
            self.seen_samples[mode] = {}

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue mid-epoch, as plain values and tensor copies.

        Each layer's running statistics are its :class:`~delve_fast.state.CovarianceState`'s
        own ``state_dict()`` (passed through whole, so fields it adds travel too),
        plus the samples kept for ``embed``. Token-masked samples not yet
        merged are merged first, so they travel too.
        """
        self.flush()
        states: dict[str, dict[str, Any]] = {}
        for mode in S.MODES:
            states[mode] = {
                name: {
                    "state": cov.state.state_dict(),
                    "saved_samples": None if cov.saved_samples is None else cov.saved_samples.detach().clone(),
                }
                for name, cov in self.logs[f"{mode}-{_COV}"].items()
            }
        return {
            "states": states,
            "seen_samples": {m: dict(v) for m, v in self.seen_samples.items()},
            "forward_counts": {m: dict(v) for m, v in self.forward_counts.items()},
            "flatten_orders": [[mode, name, order] for (mode, name), order in self.flatten_orders.items()],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace every state and counter with :meth:`state_dict`'s output (layer names are checked by the caller)."""
        for mode in S.MODES:
            restored: dict[str, TorchCovarianceMatrix] = {}
            for name, entry in state["states"].get(mode, {}).items():
                cov = self._make_state(mode)
                cov.state.load_state_dict(entry["state"])
                samples = entry.get("saved_samples")
                cov.saved_samples = None if samples is None else samples.to(cov.device, copy=True)
                restored[name] = cov
            # Mutate in place: the tracker exposes these dicts as delve's attributes.
            self.logs[f"{mode}-{_COV}"].clear()
            self.logs[f"{mode}-{_COV}"].update(restored)
            self.seen_samples[mode].clear()
            self.seen_samples[mode].update({str(k): int(v) for k, v in state["seen_samples"].get(mode, {}).items()})
            self.forward_counts[mode] = {str(k): int(v) for k, v in state["forward_counts"].get(mode, {}).items()}
        self.flatten_orders = {
            (str(mode), str(name)): (str(order[0]), tuple(int(d) for d in order[1]))
            for mode, name, order in state["flatten_orders"]
        }


def _human(nbytes: int) -> str:
    """``nbytes`` in the largest binary unit that keeps it >= 1 (e.g. ``2.0 GiB``)."""
    value, unit = float(nbytes), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.1f} {unit}" if unit != "B" else f"{nbytes} B"
