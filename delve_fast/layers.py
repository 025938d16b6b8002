"""Which layers the tracker records, and the names it gives them.

A registry maps a layer type to the view its output needs: a key of
:data:`delve_fast.views.VIEWS` for the built-in types, or a user's
``to_view(module, output)`` function. A module is tracked when its type, or
the nearest registered base class in its MRO, is in the registry, so
subclasses of registered types are tracked too. Supporting a new layer type
is one :func:`register_layer_type` call.

Built in (all tracked by default; ``layer_types="delve"`` keeps delve's three):

=====================================================  ==========  =========
type                                                   view        conv
=====================================================  ==========  =========
``nn.Linear``                                          linear      no
``nn.Conv2d``                                          conv        yes
``nn.LSTM``                                            lstm        no
``nn.Conv1d``, ``nn.Conv3d``                           conv        yes
``nn.ConvTranspose1d``, ``2d``, ``3d``                 conv        yes
``nn.GRU``, ``nn.RNN``                                 lstm        no
``nn.MultiheadAttention``                              attention   no
=====================================================  ==========  =========

Names follow delve: the ``_modules`` keys from the model down to the layer
joined with ``-``; a layer given directly in a list is ``Module-<i>-<TypeName>``;
a string ``name`` attribute set on a layer replaces its name, as in delve.
Delve's own types are tracked as leaves (a module with children is searched,
not tracked); types registered as *whole* (``nn.MultiheadAttention``, and
custom types by default) are tracked as one layer and their children are not
searched.
Wrappers that add a level without adding a layer (``DistributedDataParallel``,
``DataParallel``, ``torch.compile``'s ``OptimizedModule``, FSDP's
``FullyShardedDataParallel``, activation-checkpoint wrappers) are looked through,
so a wrapped model gets the names of the plain one.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from delve_fast.views import VIEWS, ViewFn, custom_view

__all__ = [
    "LayerType",
    "DELVE_LAYER_TYPES",
    "register_layer_type",
    "unregister_layer_type",
    "registered_layer_types",
    "resolve_layer_types",
    "layer_kind",
    "layer_view",
    "collect_layers",
    "find_layers",
    "select_layers",
    "supported_types_text",
    "unwrap",
]

log = logging.getLogger("delve_fast")

#: The types delve 0.1.50 tracks (``layer_types="delve"``).
DELVE_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, nn.LSTM)


@dataclass(frozen=True)
class LayerType:
    """How a registered layer type is recorded.

    Attributes
    ----------
    kind : str
        Key of :data:`delve_fast.views.VIEWS`, or ``"custom"`` for a user's view function.
    is_conv : bool
        Whether ``include_conv=False`` leaves it out.
    whole : bool
        Track the module itself even when it has children (and do not search them).
    view : callable
        ``fn(module, output, options, room, flatten_order) -> Batch | None``.
    """

    kind: str
    is_conv: bool = False
    whole: bool = False
    view: ViewFn | None = None


_REGISTRY: dict[type[nn.Module], LayerType] = {}


def register_layer_type(
    module_type: type[nn.Module],
    kind: str | Callable[[nn.Module, Any], torch.Tensor | None],
    *,
    is_conv: bool = False,
    whole: bool | None = None,
) -> None:
    """Record outputs of ``module_type`` (and its subclasses) with a view.

    Registering a type again replaces its entry. The registry is global:
    trackers built afterwards see the change.

    Parameters
    ----------
    module_type : type
        A subclass of ``nn.Module``.
    kind : str or callable
        A built-in view (one of :data:`delve_fast.views.VIEWS`: ``linear``,
        ``conv``, ``lstm``, ``attention``), or ``to_view(module, output)``
        returning the output as an ``(N, C, S)`` tensor (``N * S`` samples of
        ``C`` features; ``(N, C)`` is also accepted) or ``None`` to skip the pass.
        ``output`` is what the module's ``forward`` returned.
    is_conv : bool, default False
        Leave the type out when a tracker is built with ``include_conv=False``.
    whole : bool, optional
        Track the module itself even if it has children, and do not search
        them. Defaults to True for a ``to_view`` function, False for a built-in view.

    Raises
    ------
    TypeError
        If ``module_type`` is not an ``nn.Module`` subclass or ``kind`` is neither a string nor callable.
    ValueError
        If ``kind`` is an unknown view name.

    Examples
    --------
    >>> class Block(nn.Module):  # returns (B, C, T)
    ...     def forward(self, x):
    ...         return x
    >>> register_layer_type(Block, lambda module, out: out)  # doctest: +SKIP
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"module_type must be a subclass of nn.Module, got {module_type!r}")
    if isinstance(kind, str):
        if kind not in VIEWS:
            raise ValueError(
                f"kind={kind!r} is not a view kind; choose one of {', '.join(map(repr, VIEWS))} or pass a "
                "function to_view(module, output)"
            )
        spec = LayerType(kind, bool(is_conv), bool(whole), VIEWS[kind])
    elif callable(kind):
        spec = LayerType("custom", bool(is_conv), True if whole is None else bool(whole), custom_view(kind))
    else:
        raise TypeError(f"kind must be a view name or a function to_view(module, output), got {type(kind).__name__}")
    _REGISTRY[module_type] = spec


