"""Turn a layer's output into an ``(N, C, S)`` batch: ``N * S`` samples of ``C`` features.

One pure function per kind of layer (``linear``, ``conv``, ``lstm`` for every
recurrent layer, ``attention``), listed
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
    "token_view",
    "custom_view",
    "ViewFn",
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


#: Interpolation modes that exist only for 2-D maps, and their 1-D / 3-D counterparts.
_MODE_FOR_RANK: dict[int, dict[str, str]] = {
    1: {"bilinear": "linear", "bicubic": "linear"},
    3: {"bilinear": "trilinear", "bicubic": "trilinear"},
}


def _downsample(y: torch.Tensor, options: ViewOptions, spatial_dims: int) -> torch.Tensor:
    size = options.interpolation_downsampling
    if options.interpolation_strategy is None or all(d <= size for d in y.shape[2:]):
        return y
    mode = _MODE_FOR_RANK.get(spatial_dims, {}).get(options.interpolation_strategy, options.interpolation_strategy)
    return interpolate(y, size=size, mode=mode)


def conv_view(
    y: torch.Tensor,
    options: ViewOptions = ViewOptions(),  # noqa: B008 - immutable
    room: int | None = None,
    flatten_order: FlattenOrder | None = None,
    spatial_dims: int = 2,
) -> Batch:
    """View a conv output ``(N, C, *spatial)`` (or unbatched ``(C, *spatial)``) by ``options.conv_method``.

    ``channelwise`` gives one sample of ``C`` per position and batch entry
    (``N*H*W`` for a 2-D map, ``N*L`` for 1-D, ``N*D*H*W`` for 3-D); ``mean``,
    ``max`` and ``median`` pool over all positions (``N`` samples of ``C``);
    ``flatten`` gives ``N`` samples of ``C`` times the positions (see
    :func:`flatten_view`). Maps with a side larger than
    ``options.interpolation_downsampling`` are first resized when
    ``options.interpolation_strategy`` is set (``bilinear`` and ``bicubic``
    become ``linear`` for 1-D and ``trilinear`` for 3-D maps).

    Parameters
    ----------
    spatial_dims : int, default 2
        1, 2 or 3: the layer's spatial rank (``len(module.kernel_size)``),
        which tells an unbatched map from a batched one.
    """
    if y.dim() == spatial_dims + 1:
        y = y.unsqueeze(0)
    if y.dim() != spatial_dims + 2:
        raise ValueError(
            f"a {spatial_dims}-D conv output must have rank {spatial_dims + 1} or {spatial_dims + 2}, "
            f"got shape {tuple(y.shape)}"
        )
    y = _first_rows(y, room)
    rows = int(y.shape[0])
    y = _downsample(y, options, spatial_dims)
    positions = tuple(range(2, y.dim()))
    method = options.conv_method
    if method == "channelwise":
        return Batch(y.flatten(2) if spatial_dims != 1 else y, rows)
    if method == "mean":
        return Batch(y.mean(dim=positions).unsqueeze(-1), rows)
    if method == "max":
        return Batch(y.amax(dim=positions).unsqueeze(-1), rows)
    if method == "median":
        return Batch(y.flatten(2).median(dim=2).values.unsqueeze(-1), rows)
    if method == "flatten":
        if spatial_dims == 2:
            view, order = flatten_view(y, flatten_order)
            return Batch(view, rows, order)
        order = flatten_order or ("chw", tuple(int(d) for d in y.shape[1:]))
        return Batch(y.reshape(rows, -1, 1), rows, order)
    raise ValueError(f"conv_method={method!r} is not supported; choose one of {', '.join(map(repr, CONV_METHODS))}")


def token_view(y: torch.Tensor, batch_first: bool = True, room: int | None = None) -> Batch:
    """View token outputs ``(B, T, E)`` (or ``(T, B, E)``, or unbatched ``(T, E)``) as ``(B, E, T)``.

    Every token of every sequence is a sample of ``E`` features; ``B`` rows
    count towards ``max_samples``. A nested tensor (variable-length
    sequences) gives its real tokens only, as ``(sum T_i, E, 1)``.

    Parameters
    ----------
    y : torch.Tensor
        The detached output.
    batch_first : bool, default True
        Whether ``y`` is ``(B, T, E)``; else ``(T, B, E)``.
    room : int, optional
        Keep only the first ``room`` sequences.
    """
    if y.is_nested:
        seqs = y.unbind()
        seqs = seqs[:room] if room is not None else seqs
        return Batch(torch.cat(list(seqs), dim=0).unsqueeze(-1), len(seqs))
    if y.dim() == 2:
        y, batch_first = y.unsqueeze(0), True
    if y.dim() != 3:
        raise ValueError(f"expected token outputs (B, T, E), (T, B, E) or (T, E), got shape {tuple(y.shape)}")
    if not batch_first:
        y = y.transpose(0, 1)
    y = _first_rows(y, room)
    return Batch(y.transpose(1, 2), int(y.shape[0]))


def lstm_view(
    out: torch.Tensor | PackedSequence,
    batch_first: bool = False,
    timeseries_method: str = "last_timestep",
    room: int | None = None,
) -> Batch:
    """View a recurrent output (LSTM, GRU, RNN) ``(T, B, U)``, ``(B, T, U)``, unbatched ``(T, U)`` or packed.

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
#: ``fn(module, output, options, room, flatten_order) -> Batch | None``: what the tracker's hook calls.
ViewFn = Callable[[nn.Module, Any, ViewOptions, "int | None", "FlattenOrder | None"], "Batch | None"]


