"""PyTorch Lightning callback that tracks layer saturation during ``Trainer.fit``.

>>> from delve_fast.integrations.lightning import SaturationCallback  # doctest: +SKIP
>>> trainer = lightning.pytorch.Trainer(callbacks=[SaturationCallback("runs/sat", save_to="csv")])  # doctest: +SKIP

Needs ``lightning`` (``pip install 'delve_fast[lightning]'``); the standalone
``pytorch_lightning`` package is used when ``lightning`` is absent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from delve_fast.integrations._common import TrackedRun, require

__all__ = ["SaturationCallback"]

_PURPOSE = "delve_fast.integrations.lightning"
try:
    import lightning.pytorch as _pl
except ImportError:
    try:
        import pytorch_lightning as _pl
    except ImportError:
        _pl = require("lightning.pytorch", "lightning", _PURPOSE)  # raises, naming the extra


class SaturationCallback(_pl.Callback):
    """Track saturation of the LightningModule's layers and log it through the Trainer's loggers.

    At fit start the callback builds a :class:`~delve_fast.SaturationTracker`
    on the LightningModule (or on ``modules``, if given) and hooks its layers.
    Training batches are recorded in ``train`` mode and validation batches in
    ``eval`` mode; the sanity-check validation that Lightning runs before
    training is not recorded. After every ``every_n_epochs`` training epochs
    (or ``every_n_steps`` optimizer steps) the callback calls
    ``add_saturations()``: the tracker's own writers write one row, and every
    scalar value goes to each of ``trainer.loggers`` at ``trainer.global_step``
    (from global rank zero only). The row of an epoch holds the validation run
    of that epoch too, because Lightning validates before the training epoch
    ends. At the end of fit the hooks are removed and the writers closed.

    The callback's state is saved in checkpoints and restored by
    ``fit(ckpt_path=...)``: the resumed run appends its rows to the same
    files. The covariance gathered since the last row is kept too when the
    tracker provides ``state_dict()``; otherwise a warning says it is lost.

    Parameters
    ----------
    savefile : str
        As for :class:`~delve_fast.SaturationTracker`: the run's folder and file stem.
    save_to : str, AbstractWriter or list of them, default "csv"
        The tracker's writers (``csv``, ``npy``, ``plot``, ``tb``, ``wandb``, ...).
    every_n_epochs : int or None, default 1
        Write a row after every ``every_n_epochs`` training epochs.
    every_n_steps : int, optional
        Write a row after every ``every_n_steps`` optimizer steps instead
        (then pass ``every_n_epochs=None``). A row due after a step is
        written just before the next training batch, so that a validation run
        at that step is part of it.
    log_to_trainer : bool, default True
        Also log the values through ``trainer.loggers``.
    flush_at_end : bool, default True
        At the end of training, write a last row with what was recorded
        since the previous one, if anything.
    **tracker_kwargs
        Every other :class:`~delve_fast.SaturationTracker` argument
        (``stats``, ``modules``, ``layer_filter``, ``max_samples``, ...).
        ``modules`` defaults to the LightningModule and ``device`` to its device.

    Attributes
    ----------
    tracker : SaturationTracker or None
        The tracker while ``fit`` runs; None before and after.
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
        **tracker_kwargs: Any,
    ) -> None:
        super().__init__()
        self.savefile = savefile
        self.log_to_trainer = bool(log_to_trainer)
        self.last_values: dict[str, float] = {}
        self._run = TrackedRun(
            savefile, save_to, every_n_epochs, every_n_steps, flush_at_end, tracker_kwargs, type(self).__name__
        )
        self._paused_for_sanity_check = False

    @property
    def state_key(self) -> str:
        # Two callbacks writing to different files keep separate checkpoint entries.
        return self._generate_state_key(savefile=self.savefile)

    @property
    def tracker(self) -> Any:
        return self._run.tracker

    # ---------------------------------------------------------------- writing
    def _write_row(self, trainer: Any) -> None:
        values = self._run.flush()
        self.last_values = values
        if not values or not self.log_to_trainer or not trainer.is_global_zero:
            return
        metrics = dict(values)
        metrics["epoch"] = trainer.current_epoch  # Lightning adds the epoch to its own metrics too
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._run.attach(pl_module)

    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None:
        tracker = self._run.tracker
        if tracker is not None and tracker.is_recording():
            tracker.stop()
            self._paused_for_sanity_check = True

    def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None:
        if self._paused_for_sanity_check and self._run.tracker is not None:
            self._run.tracker.resume()
        self._paused_for_sanity_check = False

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._run.due:  # due after the previous step; a validation run since then is included
            self._write_row(trainer)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._run.step_ended(trainer.global_step)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        # Lightning has already run this epoch's validation: the row holds both modes.
        if self._run.epoch_ended():
            self._write_row(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._run.due or (self._run.flush_at_end and self._run.has_unwritten_data()):
            self._write_row(trainer)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._run.detach()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._run.detach()

    # ------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Schedule counters and ``tracker.state_dict()``, stored in Lightning checkpoints."""
        return self._run.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a checkpoint's state; the tracker built at fit start continues from it."""
        self._run.load_state_dict(state_dict)
