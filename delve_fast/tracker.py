"""SaturationTracker: delve's documented tracker on delve_fast's ops.

The tracker owns the lifecycle: it hooks the layers, keeps one covariance
state per layer and mode, and hands the statistics to the writers. What it
delegates lives in modules of its own: :mod:`delve_fast.layers` (which
layers, their names), :mod:`delve_fast.views` (an output as an ``(N, C, S)``
batch), :mod:`delve_fast.stats` (the statistics, one table) and
:mod:`delve_fast.validation` (argument checks). The forward hook never
synchronises a GPU, calls ``.item()`` or copies the activation to the host.
"""

from __future__ import annotations

import logging
import os
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn

from delve_fast import distributed as D
from delve_fast import layers as L
from delve_fast import masking, ops, views
from delve_fast import stats as S
from delve_fast import validation as V
from delve_fast._loader import check_backend
from delve_fast._warn import warn_user
from delve_fast.covariance import DEFAULT_DEVICE, DEFAULT_MAX_SAVED_SAMPLES, TorchCovarianceMatrix, resolve_device
from delve_fast.hooks import LayerHook, in_backward
from delve_fast.recorder import LayerRecorder
from delve_fast.safe_stats import compute_layers_safely
from delve_fast.views import CONV_METHODS, INTERPOLATION_MODES, TIMESERIES_METHODS
from delve_fast.writers import AbstractWriter, CompositWriter

__all__ = ["SaturationTracker", "CheckLayerSat", "CONV_METHODS", "TIMESERIES_METHODS", "INTERPOLATION_MODES"]

log = logging.getLogger("delve_fast")

#: Default ``max_state_bytes``: 1 GiB for one layer's state in one mode, i.e.
#: up to 11585 features. Every channelwise conv and ordinary Linear layer fits
#: far below it (4096 features = 128 MiB); a ``flatten`` of a conv map, whose
#: width is C*H*W, is what crosses it, and its eigen-solve would take minutes.
DEFAULT_MAX_STATE_BYTES = 1 << 30


def _identity_filter(layers: dict[str, nn.Module]) -> dict[str, nn.Module]:
    return layers