def _tensor_output(output: Any) -> torch.Tensor | None:
    if isinstance(output, (tuple, list)):
        output = output[0] if output else None
    return output.detach() if isinstance(output, torch.Tensor) else None


def _linear(
    module: nn.Module, output: Any, options: ViewOptions, room: int | None, order: FlattenOrder | None
) -> Batch | None:
    y = _tensor_output(output)
    if y is None:
        return None
    return token_view(y, True, room) if y.is_nested else linear_view(y, room)


def _conv(
    module: nn.Module, output: Any, options: ViewOptions, room: int | None, order: FlattenOrder | None
) -> Batch | None:
    y = _tensor_output(output)
    if y is None:
        return None
    return conv_view(y, options, room, order, spatial_dims=len(getattr(module, "kernel_size", (0, 0))))


def _lstm(
    module: nn.Module, output: Any, options: ViewOptions, room: int | None, order: FlattenOrder | None
) -> Batch | None:
    out = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(out, (torch.Tensor, PackedSequence)):
        return None
    batch_first = bool(getattr(module, "batch_first", False))
    return lstm_view(out, batch_first, options.timeseries_method, room)


def _attention(
    module: nn.Module, output: Any, options: ViewOptions, room: int | None, order: FlattenOrder | None
) -> Batch | None:
    # MultiheadAttention returns (attn_output, attn_weights); the weights are not features.
    y = _tensor_output(output)
    if y is None:
        return None
    return token_view(y, bool(getattr(module, "batch_first", False)), room)


def custom_view(to_view: Callable[[nn.Module, Any], torch.Tensor | None]) -> ViewFn:
    """Wrap a user's ``to_view(module, output) -> (N, C, S)`` as a tracker view function.

    The returned tensor may also be ``(N, C)`` (one sample per row) or
    ``(C,)``; ``None`` skips the pass. ``max_samples`` keeps the first rows of
    dim 0, which also count the rows recorded.
    """

    def view(
        module: nn.Module, output: Any, options: ViewOptions, room: int | None, order: FlattenOrder | None
    ) -> Batch | None:
        y = to_view(module, output)
        if y is None:
            return None
        if not isinstance(y, torch.Tensor):
            raise TypeError(
                f"to_view for {type(module).__name__} must return a tensor (N, C, S) or None, got {type(y).__name__}"
            )
        if y.dim() not in (1, 2, 3):
            raise ValueError(
                f"to_view for {type(module).__name__} returned shape {tuple(y.shape)}; expected (N, C, S), (N, C) "
                "or (C,)"
            )
        y = _first_rows(as_channel_view(y.detach()), room)
        return Batch(y, int(y.shape[0]))

    view.__name__ = f"custom_view({getattr(to_view, '__name__', 'to_view')})"
    return view


#: View kind (see :mod:`delve_fast.layers`) -> ``fn(module, output, options, room, flatten_order)``.
VIEWS: dict[str, ViewFn] = {
    "linear": _linear,
    "conv": _conv,
    "lstm": _lstm,
    "attention": _attention,
}
