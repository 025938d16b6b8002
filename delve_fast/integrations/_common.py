"""What the framework callbacks share: optional imports, the tracker's life cycle and the schedule.

A callback owns one :class:`TrackedRun`. The framework tells it when training
starts (:meth:`TrackedRun.attach` builds the tracker on the model), when an
epoch or an optimizer step ends (:meth:`TrackedRun.epoch_ended`,
:meth:`TrackedRun.step_ended` say whether a row is due), and the callback
decides *when* to write the due row (:meth:`TrackedRun.flush`): right away, or
once the evaluation that belongs to the same period has run.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from torch import nn

from delve_fast.distributed import resolve_group
from delve_fast.writers.base import COVARIANCE_TAG, is_scalar_value

__all__ = ["require", "TrackedRun", "STATE_VERSION"]

#: Version of the dict that :meth:`TrackedRun.state_dict` returns.
STATE_VERSION = 1


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or fail with the extra that installs it.

    Parameters
    ----------
    module : str
        Module to import, for example ``"lightning.pytorch"``.
    extra : str
        The ``delve_fast`` extra that installs it, for example ``"lightning"``.
    purpose : str
        What needs it, for the message (``"delve_fast.integrations.lightning"``).

    Returns
    -------
    ModuleType

    Raises
    ------
    ImportError
        Naming the missing package and the ``pip install 'delve_fast[extra]'`` line.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise ImportError(
            f"{purpose} needs the {package!r} package, which is not installed (or failed to import: {exc}); "
            f"install it with: pip install 'delve_fast[{extra}]'"
        ) from exc


def _check_every(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int or None, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return value


def _model_device(model: nn.Module) -> Any:
    """Device of the model's first parameter or buffer; None for a model without tensors."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None


def _any_rank(flag: bool, group: Any) -> bool:
    """Whether ``flag`` is true on any rank of ``group`` (one MAX all-reduce of one int)."""
    import torch
    import torch.distributed as dist

    device = torch.device("cpu")
    if dist.get_backend(group) == "nccl":  # NCCL reduces CUDA tensors only
        device = torch.device("cuda", torch.cuda.current_device())
    buffer = torch.tensor([int(flag)], dtype=torch.int64, device=device)
    dist.all_reduce(buffer, op=dist.ReduceOp.MAX, group=group)
    return bool(buffer.item())


