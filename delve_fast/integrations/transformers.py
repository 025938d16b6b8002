"""Hugging Face ``transformers.Trainer`` callback that tracks layer saturation.

>>> from delve_fast.integrations.transformers import SaturationCallback  # doctest: +SKIP
>>> trainer = transformers.Trainer(model=model, args=args, train_dataset=train)  # doctest: +SKIP
>>> SaturationCallback("runs/sat", save_to="csv").attach(trainer)  # doctest: +SKIP
>>> trainer.train()  # doctest: +SKIP

Needs ``transformers`` and ``accelerate`` (``pip install 'delve_fast[hf]'``).
"""

from __future__ import annotations

import warnings
from typing import Any

from delve_fast.integrations._common import TrackedRun, require

__all__ = ["SaturationCallback"]

_PURPOSE = "delve_fast.integrations.transformers"
_transformers = require("transformers", "hf", _PURPOSE)


class SaturationCallback(_transformers.TrainerCallback):
    """Track saturation of the Trainer's model and report it through ``Trainer.log``.

    At ``on_train_begin`` the callback builds a
    :class:`~delve_fast.SaturationTracker` on the model (or on ``modules``, if
    given). Training batches are recorded in ``train`` mode and evaluation
    batches in ``eval`` mode. After every ``every_n_epochs`` epochs (or
    ``every_n_steps`` optimizer steps) the callback calls
    ``add_saturations()``: the tracker's writers write one row, and the scalar
    values go to ``trainer.log``, hence to ``trainer.state.log_history`` and
    every ``report_to`` integration (TensorBoard, Weights & Biases, ...), from
    the main process only. When the Trainer evaluates at the end of that epoch
    or step, the row is written after the evaluation (``on_evaluate``), so it
    holds both modes. At ``on_train_end`` the hooks are removed and the
    writers closed.

    ``TrainerCallback`` hooks are not given the Trainer, so pass it with
    :meth:`attach` (which also adds the callback to it). Without it the values
    still go to the tracker's writers and ``state.log_history``, but not to
    the ``report_to`` integrations.

    Parameters
    ----------
    savefile : str
        As for :class:`~delve_fast.SaturationTracker`: the run's folder and file stem.
    save_to : str, AbstractWriter or list of them, default "csv"
        The tracker's writers (``csv``, ``npy``, ``plot``, ``tb``, ``wandb``, ...).
    every_n_epochs : int or None, default 1
        Write a row after every ``every_n_epochs`` epochs.
    every_n_steps : int, optional
        Write a row after every ``every_n_steps`` optimizer steps instead
        (then pass ``every_n_epochs=None``).
    log_to_trainer : bool, default True
        Also report the values through ``trainer.log``.
    flush_at_end : bool, default True
        At the end of training, write a last row with what was recorded
        since the previous one, if anything.
    trainer : transformers.Trainer, optional
        The Trainer to report through; the same as calling :meth:`attach`
        later, except that the callback is not added to it.
    **tracker_kwargs
        Every other :class:`~delve_fast.SaturationTracker` argument.
        ``modules`` defaults to the Trainer's model and ``device`` to its device.

    Attributes
    ----------
    tracker : SaturationTracker or None
        The tracker while training runs; None before and after.
    last_values : dict
        The scalar values of the last row written.
    """

    def __init__(
        self,
        savefile: str,
        save_to: Any = "csv",
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        log_to_trainer: bool = True,
        flush_at_end: bool = True,
        trainer: Any = None,
        **tracker_kwargs: Any,
    ) -> None:
        super().__init__()
        self.savefile = savefile
        self.log_to_trainer = bool(log_to_trainer)
        self.trainer = trainer
        self.last_values: dict[str, float] = {}
        self._run = TrackedRun(
            savefile, save_to, every_n_epochs, every_n_steps, flush_at_end, tracker_kwargs, type(self).__name__
        )
        self._warned_unattached = False

    @property
    def tracker(self) -> Any:
        return self._run.tracker

    def attach(self, trainer: Any) -> SaturationCallback:
        """Report through ``trainer`` and add this callback to it (once).

        Parameters
        ----------
        trainer : transformers.Trainer

        Returns
        -------
        SaturationCallback
            ``self``, so that ``cb = SaturationCallback(...).attach(trainer)`` reads in one line.
        """
        if not hasattr(trainer, "callback_handler") or not hasattr(trainer, "log"):
            raise TypeError(f"attach() needs a transformers.Trainer, got {type(trainer).__name__}")
        self.trainer = trainer
        if not any(cb is self for cb in trainer.callback_handler.callbacks):
            trainer.add_callback(self)
        return self

    # ---------------------------------------------------------------- writing
    def _write_row(self, args: Any, state: Any) -> None:
        values = self._run.flush()
        self.last_values = values
        if not values or not self.log_to_trainer or not state.is_world_process_zero:
            return
        if self.trainer is not None:
            self.trainer.log(dict(values))  # log() adds "epoch"; give it a copy
            return
        if not self._warned_unattached:
            self._warned_unattached = True
            warnings.warn(
                "SaturationCallback is not attached to a Trainer: its values reach state.log_history but not the "
                "report_to integrations; use SaturationCallback(...).attach(trainer)",
                RuntimeWarning,
                stacklevel=3,
            )
        state.log_history.append({**values, "epoch": state.epoch, "step": state.global_step})

    # ------------------------------------------------------------------ hooks
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is None and "modules" not in self._run.tracker_kwargs:
            raise ValueError("SaturationCallback got no model from the Trainer; pass modules=... explicitly")
        self._run.attach(model)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # The Trainer's flow callback runs first and has already decided whether to evaluate now.
        if self._run.step_ended(state.global_step) and not control.should_evaluate:
            self._write_row(args, state)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._run.epoch_ended() and not control.should_evaluate:
            self._write_row(args, state)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._run.due and self._run.tracker is not None:
            self._write_row(args, state)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._run.due or (self._run.flush_at_end and self._run.has_unwritten_data()):
            self._write_row(args, state)
        self._run.detach()

    # ------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Schedule counters and ``tracker.state_dict()``, for saving alongside a checkpoint."""
        return self._run.state_dict()

    def load_state_dict(self, state_dict: Any) -> None:
        """Restore :meth:`state_dict`'s output; the tracker built at ``on_train_begin`` continues from it."""
        self._run.load_state_dict(state_dict)