def unregister_layer_type(module_type: type[nn.Module]) -> None:
    """Remove ``module_type`` from the registry (its subclasses fall back to the next registered base).

    Raises
    ------
    KeyError
        If the type is not registered.
    """
    if module_type not in _REGISTRY:
        raise KeyError(f"{module_type!r} is not registered; registered: {supported_types_text()}")
    del _REGISTRY[module_type]


def registered_layer_types() -> dict[type[nn.Module], LayerType]:
    """A copy of the registry, in registration order."""
    return dict(_REGISTRY)


# delve's set first, so messages list them first.
register_layer_type(nn.Linear, "linear")
register_layer_type(nn.Conv2d, "conv", is_conv=True)
register_layer_type(nn.LSTM, "lstm")
for _conv in (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    register_layer_type(_conv, "conv", is_conv=True)
register_layer_type(nn.GRU, "lstm")
register_layer_type(nn.RNN, "lstm")
# Its out_proj child never runs its own forward (the functional attention
# reads its weight), so the attention module itself is the layer.
register_layer_type(nn.MultiheadAttention, "attention", whole=True)


def resolve_layer_types(layer_types: str | Sequence[type[nn.Module]] | None) -> frozenset[type[nn.Module]] | None:
    """Turn a tracker's ``layer_types`` argument into the set of registered types it enables.

    Parameters
    ----------
    layer_types : "all", "delve", None or sequence of types
        ``"all"`` / ``None``: every registered type (also those registered
        later). ``"delve"``: ``nn.Linear``, ``nn.Conv2d`` and ``nn.LSTM`` only.
        A sequence: exactly those registered types (and their subclasses).

    Returns
    -------
    frozenset or None
        None means every registered type.
    """
    if layer_types is None or (isinstance(layer_types, str) and layer_types == "all"):
        return None
    if isinstance(layer_types, str):
        if layer_types == "delve":
            return frozenset(DELVE_LAYER_TYPES)
        raise ValueError(f"layer_types={layer_types!r} is not supported; choose 'all', 'delve' or a list of types")
    chosen = list(layer_types)
    for cls in chosen:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"layer_types must hold nn.Module subclasses, got {cls!r}")
        if cls not in _REGISTRY:
            raise ValueError(
                f"layer_types holds {cls.__name__}, which is not registered; registered: {supported_types_text()} "
                "(add a type with SaturationTracker.register_layer_type)"
            )
    return frozenset(chosen)


def _layer_type(module: nn.Module, types: Collection[type[nn.Module]] | None = None) -> LayerType | None:
    for cls in type(module).__mro__:  # nearest registered (and enabled) base class wins
        spec = _REGISTRY.get(cls)
        if spec is not None and (types is None or cls in types):
            return spec
    return None


