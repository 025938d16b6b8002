"""The writer interface and the writer that fans out to several writers."""

from __future__ import annotations

import logging
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["AbstractWriter", "CompositWriter", "is_scalar_value", "is_array_name", "COVARIANCE_TAG", "SPECTRUM_TAG"]

log = logging.getLogger("delve_fast")

#: Values whose name contains this are matrices; only the npy writer keeps them.
COVARIANCE_TAG = "covariance-matrix"

#: Values whose name contains this are eigenvalue spectra (arrays, even of length 1): npy and plot writers only.
SPECTRUM_TAG = "eigenvalue-spectrum"


def is_array_name(name: str) -> bool:
    """Whether the value named ``name`` is one of the tracker's array stats, which scalar writers skip."""
    return COVARIANCE_TAG in name or SPECTRUM_TAG in name


def is_scalar_value(value: Any) -> bool:
    """Whether ``value`` is a single number (Python, NumPy 0-d or size-1 array)."""
    if isinstance(value, (bool, int, float, np.integer, np.floating)):
        return True
    if isinstance(value, np.ndarray):
        return value.size == 1
    try:
        import torch

        if isinstance(value, torch.Tensor):
            return value.numel() == 1
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return False


class AbstractWriter(ABC):
    """Base class of every save strategy.

    A writer receives named values from the tracker and from the user's
    ``tracker.add_scalar(...)`` calls, and persists them when :meth:`save` is
    called (once per :meth:`~delve_fast.SaturationTracker.add_saturations`).
    Subclass it to implement your own strategy and pass an instance as
    ``save_to``.

    The built-in writers share one rule for epochs: every :meth:`save` closes
    exactly one epoch, numbered from ``initial_epoch``; that number is the CSV
    row, the npy file number, the plot number and the TensorBoard step. A name
    added several times within one epoch keeps its **last** value.
    """

    #: Where :class:`CompositWriter` saves this writer within one epoch: lower
    #: first. The npy writer (-1) commits before the others and the CSV
    #: writers (1) last, so the CSV never holds an epoch the npy folder lacks.
    commit_order: int = 0

    def state_dict(self) -> dict[str, Any]:
        """What this writer holds in memory, for :meth:`SaturationTracker.state_dict`.

        The default is an empty dict: a writer that keeps nothing between
        :meth:`save` calls needs nothing to continue. Override it together
        with :meth:`load_state_dict` when a writer accumulates state.
        """
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises
        ------
        NotImplementedError
            If ``state`` is not empty: this writer does not say how to restore it.
        """
        if state:
            raise NotImplementedError(
                f"{type(self).__name__} returned a non-empty state_dict but does not implement load_state_dict"
            )

    def _check_savestate_ok(self, savepath: str) -> bool:
        """Return whether a saved state exists at ``savepath``; warn if it does not.

        Parameters
        ----------
        savepath : str
            File that a resumed run expects to find.

        Returns
        -------
        bool
        """
        if os.path.exists(savepath):
            return True
        warnings.warn(
            f"{self.__class__.__name__} cannot resume: no saved state at {savepath!r}; starting empty",
            RuntimeWarning,
            stacklevel=3,
        )
        return False

    @abstractmethod
    def resume_from_saved_state(self, initial_epoch: int) -> None:
        """Load what an earlier run saved, to continue from ``initial_epoch``.

        Parameters
        ----------
        initial_epoch : int
            Epoch the resumed run starts at.
        """
        raise NotImplementedError

    @abstractmethod
    def add_scalar(self, name: str, value: Any, **kwargs: Any) -> None:
        """Record one named value.

        Parameters
        ----------
        name : str
            Column / tag name.
        value : Any
            Usually a number; the npy writer also takes arrays.
        **kwargs
            Writer-specific options such as ``global_step``.
        """
        raise NotImplementedError

    @abstractmethod
    def add_scalars(self, prefix: str, value_dict: Mapping[str, Any], **kwargs: Any) -> None:
        """Record several named values at once.

        Parameters
        ----------
        prefix : str
            Name prefix (the tracker passes ``''``).
        value_dict : Mapping[str, Any]
            Names to values.
        **kwargs
            ``global_step`` and ``sample_value_dict`` (per-sample data such as
            the ``embed`` coordinates) may be given.
        """
        raise NotImplementedError

    @abstractmethod
    def save(self) -> None:
        """Persist everything recorded so far."""

    @abstractmethod
    def close(self) -> None:
        """Release files and other resources."""

    def __enter__(self) -> AbstractWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CompositWriter(AbstractWriter):
    """Forward every call to several writers (the spelling is delve's).

    Parameters
    ----------
    writers : iterable of AbstractWriter
        Writers called in order.
    """

    def __init__(self, writers: Iterable[AbstractWriter]) -> None:
        super().__init__()
        self.writers: list[AbstractWriter] = list(writers)
        for w in self.writers:
            if not isinstance(w, AbstractWriter):
                raise TypeError(f"CompositWriter needs AbstractWriter instances, got {type(w).__name__}")

    def resume_from_saved_state(self, initial_epoch: int) -> None:
        """Resume every writer; a writer that cannot resume only warns."""
        for w in self.writers:
            try:
                w.resume_from_saved_state(initial_epoch)
            except NotImplementedError:
                warnings.warn(
                    f"{type(w).__name__} cannot resume from a saved state; its earlier output may be overwritten",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def state_dict(self) -> dict[str, Any]:
        """Every writer's state, in order, with its type name (checked on load)."""
        return {"writers": [{"type": type(w).__name__, "state": w.state_dict()} for w in self.writers]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore every writer's state.

        Raises
        ------
        ValueError
            If the saved writers are not the same types in the same order.
        """
        saved = list(state.get("writers", []))
        saved_types = [entry.get("type") for entry in saved]
        current = [type(w).__name__ for w in self.writers]
        if saved_types != current:
            raise ValueError(f"the state_dict was saved with writers {saved_types}, but this tracker has {current}")
        for w, entry in zip(self.writers, saved, strict=True):
            w.load_state_dict(entry.get("state", {}))

    def add_scalar(self, name: str, value: Any, **kwargs: Any) -> None:
        """Forward to every writer."""
        for w in self.writers:
            w.add_scalar(name, value, **kwargs)

    def add_scalars(self, prefix: str, value_dict: Mapping[str, Any], **kwargs: Any) -> None:
        """Forward to every writer."""
        for w in self.writers:
            w.add_scalars(prefix, value_dict, **kwargs)

    def save(self) -> None:
        """Save every writer, in :attr:`~AbstractWriter.commit_order` (the CSV last)."""
        for w in sorted(self.writers, key=lambda writer: getattr(writer, "commit_order", 0)):
            w.save()

    def close(self) -> None:
        """Close every writer."""
        for w in self.writers:
            w.close()

    def __getattr__(self, name: str) -> Any:
        # Writer-specific methods (for example add_sample_scalar) reach the
        # first writer that has them.
        if name.startswith("__") or name == "writers":
            raise AttributeError(name)
        for w in self.__dict__.get("writers", []):
            if hasattr(w, name):
                return getattr(w, name)
        raise AttributeError(f"none of the writers {[type(w).__name__ for w in self.writers]} has {name!r}")
