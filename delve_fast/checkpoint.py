"""Checkpoints of a :class:`~delve_fast.SaturationTracker`: continue a run mid-epoch in another process.

:meth:`SaturationTracker.state_dict` returns a versioned dict of plain
values and tensor copies (it can be passed to :func:`torch.save`):

``format``, ``version``
    What the dict is; :func:`load_tracker_state_dict` refuses others.
``epoch``, ``record``, ``epoch_dirty``
    The open epoch, whether recording was paused by ``stop()``, and whether
    the open epoch holds values (so a ``save()`` after restoring closes it).
``layers``
    The tracked layer names, in order; a restore needs the same layers.
``recorder``
    Every layer's covariance state (each :class:`~delve_fast.CovarianceState`'s
    own ``state_dict()``), the samples kept for ``embed``, the
    ``log_interval`` / ``max_samples`` counters and the ``flatten`` feature orders.
``writer_types``, ``writer``
    The writers' class names, and each writer's :meth:`~delve_fast.writers.AbstractWriter.state_dict`
    (the CSV writer's rows, values added in the open epoch, ...).

Examples
--------
>>> torch.save({"model": model.state_dict(), "tracker": tracker.state_dict()}, "ckpt.pt")  # doctest: +SKIP
>>> # in the next process, after building the tracker with the same arguments:
>>> tracker.load_state_dict(torch.load("ckpt.pt", weights_only=False)["tracker"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from delve_fast.tracker import SaturationTracker

__all__ = ["tracker_state_dict", "load_tracker_state_dict", "STATE_FORMAT", "STATE_VERSION"]

STATE_FORMAT = "delve_fast.SaturationTracker"
#: Version of the layout above; bump it when a field changes meaning.
STATE_VERSION = 1


def _writer_types(tracker: SaturationTracker) -> list[str]:
    from delve_fast.writers import CompositWriter

    writers = tracker.writer.writers if isinstance(tracker.writer, CompositWriter) else [tracker.writer]
    return [type(w).__name__ for w in writers]


def tracker_state_dict(tracker: SaturationTracker) -> dict[str, Any]:
    """The checkpoint of ``tracker`` (see the module docstring for the layout)."""
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "epoch": int(tracker.epoch),
        "record": bool(tracker.record),
        # Whether the open epoch holds values, so that a save() after restoring closes it.
        "epoch_dirty": bool(tracker._epoch_dirty),
        # What the open epoch holds, so that save() and add_scalar() after restoring place values alike.
        "open_names": sorted(tracker._open_names),
        "saturations_open": bool(tracker._saturations_open),
        "save_requested": bool(tracker._save_requested),
        "layers": list(tracker.layers),
        "writer_types": _writer_types(tracker),
        "recorder": tracker._recorder.state_dict(),
        "writer": tracker.writer.state_dict(),
    }


def _check_layers(saved: list[str], current: list[str]) -> None:
    if saved == current:
        return
    missing = [name for name in saved if name not in current]
    extra = [name for name in current if name not in saved]
    details = []
    if missing:
        details.append(f"saved but not tracked now: {missing}")
    if extra:
        details.append(f"tracked now but not saved: {extra}")
    if not details:
        details.append(f"same layers in another order: saved {saved}, now {current}")
    raise ValueError("the tracker state_dict was saved for other layers; " + "; ".join(details))


def load_tracker_state_dict(tracker: SaturationTracker, state: Mapping[str, Any]) -> None:
    """Restore ``state`` (from :func:`tracker_state_dict`) into ``tracker``.

    Everything is checked before anything changes, so a refused dict leaves
    the tracker as it was.

    Raises
    ------
    TypeError
        If ``state`` is not a mapping.
    ValueError
        If it is not a tracker state, has an unknown version, or was saved
        with other layers or writers.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"load_state_dict expects the dict from state_dict(), got {type(state).__name__}")
    if state.get("format") != STATE_FORMAT:
        raise ValueError(
            f"not a SaturationTracker state_dict (format {state.get('format')!r}, expected {STATE_FORMAT!r})"
        )
    version = state.get("version")
    if version != STATE_VERSION:
        raise ValueError(f"SaturationTracker state_dict version {version!r} is not supported (this is {STATE_VERSION})")
    _check_layers([str(n) for n in state["layers"]], list(tracker.layers))
    saved_types, current_types = list(state["writer_types"]), _writer_types(tracker)
    if saved_types != current_types:
        raise ValueError(
            f"the tracker state_dict was saved with writers {saved_types}, but this tracker has {current_types}"
        )
    tracker._recorder.load_state_dict(state["recorder"])
    tracker.writer.load_state_dict(state["writer"])
    tracker.epoch = int(state["epoch"])
    tracker.record = bool(state["record"])
    tracker._epoch_dirty = bool(state.get("epoch_dirty", False))  # absent from states saved before it existed
    tracker._open_names = set(state.get("open_names", []))
    # States saved before these keys existed closed any dirty epoch at save(): keep that.
    tracker._saturations_open = bool(state.get("saturations_open", tracker._epoch_dirty))
    tracker._save_requested = bool(state.get("save_requested", False))