def _tracked(module: nn.Module, include_conv: bool, types: Collection[type[nn.Module]] | None) -> LayerType | None:
    spec = _layer_type(module, types)
    if spec is None or (spec.is_conv and not include_conv):
        return None
    return spec


def layer_kind(
    module: nn.Module, include_conv: bool = True, types: Collection[type[nn.Module]] | None = None
) -> str | None:
    """The view kind that records ``module``, or None when it is not tracked.

    Parameters
    ----------
    module : nn.Module
    include_conv : bool, default True
        If False, conv types count as not tracked.
    types : collection of types, optional
        Only these registered types count (see :func:`resolve_layer_types`); all by default.
    """
    spec = _tracked(module, include_conv, types)
    return None if spec is None else spec.kind


def layer_view(module: nn.Module, types: Collection[type[nn.Module]] | None = None) -> ViewFn:
    """The view function that records ``module`` (see :data:`delve_fast.views.VIEWS`).

    Raises
    ------
    ValueError
        If the module's type is not registered.
    """
    spec = _layer_type(module, types)
    if spec is None or spec.view is None:
        raise ValueError(f"{type(module).__name__} is not a tracked layer type; registered: {supported_types_text()}")
    return spec.view


def supported_types_text() -> str:
    """``"nn.Linear, nn.Conv2d, nn.LSTM, ..."``: the registered types, for messages."""
    names = []
    for cls in _REGISTRY:
        prefix = "nn." if cls.__module__.startswith("torch.nn") else f"{cls.__module__}."
        names.append(prefix + cls.__name__)
    return ", ".join(names)