class SaturationTracker:
    """Record layer saturation, intrinsic dimensionality and other statistics.

    Hooks every supported layer of ``modules``: delve's ``nn.Linear``,
    ``nn.Conv2d`` and ``nn.LSTM``, and also ``nn.Conv1d``/``nn.Conv3d``, the
    ``nn.ConvTranspose`` layers, ``nn.GRU``, ``nn.RNN`` and
    ``nn.MultiheadAttention`` (subclasses included; see ``layer_types`` and
    :meth:`register_layer_type`). Each forward pass folds the layer's
    output into a float64 covariance matrix, kept separately for ``train``
    and ``eval`` mode (from ``module.training``). The covariance accumulates
    over every recorded batch until :meth:`add_saturations`, which computes the
    statistics, hands them to the writers and (by default) starts afresh.

    Parameters
    ----------
    savefile : str
        Destination: a folder of that name is created; the CSV writer writes
        ``savefile + '.csv'``, the plot writer ``savefile + '_<stat>_<mode>_epoch_<k>.png'``.
    save_to : str, AbstractWriter or list of them
        Save strategies: ``csv``, ``npy``, ``print``, ``tb``/``tensorboard``,
        ``csvplotting``/``csvplot``/``plot``/``plotcsv``, or writer instances.
    modules : nn.Module or list of nn.Module
        The model (searched recursively) or the layers to track. Layers of a
        model are named by their ``_modules`` keys joined with ``-``; a layer
        given directly in a list is named ``Module-<i>-<TypeName>``.
    layer_filter : callable, optional
        Receives the ``{name: layer}`` dict and returns it without unwanted entries.
    writer_args : dict, optional
        Extra keyword arguments for writers created from a string key
        (``savepath`` is set to ``savefile``).
    log_interval : int, default 1
        Record every ``log_interval``-th forward pass of a layer (per layer and mode).
    max_samples : int, optional
        Stop updating a layer's covariance after this many batch rows (dim 0
        entries) in an epoch; the batch that crosses the limit is sliced.
    stats : str or list of str, default ['lsat']
        Any of ``lsat``, ``idim``, ``cov``, ``det``, ``trc``, ``dtrc``,
        ``embed``, and the delve_fast additions ``logdet``, ``erank``,
        ``rankme``, ``pr``, ``srank``, ``alpha``, ``spectrum`` and ``count``
        (see ``docs/statistics.md``). A ``_train`` or ``_eval`` suffix
        restricts a stat to one mode; a bare stat is recorded for both.
    layerwise_sat : bool, default True
        Write the per-layer statistics.
    reset_covariance : bool, default True
        Start a fresh covariance after each :meth:`add_saturations`.
    average_sat : bool, default False
        Also write ``average-train-sat`` / ``average-eval-sat`` (mean over the layers).
    ignore_layer_names : list of str, default []
        Layer names not to track.
    include_conv : bool, default True
        Set to False to leave out every conv and transposed conv layer.
    conv_method : str, default 'channelwise'
        Conv output ``(N, C, H, W)`` as samples: ``channelwise`` (``N*H*W`` of ``C``),
        ``mean``, ``max``, ``median`` (global pooling, ``N`` of ``C``) or
        ``flatten`` (``N`` of ``C*H*W``). See :mod:`delve_fast.views`.
    timeseries_method : str, default 'last_timestep'
        LSTM outputs: ``last_timestep`` (``B`` samples) or ``timestepwise``
        (every timestep of every sequence, ``B*T`` samples).
    sat_threshold : float, default 0.99
        Share of variance that defines the intrinsic dimensionality, in (0, 1].
    nosave : bool, default False
        Compute statistics but write no files at all.
    verbose : bool, default False
        Print every layer's statistics at each :meth:`add_saturations`.
    device : str or torch.device, default 'cuda:0'
        Where the states live; the CPU (with a warning) when CUDA is absent.
    initial_epoch : int, default 0
        Non-zero resumes: the writers reload their saved state.
    interpolation_strategy : str, optional
        :func:`torch.nn.functional.interpolate` ``mode`` that shrinks larger conv maps.
    interpolation_downsampling : int, default 32
        Target resolution of that interpolation.
    backend : str, optional
        Keyword only. ``auto``, ``cpp`` or ``torch`` (see :func:`delve_fast.backend_info`).
    max_saved_samples : int, default 4096
        Keyword only. Bound on the samples kept per layer and mode for ``embed``.
    idim_rule : {"delve", "gap"}, default "delve"
        Keyword only. ``"delve"`` reports exactly delve 0.1.50's numbers
        (which can be 0); ``"gap"`` is at least 1 and adds one direction when
        the explained share falls short of the threshold by more than 0.02,
        as delve's PCA layers do. See :func:`delve_fast.stats.intrinsic_dimensionality`.
    precision : {"double", "mixed"}, default "double"
        Keyword only. ``"mixed"``: float32 tile products on nearly centred data,
        accumulated in float64; faster, error bound in ``docs/precision.md``.
    layer_types : "all", "delve" or list of types, default "all"
        Keyword only. Which registered layer types to track: all of them,
        delve's three (``nn.Linear``, ``nn.Conv2d``, ``nn.LSTM``), or the
        listed types (and their subclasses). See ``docs/layers.md``.
    distributed : None, bool or torch.distributed.ProcessGroup, default None
        Keyword only. ``None``: when :mod:`torch.distributed` is initialised
        (with more than one rank) the ranks merge their states at every
        :meth:`add_saturations` and report the statistics of the whole job's
        data; only rank 0 creates folders and writes files, and ``add_scalar``
        on other ranks is ignored. Every rank must then create the tracker and
        call :meth:`add_saturations`. ``True``: the default group (must be
        initialised); ``False``: every rank works alone (delve's behaviour); or
        the ``ProcessGroup`` to use. See ``docs/distributed.md``.
    max_state_bytes : int or None, default 1 GiB
        Keyword only. Largest covariance state of one layer in one mode
        (``8 * (C*C + C + 2)`` bytes for ``C`` features). A layer whose state
        would be larger raises :class:`delve_fast.StateTooLargeError`
        at its first recorded forward pass, before anything is allocated,
        naming the layer, its width, the bytes and the remedies. ``None``
        disables the check. :meth:`state_bytes` reports what is held.

    Notes
    -----
    A batch holding a NaN or an Inf is left out of that layer's state (the
    state keeps every bit) and counted; :meth:`add_saturations` warns once per
    affected layer with the count, and reports NaN cells for a layer with no
    valid data or whose statistics cannot be computed, while the other layers
    and the user's scalars are written as usual. Forward hooks may run in
    several threads at once (``nn.DataParallel``): updates of one state are
    serialised.

    Examples
    --------
    >>> with SaturationTracker("run/exp", save_to="csv", modules=model, device="cpu") as tracker:  # doctest: +SKIP
    ...     for epoch in range(3):
    ...         train_one_epoch(model)
    ...         tracker.add_saturations()
    """

    def __init__(
        self,
        savefile: str,
        save_to: str | AbstractWriter | Sequence[str | AbstractWriter],
        modules: nn.Module | Sequence[nn.Module],
        layer_filter: Callable[[dict[str, nn.Module]], dict[str, nn.Module]] = _identity_filter,
        writer_args: dict[str, Any] | None = None,
        log_interval: int = 1,
        max_samples: int | None = None,
        stats: str | Sequence[str] = ["lsat"],  # noqa: B006 - delve's documented default
        layerwise_sat: bool = True,
        reset_covariance: bool = True,
        average_sat: bool = False,
        ignore_layer_names: Sequence[str] = [],  # noqa: B006 - delve's documented default
        include_conv: bool = True,
        conv_method: str = "channelwise",
        timeseries_method: str = "last_timestep",
        sat_threshold: float = 0.99,
        nosave: bool = False,
        verbose: bool = False,
        device: str | torch.device = DEFAULT_DEVICE,
        initial_epoch: int = 0,
        interpolation_strategy: str | None = None,
        interpolation_downsampling: int = 32,
        *,
        backend: str | None = None,
        max_saved_samples: int = DEFAULT_MAX_SAVED_SAMPLES,
        idim_rule: str = "delve",
        precision: str = "double",
        layer_types: str | Sequence[type[nn.Module]] = "all",
        distributed: bool | None | Any = None,
        max_state_bytes: int | None = DEFAULT_MAX_STATE_BYTES,
    ) -> None:
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._closed = False
        settings = V.tracker_settings(
            savefile=savefile, log_interval=log_interval, max_samples=max_samples, conv_method=conv_method,
            timeseries_method=timeseries_method, sat_threshold=sat_threshold, initial_epoch=initial_epoch,
            interpolation_strategy=interpolation_strategy, interpolation_downsampling=interpolation_downsampling,
            ignore_layer_names=ignore_layer_names, max_saved_samples=max_saved_samples, idim_rule=idim_rule,
            stats=stats,
        )  # fmt: skip
        self.__dict__.update(settings)
        writer_args = V.check_writer_args(writer_args)
        if not callable(layer_filter):
            raise TypeError(f"layer_filter must be callable, got {type(layer_filter).__name__}")
        self.backend = None if backend is None else check_backend(backend)
        self.precision = ops.check_precision(precision)
        if max_state_bytes is not None and (
            isinstance(max_state_bytes, bool) or not isinstance(max_state_bytes, int) or max_state_bytes < 1
        ):
            raise ValueError(f"max_state_bytes must be a positive int (bytes) or None, got {max_state_bytes!r}")
        self.max_state_bytes = max_state_bytes
        self.nosave, self.verbose, self.include_conv = bool(nosave), bool(verbose), bool(include_conv)
        self.layerwise_sat, self.reset_covariance = bool(layerwise_sat), bool(reset_covariance)
        self.average_sat = bool(average_sat)
        self.device = resolve_device(device)
        # The process group whose ranks merge their states (None: this process alone); only its rank 0 writes.
        self._group = D.resolve_group(distributed)
        self._view_options = views.ViewOptions(
            self.conv_method, self.timeseries_method, self.interpolation_strategy, self.interpolation_downsampling
        )

        self._layer_types = L.resolve_layer_types(layer_types)
        self._token_mask: torch.Tensor | None = None
        self._mask_usage = masking.MaskUsage()
        found = L.find_layers(modules, include_conv=self.include_conv, types=self._layer_types)
        self.layers: dict[str, nn.Module] = L.select_layers(
            found, layer_filter, self.ignore_layer_names, self.include_conv, self._layer_types
        )
        if not self.layers:
            warnings.warn(
                f"SaturationTracker found no layer to track (supported: {L.supported_types_text()})",
                RuntimeWarning,
                stacklevel=2,
            )

        self.writer: AbstractWriter = CompositWriter([])
        self._recorder = LayerRecorder(self._new_state, self.log_interval, self.max_samples, self.max_state_bytes)
        # delve's attribute names, shared with the recorder (user code reads them).
        self.logs, self.seen_samples = self._recorder.logs, self._recorder.seen_samples
        self.record = True
        self.epoch = self.initial_epoch
        # Whether values reached the writers since the last closed epoch: delve's scripts call
        # save() right after add_saturations(), which must not close a second, empty epoch.
        self._epoch_dirty = False
        # What the open epoch holds, so that save() puts add_scalar values in the row delve puts them in:
        # scalar names passed through since the epoch opened, whether add_saturations(save=False) added
        # values, and whether save() was called while the epoch held scalars only (see save()).
        self._open_names: set[str] = set()
        self._saturations_open = False
        self._save_requested = False
        self._warned_few_samples: set[tuple[str, str]] = set()  # (mode, layer) told n <= C, once each
        try:
            # Only the main rank (every rank without torch.distributed) creates folders and files.
            if not self.nosave and D.is_main_rank(self._group):
                writer_args["savepath"] = self.savefile
                os.makedirs(self.savefile, exist_ok=True)
                _claim_savefile(self)
                self.writer = V.make_writer(save_to, writer_args)
                V.warn_if_covariance_not_saveable(self.writer, self._mode_stats)
            if self.initial_epoch != 0:
                self.writer.resume_from_saved_state(self.initial_epoch)
            # Hooks last: a constructor that fails must leave the model as it found it.
            for name, layer in self.layers.items():
                view = L.layer_view(layer, self._layer_types)
                self._hooks.append(layer.register_forward_hook(LayerHook(layer, self._make_hook(name, view))))
                log.info("added layer %s", name)
        except BaseException:
            self.close()
            raise

    def _new_state(self, mode: str) -> TorchCovarianceMatrix:
        return TorchCovarianceMatrix(
            device=self.device,
            save_data="embed" in self._mode_stats[mode],
            backend=self.backend,
            precision=self.precision,
            max_saved_samples=self.max_saved_samples,
        )

    def _make_hook(self, name: str, view_fn: views.ViewFn) -> Callable[..., None]:
        recorder = self._recorder

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not self.record or in_backward():  # a checkpoint's recomputation: recorded already
                return
            mode = "train" if module.training else "eval"
            record, room = recorder.admit(mode, name)
            if not record:
                return
            batch = view_fn(module, output, self._view_options, room, recorder.flatten_order(mode, name))
            if batch is not None:
                weight = masking.mask_weight(batch.view, self._token_mask)
                if self._token_mask is not None:
                    self._mask_usage.note(weight)
                recorder.fold(mode, name, batch, weight)

        # Under torch.compile the hook runs eagerly: tracing its Python
        # bookkeeping would only force a recompile on every counter change.
        return torch.compiler.disable(hook)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the tracker does not define: pass them to the
        # writer (add_scalar, add_scalars, ...), as delve does.
        if name.startswith("_") or "writer" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")
        if name.startswith("add_") and self.__dict__.get("nosave"):

            def _noop(*args: Any, **kwargs: Any) -> None:
                log.info("nosave=True, not logging %s %s", args, kwargs)

            return _noop
        try:
            attr = getattr(self.__dict__["writer"], name)
        except AttributeError:
            raise AttributeError(f"neither {type(self).__name__} nor its writer has attribute {name!r}") from None
        if not name.startswith("add_") or not callable(attr):
            return attr

        def _add(*args: Any, **kwargs: Any) -> Any:
            names = _passed_names(name, args, kwargs)
            if self._save_requested and not self._open_names.isdisjoint(names):
                # delve appends every value to its column: after save(), a name added again
                # starts the next row (scalar-only logging gets one row per save()).
                self._close_epoch()
            self._open_names.update(names)
            self._epoch_dirty = True  # a later save() has an epoch to close
            return attr(*args, **kwargs)

        return _add

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(layers={list(self.layers)}, stats={self.stats}, state_bytes={self.state_bytes()})"
        )

    def state_bytes(self) -> int:
        """Bytes held now by every layer's covariance states (both modes) and stored ``embed`` samples.

        A state of ``C`` features is ``8 * (C*C + C + 2)`` bytes; states are
        created at a layer's first recorded forward pass and freed by the
        reset after :meth:`add_saturations`.
        """
        return self._recorder.state_bytes()

    def __enter__(self) -> SaturationTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def is_recording(self) -> bool:
        """Whether forward passes are currently being recorded."""
        return self.record

    def stop(self) -> None:
        """Pause recording: forward passes leave the covariance untouched."""
        self.record = False

    def resume(self) -> None:
        """Resume recording after :meth:`stop`."""
        self.record = True

    # ----------------------------------------------------- layer types, masks
    @staticmethod
    def register_layer_type(
        module_type: type[nn.Module],
        to_view: str | Callable[[nn.Module, Any], torch.Tensor | None],
        *,
        is_conv: bool = False,
        whole: bool | None = None,
    ) -> None:
        """Track ``module_type`` (and subclasses) in trackers built from now on.

        Parameters
        ----------
        module_type : type
            An ``nn.Module`` subclass.
        to_view : callable or str
            ``to_view(module, output)`` returns the output as an ``(N, C, S)``
            tensor (``N * S`` samples of ``C`` features; ``(N, C)`` also
            works) or None to skip; or the name of a built-in view
            (``linear``, ``conv``, ``lstm``, ``attention``).
        is_conv : bool, default False
            Leave the type out when ``include_conv=False``.
        whole : bool, optional
            Track the module itself even if it has children (default for a
            function) instead of searching its children.

        Examples
        --------
        >>> class Mixer(nn.Module):  # doctest: +SKIP
        ...     def forward(self, x):  # x: (B, T, E)
        ...         return self.mlp(x)
        >>> SaturationTracker.register_layer_type(Mixer, lambda m, out: out.transpose(1, 2))  # doctest: +SKIP
        """
        L.register_layer_type(module_type, to_view, is_conv=is_conv, whole=whole)

    def set_token_mask(self, mask: torch.Tensor | None) -> None:
        """Record only the tokens ``mask`` keeps in the following forward passes (None: all).

        Parameters
        ----------
        mask : torch.Tensor or None
            ``(B, T)``, True or non-zero = a real token (a Hugging Face
            ``attention_mask``). It applies to every layer whose output has
            one sample per token (``S == T``: Linear or attention outputs on
            tokens, recurrent outputs with ``timestepwise``); other layers are
            recorded as usual. No host synchronisation (see :mod:`delve_fast.masking`).
        """
        mask = None if mask is None else masking.check_token_mask(mask)
        self._mask_usage.start(mask)
        self._token_mask = mask

    @contextmanager
    def token_mask(self, mask: torch.Tensor) -> Iterator[SaturationTracker]:
        """Context manager form of :meth:`set_token_mask`; the mask is lifted on exit.

        Examples
        --------
        >>> with tracker.token_mask(batch["attention_mask"]):  # doctest: +SKIP
        ...     model(batch["input_ids"], attention_mask=batch["attention_mask"])
        """
        previous = self._token_mask
        self.set_token_mask(mask)
        try:
            yield self
        finally:
            self._mask_usage.start(previous)
            self._token_mask = previous

    # delve's layer discovery methods, kept for code that calls them.
    def get_layers_recursive(self, modules: nn.Module | Sequence[nn.Module]) -> dict[str, nn.Module]:
        """The tracked layers of ``modules`` with delve's names (as the constructor finds them)."""
        return L.find_layers(modules, include_conv=self.include_conv, types=self._layer_types)

    def get_layer_from_submodule(
        self, submodule: nn.Module, layers: dict[str, nn.Module], name_prefix: str = ""
    ) -> dict[str, nn.Module]:
        """Add the tracked layers under ``submodule`` to ``layers``, names starting with ``name_prefix``."""
        return L.collect_layers(submodule, name_prefix, layers, None, self.include_conv, self._layer_types)

    def register_forward_hooks(self, layer: nn.Module, stats: Sequence[str] | None = None) -> None:
        """Start tracking ``layer`` too (named ``Module-<i>-<TypeName>``); a tracked layer is left as is.

        ``stats`` is accepted for delve's signature; the tracker's ``stats`` apply.
        """
        if any(layer is known for known in self.layers.values()):
            return
        name = f"Module-{len(self.layers)}-{type(layer).__name__}"
        self.layers[name] = layer
        hook = LayerHook(layer, self._make_hook(name, L.layer_view(layer, self._layer_types)))
        self._hooks.append(layer.register_forward_hook(hook))

    def save(self) -> None:
        """Close the epoch if it holds saturation values; keep scalars for the next row.

        :meth:`add_saturations` already closes its epoch, so a ``save()`` right
        after it does nothing, as in delve (whose ``save()`` only rewrites the
        files). After ``add_saturations(save=False)`` it closes that epoch:
        every writer persists it and :attr:`epoch` moves on.

        When the open epoch holds only ``add_scalar`` values, ``save()`` does
        not close it: as in delve, the next :meth:`add_saturations` writes its
        values into the same row as those scalars. If instead a scalar name
        that the epoch already holds is added again, the epoch is closed first
        (delve appends the value to the column's next row), so a run that only
        logs scalars gets one row per ``save()``; :meth:`close` writes the last
        such row.
        """
        if not self._epoch_dirty or self._warn_if_closed("save"):
            return
        if self._saturations_open:
            self._close_epoch()
        else:
            self._save_requested = True

    def _warn_if_closed(self, what: str) -> bool:
        """Warn and return True when the tracker is closed (its files are final: nothing more is written)."""
        if self._closed:
            warn_user(
                f"{what}() called after close(): the tracker's hooks are removed and its files are final, "
                "so nothing is computed or written; build a new SaturationTracker to continue"
            )
        return self._closed

    def _close_epoch(self) -> None:
        """Every writer persists the open epoch (even an empty one) and :attr:`epoch` moves on."""
        self.writer.save()
        self.epoch += 1
        self._epoch_dirty = False
        self._open_names = set()
        self._saturations_open = False
        self._save_requested = False

    # -------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run mid-epoch in another process.

        Every layer's covariance state, the recording counters, the epoch and
        the writers' in-memory state (for the CSV writer: every row, so the
        CSV written after a restore is the one an uninterrupted run writes).
        The dict holds plain values and tensor copies and can be passed to
        :func:`torch.save`. See :mod:`delve_fast.checkpoint`.

        Returns
        -------
        dict
        """
        from delve_fast.checkpoint import tracker_state_dict

        return tracker_state_dict(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, into a tracker built with the same arguments.

        Raises
        ------
        ValueError
            If the dict is not a tracker state of a known version, or its
            layers or writers differ from this tracker's (the message names
            the differences).
        """
        from delve_fast.checkpoint import load_tracker_state_dict

        load_tracker_state_dict(self, state_dict)

    def close(self) -> None:
        """Remove all hooks and close the writers. Safe to call twice."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        _release_savefile(self)
        if not self._closed:
            if self._save_requested and self._epoch_dirty:
                # Scalars the user save()d, waiting for a row that no add_saturations() will now close.
                self._close_epoch()
            self._closed = True
            self.writer.close()

    # -------------------------------------------------------- statistics
    def compute_saturations(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Compute every requested statistic from the covariances gathered so far.

        Eigenvalues of all layers and modes come from one batched call to
        :func:`delve_fast.ops.eigvalsh_desc`; eigenvectors are computed only
        for ``embed``. Each stat is an entry of :data:`delve_fast.stats.STATS`.
        Nothing is reset or written. Under ``distributed`` the ranks' states
        are merged first and the eigen solves are shared out
        (:func:`delve_fast.distributed.compute_merged`); every rank must call it.
        On one process it never raises from linear algebra: see
        :func:`delve_fast.safe_stats.compute_layers_safely` (NaN cells and a
        :class:`RuntimeWarning` per affected layer, skipped-batch counts).

        Returns
        -------
        values : dict
            Column name (``<mode>-<stat name>_<layer>``) to value; the
            ``cov`` entries are float64 matrices.
        samples : dict
            ``<mode>-embedded-sample_<layer>`` to ``(n, 2)`` arrays (``embed``).
        """
        if self._group is not None:
            return D.compute_merged(
                D.tracker_entries(self._recorder, list(self.layers)), self._mode_stats, self.threshold,
                self.idim_rule, average=self.average_sat, backend=self.backend, group=self._group, device=self.device,
            )  # fmt: skip
        entries = [
            (mode, name, state, partial(views.covariance_in_chw_order, order=self._recorder.flatten_order(mode, name)))
            for mode, name, state in self._recorder.pending(self.layers)
        ]
        # Never raises from linear algebra: a layer that cannot be computed gets NaN cells and a warning.
        return compute_layers_safely(
            entries, self._mode_stats, self.threshold, self.idim_rule, average=self.average_sat, backend=self.backend,
            warned=self._warned_few_samples,
        )  # fmt: skip

    def add_saturations(self, save: bool = True) -> dict[str, Any]:
        """Compute the statistics of this epoch, write them and reset.

        Every call with ``save=True`` closes exactly one epoch: one CSV row,
        one npy file number, one plot number and one TensorBoard step, all
        equal to :attr:`epoch`, even when no layer saw data (its cells are
        empty, NaN). Layers and modes that saw no data are skipped.
        A layer whose recorded batches all held NaN or Inf, or whose statistics
        cannot be computed, gets NaN cells and a warning; the covariances are
        still reset and the epoch advances.

        Parameters
        ----------
        save : bool, default True
            Close the epoch (:meth:`save`). With ``False`` the values are
            handed to the writers but the epoch stays open: a later call's
            values replace them (the last value of an epoch wins).

        Returns
        -------
        dict
            Every value written, by column name; empty, with a warning, after
            :meth:`close`.
        """
        if self._warn_if_closed("add_saturations"):
            return {}
        self._mask_usage.report()
        values, samples = self.compute_saturations()
        if self.average_sat:
            # delve writes both average columns every epoch: a mode without data gets a NaN cell.
            for mode in S.MODES:
                values.setdefault(f"average-{mode}-sat", float("nan"))
        if self.verbose and D.is_main_rank(self._group):
            for col, value in values.items():
                if not any(name in col for name in S.ARRAY_STATS):
                    print(f"{col}: {value}")
        layer_values = {k: v for k, v in values.items() if not k.startswith("average-")}
        if self.layerwise_sat and (layer_values or samples):
            # global_step is informative only: the writers number epochs themselves, by their save() calls.
            self.writer.add_scalars(
                prefix="", value_dict=layer_values, sample_value_dict=samples, global_step=self.epoch
            )
        for key, value in values.items():
            if key.startswith("average-"):
                self.writer.add_scalar(key, value, global_step=self.epoch)
        self._recorder.end_epoch(self.layers, self.reset_covariance)
        if save:
            self._close_epoch()
        else:
            self._epoch_dirty = True
            self._saturations_open = True
        return values


