"""Turn a layer's output into an ``(N, C, S)`` batch: ``N * S`` samples of ``C`` features.

One pure function per kind of layer (``linear``, ``conv``, ``lstm``), listed
in :data:`VIEWS`. They use only views, slices and the documented reductions
(pooling, interpolation): nothing is synchronised with a GPU or copied to the
host, so they are safe inside a forward hook. Each returns a :class:`Batch`,
or ``None`` when the output holds no tensor to record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.functional import interpolate
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

__all__ = [
    "CONV_METHODS",
    "TIMESERIES_METHODS",
    "INTERPOLATION_MODES",
    "ViewOptions",
    "Batch",
    "FlattenOrder",
    "as_channel_view",
    "linear_view",
    "conv_view",
    "flatten_view",
    "lstm_view",
    "covariance_in_chw_order",
    "VIEWS",
]

#: Accepted values of ``conv_method``.
CONV_METHODS: tuple[str, ...] = ("channelwise", "mean", "max", "median", "flatten")
#: Accepted values of ``timeseries_method``.
TIMESERIES_METHODS: tuple[str, ...] = ("last_timestep", "timestepwise")
#: ``mode`` values of :func:`torch.nn.functional.interpolate` that work on 4-D maps.
INTERPOLATION_MODES: tuple[str, ...] = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")

#: Feature order of a ``flatten`` conv state: ``("chw" | "hwc", (C, H, W))``.
FlattenOrder = tuple[str, tuple[int, ...]]


@dataclass(frozen=True)
class ViewOptions:
    """How outputs become samples (the tracker's ``conv_method`` and related arguments)."""

    conv_method: str = "channelwise"
    timeseries_method: str = "last_timestep"
    interpolation_strategy: str | None = None
    interpolation_downsampling: int = 32


@dataclass(frozen=True)
class Batch:
    """A layer output viewed for the covariance update.

    Attributes
    ----------
    view : torch.Tensor
        ``(N, C, S)``, usually sharing storage with the output.
    rows : int
        Batch entries (dim 0 of the output) it covers; ``max_samples`` counts these.
    flatten_order : FlattenOrder or None
        Feature order of a ``flatten`` conv view, else None.
    """

    view: torch.Tensor
    rows: int
    flatten_order: FlattenOrder | None = None


def as_channel_view(x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` viewed as ``(N, C, S)`` without copying.

    Parameters
    ----------
    x : torch.Tensor
        A 1-D ``(C,)``, 2-D ``(N, C)`` or 3-D ``(N, C, S)`` tensor, or a
        4-D ``(N, C, H, W)`` tensor in any memory format.

    Returns
    -------
    torch.Tensor
        A 3-D view ``(N, C, S)`` sharing storage with ``x``. For 4-D input
        ``S = H * W``; the view exists whenever ``H`` and ``W`` can be merged,
        which holds for both contiguous NCHW and channels_last.

    Raises
    ------
    ValueError
        If ``x`` has another rank.
    """
    if x.dim() == 1:
        return x.unsqueeze(0).unsqueeze(-1)
    if x.dim() == 2:
        return x.unsqueeze(-1)
    if x.dim() == 3:
        return x
    if x.dim() == 4:
        # H and W merge into one stride for NCHW and channels_last alike, so
        # flatten returns a view there; only exotic strides make it copy.
        return x.flatten(2)
    raise ValueError(f"expected a tensor of rank 1 to 4, got shape {tuple(x.shape)}")


def _first_rows(y: torch.Tensor, room: int | None) -> torch.Tensor:
    return y[:room] if room is not None and room < y.shape[0] else y


def linear_view(y: torch.Tensor, room: int | None = None) -> Batch:
    """View a Linear output: ``(C,)``, ``(B, C)``, tokens ``(B, T, C)`` or ``(..., C)``.

    A 1-D output is one sample; ``(B, C)`` gives ``B`` samples; tokens give
    ``B`` sequences of ``T`` token samples each, as ``(B, C, T)``; a higher
    rank flattens every leading dimension into samples.

    Parameters
    ----------
    y : torch.Tensor
        The detached output.
    room : int, optional
        Keep only the first ``room`` entries of dim 0 (``max_samples``).
    """
    if y.dim() == 1:
        y = y.unsqueeze(0)
    y = _first_rows(y, room)
    rows = int(y.shape[0])
    if y.dim() == 2:
        return Batch(y.unsqueeze(-1), rows)
    if y.dim() == 3:
        return Batch(y.transpose(1, 2), rows)
    return Batch(y.reshape(-1, y.shape[-1]).unsqueeze(-1), rows)


def flatten_view(y: torch.Tensor, order: FlattenOrder | None = None) -> tuple[torch.Tensor, FlattenOrder]:
    """``(N, C*H*W, 1)`` for ``conv_method='flatten'``, as a view whenever one exists.

    An NCHW map flattens in delve's ``(C, H, W)`` feature order. A
    channels_last map is flattened in its own ``(H, W, C)`` order instead,
    which needs no copy; :func:`covariance_in_chw_order` permutes such a
    covariance back (the scalar statistics do not depend on the order).

    Parameters
    ----------
    y : torch.Tensor
        ``(N, C, H, W)``.
    order : FlattenOrder, optional
        The order the state started with; later batches keep it whatever
        their memory format. By default it is chosen from ``y``.

    Returns
    -------
    view, order
    """
    n = y.shape[0]
    if order is None:
        hwc = not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last)
        order = ("hwc" if hwc else "chw", tuple(int(d) for d in y.shape[1:]))
    if order[0] == "hwc":
        return y.permute(0, 2, 3, 1).reshape(n, -1, 1), order
    return y.reshape(n, -1, 1), order


def conv_view(
    y: torch.Tensor,
    options: ViewOptions = ViewOptions(),  # noqa: B008 - immutable
    room: int | None = None,
    flatten_order: FlattenOrder | None = None,
) -> Batch:
    """View a Conv2d output ``(N, C, H, W)`` (or unbatched ``(C, H, W)``) by ``options.conv_method``.

    ``channelwise`` gives ``N*H*W`` samples of ``C``; ``mean``, ``max`` and
    ``median`` pool globally (``N`` samples of ``C``); ``flatten`` gives ``N``
    samples of ``C*H*W`` (see :func:`flatten_view`). Maps larger than
    ``options.interpolation_downsampling`` are first resized when
    ``options.interpolation_strategy`` is set.
    """
    if y.dim() == 3:
        y = y.unsqueeze(0)
    y = _first_rows(y, room)
    rows = int(y.shape[0])
    size = options.interpolation_downsampling
    if options.interpolation_strategy is not None and (y.shape[2] > size or y.shape[3] > size):
        y = interpolate(y, size=size, mode=options.interpolation_strategy)
    method = options.conv_method
    if method == "channelwise":
        return Batch(as_channel_view(y), rows)
    if method == "mean":
        return Batch(y.mean(dim=(2, 3)).unsqueeze(-1), rows)
    if method == "max":
        return Batch(y.amax(dim=(2, 3)).unsqueeze(-1), rows)
    if method == "median":
        return Batch(y.flatten(2).median(dim=2).values.unsqueeze(-1), rows)
    if method == "flatten":
        view, order = flatten_view(y, flatten_order)
        return Batch(view, rows, order)
    raise ValueError(f"conv_method={method!r} is not supported; choose one of {', '.join(map(repr, CONV_METHODS))}")


def lstm_view(
    out: torch.Tensor | PackedSequence,
    batch_first: bool = False,
    timeseries_method: str = "last_timestep",
    room: int | None = None,
) -> Batch:
    """View an LSTM output ``(T, B, U)``, ``(B, T, U)``, unbatched ``(T, U)`` or packed.

    ``last_timestep`` gives ``B`` samples (each sequence's last step; for a
    packed batch, the last step within its length); ``timestepwise`` gives
    every step of every sequence. Packed batches are recorded whole (never
    sliced by ``room``).
    """
    last = timeseries_method == "last_timestep"
    if isinstance(out, PackedSequence):
        rows = int(out.batch_sizes[0])
        if not last:
            return Batch(out.data.detach().unsqueeze(-1), rows)
        padded, lengths = pad_packed_sequence(out, batch_first=True)
        index = (lengths - 1).to(padded.device, non_blocking=True)
        picked = padded.detach()[torch.arange(padded.shape[0], device=padded.device), index]
        return Batch(picked.unsqueeze(-1), rows)
    y = out.detach()
    if y.dim() == 2:  # unbatched (T, U)
        y, batch_first = y.unsqueeze(0), True
    if not batch_first:
        y = y.transpose(0, 1)  # (T, B, U) -> (B, T, U), a view
    y = _first_rows(y, room)
    rows = int(y.shape[0])
    if last:
        return Batch(y[:, -1, :].unsqueeze(-1), rows)
    return Batch(y.transpose(1, 2), rows)  # (B, U, T): every timestep is a sample


def covariance_in_chw_order(cov: torch.Tensor, order: FlattenOrder | None) -> torch.Tensor:
    """Permute a ``flatten`` covariance gathered in ``(H, W, C)`` order to delve's ``(C, H, W)`` order."""
    if order is None or order[0] != "hwc":
        return cov
    c, h, w = order[1]
    perm = torch.arange(c * h * w, device=cov.device).reshape(h, w, c).permute(2, 0, 1).reshape(-1)
    return cov[perm][:, perm]


# ------------------------------------------------- module-level adapters
def _tensor_output(output: Any) -> torch.Tensor | None:
    if isinstance(output, (tuple, list)):
        output = output[0]
    return output.detach() if isinstance(output, torch.Tensor) else None


def _linear(
    module: nn.Module, output: Any, options: ViewOptions, room: int | None, order: FlattenOrder | None
) -> Batch | None:
    y = _tensor_output(output)
    return None if y is None else linear_view(y, room)


def _conv(
    module: nn.Module, output: Any, options: ViewOptions, room: int | None, order: FlattenOrder | None
) -> Batch | None:
    y = _tensor_output(output)
    return None if y is None else conv_view(y, options, room, order)


def _lstm(
    module: nn.Module, output: Any, options: ViewOptions, room: int | None, order: FlattenOrder | None
) -> Batch | None:
    out = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(out, (torch.Tensor, PackedSequence)):
        return None
    batch_first = bool(getattr(module, "batch_first", False))
    return lstm_view(out, batch_first, options.timeseries_method, room)


#: View kind (see :mod:`delve_fast.layers`) -> ``fn(module, output, options, room, flatten_order)``.
VIEWS: dict[str, Callable[[nn.Module, Any, ViewOptions, int | None, FlattenOrder | None], Batch | None]] = {
    "linear": _linear,
    "conv": _conv,
    "lstm": _lstm,
}