#: Wrappers recognised by type name (naming a layer must not import the compiler or FSDP) and the
#: attribute that holds the wrapped module: torch.compile's, FSDP's (the original API, which wraps
#: the module; ``fully_shard`` adds no level) and the activation-checkpoint and CPU-offload wrappers.
_NAMED_WRAPPERS: dict[str, str] = {
    "OptimizedModule": "_orig_mod",
    "FullyShardedDataParallel": "_fsdp_wrapped_module",
    "CheckpointWrapper": "_checkpoint_wrapped_module",
    "OffloadWrapper": "_checkpoint_wrapped_module",
}


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside any wrappers that add a level to the module tree but no layer.

    ``DistributedDataParallel``, ``DataParallel``, ``torch.compile``'s
    ``OptimizedModule``, FSDP's ``FullyShardedDataParallel`` and the
    activation-checkpoint wrappers each hold the model as a child (``module``,
    ``_orig_mod``, ``_fsdp_wrapped_module``, ``_checkpoint_wrapped_module``),
    which would otherwise add that name to every layer name below it.
    """
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
            continue
        attr = _NAMED_WRAPPERS.get(type(module).__name__)
        inner = getattr(module, attr, None) if attr is not None else None
        if not isinstance(inner, nn.Module):
            return module
        module = inner


def collect_layers(
    module: nn.Module,
    prefix: str,
    out: dict[str, nn.Module],
    seen: set[int] | None = None,
    include_conv: bool = True,
    types: Collection[type[nn.Module]] | None = None,
) -> dict[str, nn.Module]:
    """Add the tracked layers under ``module`` to ``out``, named from ``prefix``; a module reached twice is kept once."""
    seen = set() if seen is None else seen
    module = unwrap(module)
    spec = _tracked(module, include_conv, types)
    children = [(k, m) for k, m in module._modules.items() if m is not None]
    if children and not (spec is not None and spec.whole):
        for key, child in children:
            collect_layers(child, key if prefix == "" else f"{prefix}-{key}", out, seen, include_conv, types)
    elif spec is not None:
        if id(module) in seen:
            log.info("skipping %s: the same module is already tracked", prefix)
            return out
        seen.add(id(module))
        out[prefix] = module
        log.debug("found layer %s", prefix)
    else:
        log.debug("skipping %s (%s)", prefix, type(module).__name__)
    return out


def _is_single_layer(module: nn.Module, types: Collection[type[nn.Module]] | None) -> bool:
    spec = _layer_type(module, types)
    return spec is not None and (spec.whole or not module._modules)


def find_layers(
    modules: nn.Module | Sequence[nn.Module],
    include_conv: bool = True,
    types: Collection[type[nn.Module]] | None = None,
) -> dict[str, nn.Module]:
    """Collect the tracked layers of ``modules`` with delve's names, each module once.

    Parameters
    ----------
    modules : nn.Module or list of nn.Module
        A model (searched recursively), a single layer, or a list of either.
        A layer given directly (alone or in a list) is ``Module-<i>-<TypeName>``;
        the layers of a model in a list keep their own names, and a name that
        is already used becomes ``Module-<i>-<name>`` (with a warning).
    include_conv : bool, default True
        If False, conv layers are left out.
    types : collection of types, optional
        Only these registered types are tracked (see :func:`resolve_layer_types`).

    Returns
    -------
    dict
        Name to layer, in discovery order.
    """
    layers: dict[str, nn.Module] = {}
    seen: set[int] = set()
    if isinstance(modules, nn.Module):
        modules = unwrap(modules)
        if not _is_single_layer(modules, types):
            collect_layers(modules, "", layers, seen, include_conv, types)
            return layers
        modules = [modules]  # a single layer is a one-element list
    if not isinstance(modules, (list, tuple)):
        raise TypeError(f"modules must be an nn.Module or a list of nn.Module, got {type(modules).__name__}")
    for i, module in enumerate(modules):
        if not isinstance(module, nn.Module):
            raise TypeError(f"modules[{i}] is a {type(module).__name__}, not an nn.Module")
        module = unwrap(module)
        if _is_single_layer(module, types):
            collect_layers(module, f"Module-{i}-{type(module).__name__}", layers, seen, include_conv, types)
            continue
        found: dict[str, nn.Module] = {}
        collect_layers(module, "", found, seen, include_conv, types)
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


def select_layers(
    found: Mapping[str, nn.Module],
    layer_filter: Callable[[dict[str, nn.Module]], Mapping[str, nn.Module]],
    ignore_layer_names: Sequence[str] = (),
    include_conv: bool = True,
    types: Collection[type[nn.Module]] | None = None,
) -> dict[str, nn.Module]:
    """Apply the user's ``layer_filter``, then drop ignored names and untracked types.

    Raises
    ------
    TypeError
        If ``layer_filter`` does not return a mapping.
    """
    filtered = layer_filter(dict(found))
    if not isinstance(filtered, Mapping):
        raise TypeError(f"layer_filter must return a dict of name -> module, got {type(filtered).__name__}")
    ignored = set(ignore_layer_names)
    kept = {
        name: layer
        for name, layer in filtered.items()
        if name not in ignored and _tracked(layer, include_conv, types) is not None
    }
    # delve names a layer by a ``name`` attribute its user set on it (its own tests do so), and
    # matches ``ignore_layer_names`` against that name too.
    return {name: layer for name, layer in apply_own_names(kept).items() if name not in ignored}


def own_name(module: nn.Module) -> str | None:
    """The ``name`` attribute set on this module instance, if it is a non-empty string (else None)."""
    name = module.__dict__.get("name")
    return name if isinstance(name, str) and name else None


def apply_own_names(layers: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    """Rename each layer that carries its own ``name`` attribute to that name, as delve does.

    A name that another layer already uses (delve would overwrite one layer's
    data with the other's) keeps the layer's path name, with a warning.
    """
    wanted = {key: own_name(layer) or key for key, layer in layers.items()}
    counts: dict[str, int] = {}
    for name in wanted.values():
        counts[name] = counts.get(name, 0) + 1
    out: dict[str, nn.Module] = {}
    for key, layer in layers.items():
        name = wanted[key]
        # Only a name no other layer wants, and no other layer's path name, is taken: then no two
        # layers can end up under one name, whichever of them keep their path names.
        if name != key and (counts[name] > 1 or name in layers):
            warnings.warn(
                f"layer {key!r} has name attribute {name!r}, which another layer also uses; it is tracked as {key!r}",
                RuntimeWarning,
                stacklevel=4,
            )
            name = key
        out[name] = layer
    return out