#: Open trackers by the real path of their savefile, to tell a second tracker on the same files.
_OPEN_SAVEFILES: weakref.WeakValueDictionary[str, SaturationTracker] = weakref.WeakValueDictionary()


def _claim_savefile(tracker: SaturationTracker) -> None:
    """Warn when another open tracker of this process writes ``tracker.savefile``; then claim it.

    Both would rewrite the same CSV (and npy files, plots) from their own rows,
    so each save would silently replace the other's data.
    """
    key = os.path.realpath(tracker.savefile)
    other = _OPEN_SAVEFILES.get(key)
    if other is not None and other is not tracker and not other._closed:
        warn_user(
            f"savefile {tracker.savefile!r} is already written by another open SaturationTracker "
            f"(layers {list(other.layers)}): each tracker's save() rewrites the same files with only its own "
            "rows, so one overwrites the other's data; close() the other tracker first or use another savefile"
        )
    _OPEN_SAVEFILES[key] = tracker


def _release_savefile(tracker: SaturationTracker) -> None:
    key = os.path.realpath(tracker.__dict__.get("savefile", ""))
    if _OPEN_SAVEFILES.get(key) is tracker:
        del _OPEN_SAVEFILES[key]


def _passed_names(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> set[str]:
    """Column names an ``add_scalar`` / ``add_scalars`` pass-through call adds (empty for other methods)."""
    if method == "add_scalar":
        name = args[0] if args else kwargs.get("name")
        return {name} if isinstance(name, str) else set()
    if method == "add_scalars":
        values = args[1] if len(args) > 1 else kwargs.get("value_dict")
        return {k for k in values if isinstance(k, str)} if isinstance(values, Mapping) else set()
    return set()


#: Old name of :class:`SaturationTracker`, kept as in delve.
CheckLayerSat = SaturationTracker
