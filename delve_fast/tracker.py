"""SaturationTracker: delve's documented tracker on delve_fast's ops.

The forward hook only views each layer's output as an ``(N, C, S)`` batch and
folds it into a float64 covariance state (:mod:`delve_fast.ops`); it never
synchronises a GPU, calls ``.item()`` or copies the activation to the host.
:meth:`SaturationTracker.add_saturations` computes the eigenvalues of every
tracked layer and mode in one batched call and derives all statistics from
them.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.functional import interpolate
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from delve_fast import ops
from delve_fast import stats as S
from delve_fast._loader import check_backend
from delve_fast._reference import as_channel_view
from delve_fast.covariance import DEFAULT_MAX_SAVED_SAMPLES, TorchCovarianceMatrix, resolve_device
from delve_fast.writers import WRITERS, AbstractWriter, CompositWriter, NPYWriter

__all__ = ["SaturationTracker", "CheckLayerSat", "CONV_METHODS", "TIMESERIES_METHODS", "INTERPOLATION_MODES"]

log = logging.getLogger("delve_fast")

#: Accepted values of ``conv_method``.
CONV_METHODS: tuple[str, ...] = ("channelwise", "mean", "max", "median", "flatten")
#: Accepted values of ``timeseries_method``.
TIMESERIES_METHODS: tuple[str, ...] = ("last_timestep", "timestepwise")
#: ``mode`` values of :func:`torch.nn.functional.interpolate` that work on 4-D maps.
INTERPOLATION_MODES: tuple[str, ...] = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")

_COV = S.STATMAP["cov"]


def _identity_filter(layers: dict[str, nn.Module]) -> dict[str, nn.Module]:
    return layers


def _layer_kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.LSTM):
        return "lstm"
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    return None


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(map(repr, choices))}")
    return value


class SaturationTracker:
    """Record layer saturation, intrinsic dimensionality and other statistics.

    Hooks every supported layer of ``modules`` (``nn.Linear``, ``nn.Conv2d``
    and ``nn.LSTM``, subclasses included). Each forward pass folds the layer's
    output into a float64 covariance matrix, kept separately for ``train``
    and ``eval`` mode (from ``module.training``). The covariance accumulates
    over every recorded batch until :meth:`add_saturations`, which computes the
    statistics, hands them to the writers and (by default) starts afresh.

    Parameters
    ----------
    savefile : str
        Destination for summaries. A folder of that name is created; the CSV
        writer writes ``savefile + '.csv'`` and the plot writer
        ``savefile + '_<stat>_<mode>_epoch_<k>.png'``.
    save_to : str, AbstractWriter or list of them
        Save strategies: ``csv``, ``npy``, ``print``, ``tb``/``tensorboard``,
        ``csvplotting``/``csvplot``/``plot``/``plotcsv``, or writer instances.
    modules : nn.Module or list of nn.Module
        The model (searched recursively) or the layers to track. Layers of a
        model are named by their ``_modules`` keys joined with ``-``; a layer
        given directly in a list is named ``Module-<i>-<TypeName>``.
    layer_filter : callable, optional
        Receives the ``{name: layer}`` dict and returns it with unwanted
        entries removed. Default: identity.
    writer_args : dict, optional
        Extra keyword arguments for writers created from a string key
        (``savepath`` is set to ``savefile``).
    log_interval : int, default 1
        Record every ``log_interval``-th forward pass of a layer (counted per
        layer and mode).
    max_samples : int, optional
        Stop updating a layer's covariance after this many batch rows (dim 0
        entries) in an epoch; the batch that crosses the limit is sliced.
    stats : str or list of str, default ['lsat']
        Any of ``lsat``, ``idim``, ``cov``, ``det``, ``trc``, ``dtrc``,
        ``embed`` (and ``logdet``, a delve_fast addition). A ``_train`` or
        ``_eval`` suffix restricts a stat to one mode; a bare stat is
        recorded for both.
    layerwise_sat : bool, default True
        Write the per-layer statistics.
    reset_covariance : bool, default True
        Start a fresh covariance after each :meth:`add_saturations`.
    average_sat : bool, default False
        Also write ``average-train-sat`` / ``average-eval-sat``, the mean
        saturation over the layers.
    ignore_layer_names : list of str, default []
        Layer names not to track.
    include_conv : bool, default True
        Set to False to track only linear (and LSTM) layers.
    conv_method : str, default 'channelwise'
        How a conv output ``(N, C, H, W)`` becomes samples: ``channelwise``
        (``N*H*W`` samples of ``C``), ``mean``, ``max``, ``median`` (global
        pooling, ``N`` samples of ``C``) or ``flatten`` (``N`` samples of
        ``C*H*W``).
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
        Where the covariance states live; falls back to the CPU with a
        warning when CUDA is absent.
    initial_epoch : int, default 0
        Non-zero resumes: the writers reload their saved state.
    interpolation_strategy : str, optional
        ``mode`` of :func:`torch.nn.functional.interpolate` used to shrink conv
        maps larger than ``interpolation_downsampling``.
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
        Keyword only. ``"mixed"`` forms each tile's covariance product in
        float32 on nearly centred data and accumulates it in float64: faster,
        with the error bound given in ``docs/precision.md``.

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
        device: str | torch.device = "cuda:0",
        initial_epoch: int = 0,
        interpolation_strategy: str | None = None,
        interpolation_downsampling: int = 32,
        *,
        backend: str | None = None,
        max_saved_samples: int = DEFAULT_MAX_SAVED_SAMPLES,
        idim_rule: str = "delve",
        precision: str = "double",
    ) -> None:
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._closed = False
        # -- validate --------------------------------------------------------
        if isinstance(savefile, os.PathLike):
            savefile = os.fspath(savefile)
        if not isinstance(savefile, str) or not savefile:
            raise TypeError(f"savefile must be a non-empty str or path, got {savefile!r}")
        self.savefile = savefile
        self.log_interval = _check_int("log_interval", log_interval, 1)
        self.interval = self.log_interval
        self.max_samples = None if max_samples is None else _check_int("max_samples", max_samples, 1)
        self.conv_method = _check_choice("conv_method", conv_method, CONV_METHODS)
        self.timeseries_method = _check_choice("timeseries_method", timeseries_method, TIMESERIES_METHODS)
        if isinstance(sat_threshold, bool) or not isinstance(sat_threshold, (int, float, np.floating)):
            raise TypeError(f"sat_threshold must be a float in (0, 1], got {sat_threshold!r}")
        if not 0.0 < float(sat_threshold) <= 1.0:
            raise ValueError(f"sat_threshold must be in (0, 1], got {sat_threshold!r}")
        self.threshold = float(sat_threshold)
        self.initial_epoch = _check_int("initial_epoch", initial_epoch, 0)
        if interpolation_strategy is not None:
            _check_choice("interpolation_strategy", interpolation_strategy, INTERPOLATION_MODES)
        self.interpolation_strategy = interpolation_strategy
        self.interpolation_downsampling = _check_int("interpolation_downsampling", interpolation_downsampling, 1)
        if writer_args is not None and not isinstance(writer_args, Mapping):
            raise TypeError(f"writer_args must be a dict or None, got {type(writer_args).__name__}")
        if not callable(layer_filter):
            raise TypeError(f"layer_filter must be callable, got {type(layer_filter).__name__}")
        if isinstance(ignore_layer_names, str):
            ignore_layer_names = [ignore_layer_names]
        self.ignore_layer_names = list(ignore_layer_names)
        self.backend = None if backend is None else check_backend(backend)
        self.precision = ops.check_precision(precision)
        self.max_saved_samples = _check_int("max_saved_samples", max_saved_samples, 0)
        self.idim_rule = _check_choice("idim_rule", idim_rule, S.IDIM_RULES)
        self.nosave = bool(nosave)
        self.verbose = bool(verbose)
        self.include_conv = bool(include_conv)
        self.layerwise_sat = bool(layerwise_sat)
        self.reset_covariance = bool(reset_covariance)
        self.average_sat = bool(average_sat)
        self.stats, self._mode_stats = self._check_stats(stats)
        self.device = resolve_device(device)

        # -- layers ----------------------------------------------------------
        found = self._find_layers(modules)
        filtered = layer_filter(dict(found))
        if not isinstance(filtered, Mapping):
            raise TypeError(f"layer_filter must return a dict of name -> module, got {type(filtered).__name__}")
        self.layers: dict[str, nn.Module] = {
            name: layer
            for name, layer in filtered.items()
            if name not in self.ignore_layer_names and _layer_kind(layer) is not None
        }
        if not self.layers:
            warnings.warn(
                "SaturationTracker found no layer to track (supported: nn.Linear, nn.Conv2d, nn.LSTM)",
                RuntimeWarning,
                stacklevel=2,
            )

        # -- writers ---------------------------------------------------------
        if self.nosave:
            self.writer: AbstractWriter = CompositWriter([])
        else:
            args = dict(writer_args or {})
            args["savepath"] = savefile
            os.makedirs(savefile, exist_ok=True)
            self.writer = self._get_writer(save_to, args)
            self._warn_if_covariance_not_saveable()

        # -- state -----------------------------------------------------------
        self.logs: dict[str, dict[str, TorchCovarianceMatrix]] = {f"{m}-{_COV}": {} for m in S.MODES}
        self.seen_samples: dict[str, dict[str, int]] = {m: {} for m in S.MODES}
        self._forward_counts: dict[str, dict[str, int]] = {m: {} for m in S.MODES}
        # (mode, layer) -> ("chw" | "hwc", (C, H, W)): feature order of a flatten state.
        self._flatten_order: dict[tuple[str, str], tuple[str, tuple[int, ...]]] = {}
        self.record = True
        self.epoch = self.initial_epoch
        for name, layer in self.layers.items():
            self._hooks.append(layer.register_forward_hook(self._make_hook(name, _layer_kind(layer))))
            log.info("added layer %s", name)
        if self.initial_epoch != 0:
            self.writer.resume_from_saved_state(self.initial_epoch)

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _check_stats(stats: str | Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
        if isinstance(stats, str):
            stats = [stats]
        try:
            stats = list(stats)
        except TypeError:
            raise TypeError(f"stats must be a str or a list of str, got {type(stats).__name__}") from None
        per_mode: dict[str, list[str]] = {m: [] for m in S.MODES}
        for stat in stats:
            if not isinstance(stat, str):
                raise TypeError(f"every stat must be a str, got {stat!r}")
            base, _, mode = stat.partition("_")
            if base not in S.SUPPORTED_STATS or (mode and mode not in S.MODES):
                raise ValueError(
                    f"stat {stat!r} is not supported; choose from {', '.join(S.SUPPORTED_STATS)}, "
                    "optionally suffixed with '_train' or '_eval'"
                )
            for m in (mode,) if mode else S.MODES:
                if base not in per_mode[m]:
                    per_mode[m].append(base)
        return stats, per_mode

    def _find_layers(self, modules: nn.Module | Sequence[nn.Module]) -> dict[str, nn.Module]:
        """Collect supported layers with delve's names, each module once."""
        layers: dict[str, nn.Module] = {}
        seen: set[int] = set()

        def keep(layer: nn.Module) -> bool:
            kind = _layer_kind(layer)
            return kind is not None and (self.include_conv or kind != "conv")

        def walk(module: nn.Module, prefix: str, out: dict[str, nn.Module]) -> None:
            children = [(k, m) for k, m in module._modules.items() if m is not None]
            if children:
                for key, child in children:
                    walk(child, key if prefix == "" else f"{prefix}-{key}", out)
            elif keep(module):
                if id(module) in seen:
                    log.info("skipping %s: the same module is already tracked", prefix)
                    return
                seen.add(id(module))
                out[prefix] = module
                log.debug("found layer %s", prefix)
            else:
                log.debug("skipping %s (%s)", prefix, type(module).__name__)

        if isinstance(modules, nn.Module):
            if _layer_kind(modules) is not None and not modules._modules:
                modules = [modules]  # a single layer is a one-element list
            else:
                walk(modules, "", layers)
                return layers
        if not isinstance(modules, (list, tuple)):
            raise TypeError(f"modules must be an nn.Module or a list of nn.Module, got {type(modules).__name__}")
        for i, module in enumerate(modules):
            if not isinstance(module, nn.Module):
                raise TypeError(f"modules[{i}] is a {type(module).__name__}, not an nn.Module")
            if _layer_kind(module) is not None and not module._modules:
                walk(module, f"Module-{i}-{type(module).__name__}", layers)
                continue
            found: dict[str, nn.Module] = {}
            walk(module, "", found)
            for name, layer in found.items():
                if name in layers:
                    renamed = f"Module-{i}-{name}"
                    warnings.warn(
                        f"layer name {name!r} from modules[{i}] is already used; it is tracked as {renamed!r}",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                    name = renamed
                layers[name] = layer
        return layers

    def _get_writer(self, save_to: Any, writer_args: dict[str, Any]) -> AbstractWriter:
        if isinstance(save_to, AbstractWriter):
            return save_to
        if isinstance(save_to, (list, tuple)):
            return CompositWriter([self._get_writer(s, writer_args) for s in save_to])
        if isinstance(save_to, str) and save_to in WRITERS:
            return WRITERS[save_to](**writer_args)
        raise ValueError(
            f"save_to={save_to!r} is not supported; use one of {', '.join(map(repr, WRITERS))}, "
            "an AbstractWriter instance, or a list of these"
        )

    def _warn_if_covariance_not_saveable(self) -> None:
        if not any("cov" in stats for stats in self._mode_stats.values()):
            return
        writers = self.writer.writers if isinstance(self.writer, CompositWriter) else [self.writer]
        if not any(isinstance(w, NPYWriter) for w in writers):
            warnings.warn(
                "stat 'cov' was requested, but only the 'npy' writer (NPYWriter) stores covariance matrices and "
                "none is in save_to; the matrices will not be saved (pass a list such as ['csv', 'npy'])",
                RuntimeWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------- the hook
    def _make_hook(self, name: str, kind: str | None) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not self.record:
                return
            mode = "train" if module.training else "eval"
            counts = self._forward_counts[mode]
            counts[name] = counts.get(name, 0) + 1
            if counts[name] % self.log_interval:
                return
            room = None
            if self.max_samples is not None:
                room = self.max_samples - self.seen_samples[mode].get(name, 0)
                if room <= 0:
                    return
            batch = self._as_batch(kind, module, output, room, (mode, name))
            if batch is None:
                return
            view, rows = batch
            self.seen_samples[mode][name] = self.seen_samples[mode].get(name, 0) + rows
            state = self.logs[f"{mode}-{_COV}"].get(name)
            if state is None:
                state = TorchCovarianceMatrix(
                    device=self.device,
                    save_data="embed" in self._mode_stats[mode],
                    backend=self.backend,
                    precision=self.precision,
                    max_saved_samples=self.max_saved_samples,
                )
                self.logs[f"{mode}-{_COV}"][name] = state
            state.update_view(view)

        # Under torch.compile the hook runs eagerly: tracing its Python
        # bookkeeping would only force a recompile on every counter change.
        return torch.compiler.disable(hook)

    def _as_batch(
        self, kind: str | None, module: nn.Module, output: Any, room: int | None, key: tuple[str, str]
    ) -> tuple[torch.Tensor, int] | None:
        """View a layer output as ``(N, C, S)``; also return the batch rows it used.

        Only views, slices and the documented reductions (pooling,
        interpolation) are used: nothing is synchronised or copied to the host.
        """
        if kind == "lstm":
            return self._lstm_batch(module, output, room)
        if isinstance(output, (tuple, list)):
            output = output[0]
        if not isinstance(output, torch.Tensor):
            return None
        y = output.detach()
        if kind == "conv":
            if y.dim() == 3:  # unbatched (C, H, W)
                y = y.unsqueeze(0)
            if room is not None and room < y.shape[0]:
                y = y[:room]
            rows = int(y.shape[0])
            if self.interpolation_strategy is not None and (
                y.shape[2] > self.interpolation_downsampling or y.shape[3] > self.interpolation_downsampling
            ):
                y = interpolate(y, size=self.interpolation_downsampling, mode=self.interpolation_strategy)
            method = self.conv_method
            if method == "channelwise":
                return as_channel_view(y), rows
            if method == "mean":
                return y.mean(dim=(2, 3)).unsqueeze(-1), rows
            if method == "max":
                return y.amax(dim=(2, 3)).unsqueeze(-1), rows
            if method == "median":
                return y.flatten(2).median(dim=2).values.unsqueeze(-1), rows
            return self._flatten_view(y, key), rows

        # Linear: (C,), (B, C), tokens (B, T, C) or higher rank (..., C).
        if y.dim() == 1:
            y = y.unsqueeze(0)
        if room is not None and room < y.shape[0]:
            y = y[:room]
        rows = int(y.shape[0])
        if y.dim() == 2:
            return y.unsqueeze(-1), rows
        if y.dim() == 3:
            return y.transpose(1, 2), rows  # B sequences, T token samples each: (B, C, T)
        return y.reshape(-1, y.shape[-1]).unsqueeze(-1), rows

    def _flatten_view(self, y: torch.Tensor, key: tuple[str, str]) -> torch.Tensor:
        """``(N, C*H*W, 1)`` for ``conv_method='flatten'``, as a view whenever one exists.

        An NCHW map flattens in delve's ``(C, H, W)`` feature order. A
        channels_last map is flattened in its own ``(H, W, C)`` order instead,
        which needs no copy; :meth:`compute_saturations` permutes those
        covariances back to ``(C, H, W)`` order (the scalar statistics do not
        depend on the order).
        """
        n = y.shape[0]
        order = self._flatten_order.get(key)
        if order is None:
            hwc = not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last)
            order = ("hwc" if hwc else "chw", tuple(int(d) for d in y.shape[1:]))
            self._flatten_order[key] = order
        if order[0] == "hwc":  # keep the order the state started with
            return y.permute(0, 2, 3, 1).reshape(n, -1, 1)
        return y.reshape(n, -1, 1)

    def _lstm_batch(self, module: nn.Module, output: Any, room: int | None) -> tuple[torch.Tensor, int] | None:
        out = output[0] if isinstance(output, (tuple, list)) else output
        last = self.timeseries_method == "last_timestep"
        if isinstance(out, PackedSequence):
            # Packed batches are recorded whole (never sliced by max_samples).
            rows = int(out.batch_sizes[0])
            if not last:
                return out.data.detach().unsqueeze(-1), rows
            padded, lengths = pad_packed_sequence(out, batch_first=True)
            index = (lengths - 1).to(padded.device, non_blocking=True)
            picked = padded.detach()[torch.arange(padded.shape[0], device=padded.device), index]
            return picked.unsqueeze(-1), rows
        if not isinstance(out, torch.Tensor):
            return None
        y = out.detach()
        if y.dim() == 2:  # unbatched (T, U)
            y = y.unsqueeze(0)
            batch_first = True
        else:
            batch_first = bool(getattr(module, "batch_first", False))
        if not batch_first:
            y = y.transpose(0, 1)  # (T, B, U) -> (B, T, U), a view
        if room is not None and room < y.shape[0]:
            y = y[:room]
        rows = int(y.shape[0])
        if last:
            return y[:, -1, :].unsqueeze(-1), rows
        return y.transpose(1, 2), rows  # (B, U, T): every timestep is a sample

    # ---------------------------------------------------------- user methods
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
            return getattr(self.__dict__["writer"], name)
        except AttributeError:
            raise AttributeError(f"neither {type(self).__name__} nor its writer has attribute {name!r}") from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layers={list(self.layers)}, stats={self.stats})"

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

    def save(self) -> None:
        """Ask every writer to persist what it holds."""
        self.writer.save()

    def close(self) -> None:
        """Remove all hooks and close the writers. Safe to call twice."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        if not self._closed:
            self._closed = True
            self.writer.close()

    # -------------------------------------------------------- statistics
    def _pending(self) -> list[tuple[str, str, TorchCovarianceMatrix]]:
        """(mode, layer, state) for every layer and mode with data, in layer order."""
        out = []
        for mode in S.MODES:
            states = self.logs[f"{mode}-{_COV}"]
            for name in self.layers:
                state = states.get(name)
                if state is not None and state.n_samples > 0:
                    out.append((mode, name, state))
        return out

    def _in_chw_order(self, cov: torch.Tensor, key: tuple[str, str]) -> torch.Tensor:
        """Permute a flatten covariance gathered in (H, W, C) order to delve's (C, H, W) order."""
        order = self._flatten_order.get(key)
        if order is None or order[0] != "hwc":
            return cov
        c, h, w = order[1]
        perm = torch.arange(c * h * w, device=cov.device).reshape(h, w, c).permute(2, 0, 1).reshape(-1)
        return cov[perm][:, perm]

    def compute_saturations(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Compute every requested statistic from the covariances gathered so far.

        Eigenvalues of all layers and modes come from one batched call to
        :func:`delve_fast.ops.eigvalsh_desc`; eigenvectors are computed only
        for ``embed``. Nothing is reset or written.

        Returns
        -------
        values : dict
            Column name (``<mode>-<stat name>_<layer>``) to value; the
            ``cov`` entries are float64 matrices.
        samples : dict
            ``<mode>-embedded-sample_<layer>`` to ``(n, 2)`` arrays (``embed``).
        """
        pending = self._pending()
        values: dict[str, Any] = {}
        samples: dict[str, Any] = {}
        if not pending:
            return values, samples
        covs = [state.fix() for _, _, state in pending]
        eigs = ops.eigvalsh_desc(covs, backend=self.backend)
        # One device-to-host transfer for every eigenvalue and trace.
        flat = torch.cat([e.reshape(-1) for e in eigs] + [torch.stack([c.diagonal().sum() for c in covs])])
        host = flat.to("cpu", torch.float64).numpy()
        offset = 0
        host_eigs = []
        for e in eigs:
            host_eigs.append(host[offset : offset + e.shape[0]])
            offset += e.shape[0]
        traces = host[offset:]
        for i, (mode, name, state) in enumerate(pending):
            lam = host_eigs[i]
            for stat in self._mode_stats[mode]:
                col = f"{mode}-{S.STATMAP[stat]}_{name}"
                if stat == "lsat":
                    values[col] = S.saturation(lam, self.threshold, rule=self.idim_rule)
                elif stat == "idim":
                    values[col] = S.intrinsic_dimensionality(lam, self.threshold, rule=self.idim_rule)
                elif stat == "trc":
                    values[col] = float(traces[i])
                elif stat == "dtrc":
                    values[col] = S.diagonal_trace(lam)
                elif stat == "det":
                    values[col] = S.determinant(lam, name=f"{mode} {name}")
                elif stat == "logdet":
                    values[col] = S.log_determinant(lam)
                elif stat == "cov":
                    values[col] = self._in_chw_order(covs[i], (mode, name)).cpu().numpy()
                elif stat == "embed":
                    stored = state.saved_samples
                    if stored is not None and stored.shape[0] > 0:
                        _, vecs = torch.linalg.eigh(covs[i])
                        samples[col] = S.embed(stored, state.mean(), vecs.flip(-1))
        if self.average_sat:
            for mode in S.MODES:
                sats = [
                    S.saturation(host_eigs[i], self.threshold, rule=self.idim_rule)
                    for i, p in enumerate(pending)
                    if p[0] == mode
                ]
                if sats:
                    values[f"average-{mode}-sat"] = float(np.mean(sats))
        return values, samples

    def add_saturations(self, save: bool = True) -> dict[str, Any]:
        """Compute the statistics of this epoch, write them and reset.

        Layers and modes that saw no data since the last call are skipped
        (their CSV cells stay empty).

        Parameters
        ----------
        save : bool, default True
            Call the writers' ``save()`` (closes the CSV row, draws plots).

        Returns
        -------
        dict
            Every value written, by column name.
        """
        values, samples = self.compute_saturations()
        if self.verbose:
            for col, value in values.items():
                if S.STATMAP["cov"] not in col:
                    print(f"{col}: {value}")
        layer_values = {k: v for k, v in values.items() if not k.startswith("average-")}
        if self.layerwise_sat and (layer_values or samples):
            self.writer.add_scalars(
                prefix="", value_dict=layer_values, sample_value_dict=samples, global_step=self.epoch
            )
        for key, value in values.items():
            if key.startswith("average-"):
                self.writer.add_scalar(key, value, global_step=self.epoch)
        if self.reset_covariance:
            for mode, name, state in self._pending():
                state.reset()
                self._flatten_order.pop((mode, name), None)
        for mode in S.MODES:
            self.seen_samples[mode] = {}
        self.epoch += 1
        if save:
            self.save()
        return values


#: Old name of :class:`SaturationTracker`, kept as in delve.
CheckLayerSat = SaturationTracker