class TrackedRun:
    """A :class:`~delve_fast.SaturationTracker` attached for one training run, and its schedule.

    Parameters
    ----------
    savefile, save_to
        As for :class:`~delve_fast.SaturationTracker`.
    every_n_epochs : int or None
        Write a row after every ``every_n_epochs`` training epochs.
    every_n_steps : int or None
        Write a row after every ``every_n_steps`` optimizer steps instead;
        give one of the two, not both.
    flush_at_end : bool
        At the end of training, write a last row with whatever was recorded
        since the previous row (an incomplete period), if anything.
    tracker_kwargs : dict
        Every other :class:`~delve_fast.SaturationTracker` argument. ``modules``
        defaults to the model being trained and ``device`` to that model's
        device.
    owner : str
        Name of the callback class, for messages.
    """

    def __init__(
        self,
        savefile: str,
        save_to: Any,
        every_n_epochs: int | None,
        every_n_steps: int | None,
        flush_at_end: bool,
        tracker_kwargs: Mapping[str, Any],
        owner: str,
    ) -> None:
        self.savefile = savefile
        self.save_to = save_to
        self.every_n_steps = _check_every("every_n_steps", every_n_steps)
        self.every_n_epochs = _check_every("every_n_epochs", every_n_epochs)
        if self.every_n_steps is not None and self.every_n_epochs is not None:
            raise ValueError(
                f"give every_n_epochs ({every_n_epochs!r}) or every_n_steps ({every_n_steps!r}), not both; "
                "pass every_n_epochs=None to write a row every N steps"
            )
        if self.every_n_steps is None and self.every_n_epochs is None:
            raise ValueError("one of every_n_epochs and every_n_steps must be a positive int")
        for reserved in ("savefile", "save_to"):
            if reserved in tracker_kwargs:
                raise TypeError(f"{reserved} is given twice (positionally and in the tracker arguments)")
        self.flush_at_end = bool(flush_at_end)
        self.tracker_kwargs = dict(tracker_kwargs)
        self.owner = owner
        self.tracker: Any = None
        self.due = False
        self.epochs_ended = 0
        self.last_step_seen = 0
        self._restored: dict[str, Any] | None = None
        self._final: dict[str, Any] | None = None
        self._warned_no_state = False
        self._group: Any = None  # the tracker's process group (None: this process alone)

    # ------------------------------------------------------------ life cycle
    def attach(self, model: nn.Module) -> Any:
        """Build the tracker on ``model`` (unless ``modules`` was given) and hook its layers.

        Under a distributed launch the tracker finds the process group by
        itself (its ``distributed`` argument): every rank builds one, the
        ranks merge their states at each row, and only rank zero creates
        folders and writes files. So every rank builds the same tracker here.

        Parameters
        ----------
        model : nn.Module
            The model the framework trains.

        Returns
        -------
        SaturationTracker
        """
        from delve_fast.tracker import SaturationTracker

        if self.tracker is not None:
            self.detach()
        kwargs = dict(self.tracker_kwargs)
        kwargs.setdefault("modules", model)
        device = _model_device(model)
        if device is not None:
            kwargs.setdefault("device", device)
        restored = self._restored
        if restored is not None:
            # Writers resume from initial_epoch (the CSV writer reloads its rows),
            # so a resumed run appends to the file instead of overwriting it.
            kwargs.setdefault("initial_epoch", int(restored["epoch"]))
        self.tracker = SaturationTracker(self.savefile, self.save_to, **kwargs)
        self._group = resolve_group(kwargs.get("distributed"))
        self._final = None
        if restored is not None:
            self._load_into_tracker(restored)
            self._restored = None
        self.due = False
        return self.tracker

    def detach(self) -> None:
        """Remove the hooks and close the writers; safe to call twice.

        The final state is kept, so that a checkpoint saved after training
        (``trainer.save_checkpoint``) still holds it.
        """
        if self.tracker is not None:
            self._final = self.state_dict()
            self.tracker.close()
            self.tracker = None
        self.due = False

    # -------------------------------------------------------------- schedule
    def epoch_ended(self) -> bool:
        """Count one finished training epoch; return whether a row is now due."""
        self.epochs_ended += 1
        if self.every_n_epochs is not None and self.epochs_ended % self.every_n_epochs == 0:
            self.due = True
        return self.due

    def step_ended(self, global_step: int) -> bool:
        """Note the optimizer step count after a batch; return whether a row is now due.

        A batch that did not step the optimizer (gradient accumulation) leaves
        ``global_step`` unchanged and so cannot make a second row due.
        """
        global_step = int(global_step)
        if self.every_n_steps is not None and global_step != self.last_step_seen:
            if global_step % self.every_n_steps == 0:
                self.due = True
        self.last_step_seen = global_step
        return self.due

    def has_unwritten_data(self) -> bool:
        """Whether any layer recorded a batch since the last row."""
        if self.tracker is None:
            return False
        seen = getattr(self.tracker, "seen_samples", None)
        # A tracker without the counter: assume there is data.
        mine = True if seen is None else any(bool(per_layer) for per_layer in seen.values())
        if self._group is None:
            return mine
        # add_saturations() is a collective: the ranks must agree on calling it, and a rank
        # whose shard ran out early would otherwise skip the last row while the others wait.
        return _any_rank(mine, self._group)

    def flush(self) -> dict[str, float]:
        """Write one row (``tracker.add_saturations()``) and return its scalar values.

        Covariance matrices and other non-scalar values go to the tracker's
        writers only; the returned dict is what the framework's loggers get.
        """
        self.due = False
        if self.tracker is None:
            return {}
        values = self.tracker.add_saturations()
        return {
            name: float(value)
            for name, value in values.items()
            if COVARIANCE_TAG not in name and is_scalar_value(value)
        }

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """The schedule's counters and the tracker's state (``tracker.state_dict()``).

        A tracker without ``state_dict`` still has its epoch saved, so a
        resumed run numbers its rows on; the covariance gathered since the
        last row is then lost, and a warning says so.
        """
        if self.tracker is None:
            if self._restored is not None:
                return dict(self._restored)
            if self._final is not None:
                return dict(self._final)
            return {"version": STATE_VERSION, "epoch": 0, "epochs_ended": self.epochs_ended, "tracker": None}
        tracker_state = None
        if hasattr(self.tracker, "state_dict"):
            tracker_state = self.tracker.state_dict()
        elif self.has_unwritten_data() and not self._warned_no_state:
            self._warned_no_state = True
            warnings.warn(
                f"{self.owner}: this SaturationTracker has no state_dict(), so the checkpoint keeps the epoch "
                "but not the covariance recorded since the last row; resuming from it drops those batches",
                RuntimeWarning,
                stacklevel=3,
            )
        return {
            "version": STATE_VERSION,
            "epoch": int(self.tracker.epoch),
            "epochs_ended": self.epochs_ended,
            "last_step_seen": self.last_step_seen,
            "tracker": tracker_state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; applied to the tracker when it is built (or now)."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION or "epoch" not in state:
            found = state.get("version") if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(
                f"{self.owner}.load_state_dict expects a dict saved by {self.owner}.state_dict() "
                f"(version {STATE_VERSION}), got version {found!r}"
            )
        self.epochs_ended = int(state.get("epochs_ended", 0))
        self.last_step_seen = int(state.get("last_step_seen", 0))
        if self.tracker is None:
            self._restored = dict(state)
        else:
            self._load_into_tracker(state)

    def _load_into_tracker(self, state: Mapping[str, Any]) -> None:
        tracker_state = state.get("tracker")
        if tracker_state is not None:
            if not hasattr(self.tracker, "load_state_dict"):
                raise RuntimeError(
                    f"{self.owner}: the checkpoint holds a SaturationTracker state, but this SaturationTracker "
                    "has no load_state_dict() to restore it"
                )
            self.tracker.load_state_dict(tracker_state)
        self.tracker.epoch = int(state["epoch"])
