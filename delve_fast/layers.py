"""Which layers the tracker records, and the names it gives them.

A registry maps a layer type to the kind of view its output needs (a key of
:data:`delve_fast.views.VIEWS`). A module is tracked when its type, or the
nearest registered base class in its MRO, is in the registry, so subclasses of
``nn.Linear``, ``nn.Conv2d`` and ``nn.LSTM`` are tracked too. Supporting a new
layer type is one :func:`register_layer_type` call.

Names follow delve: the ``_modules`` keys from the model down to the layer
joined with ``-``; a layer given directly in a list is ``Module-<i>-<TypeName>``.
Wrappers that add a level without adding a layer (``DistributedDataParallel``,
``DataParallel``, ``torch.compile``'s ``OptimizedModule``) are looked through,
so a wrapped model gets the names of the plain one.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from delve_fast.views import VIEWS

__all__ = [
    "LayerType",
    "register_layer_type",
    "registered_layer_types",
    "layer_kind",
    "find_layers",
    "select_layers",
    "supported_types_text",
    "unwrap",
]

log = logging.getLogger("delve_fast")


@dataclass(frozen=True)
class LayerType:
    """How a registered layer type is recorded.

    Attributes
    ----------
    kind : str
        Key of :data:`delve_fast.views.VIEWS` that views its output.
    is_conv : bool
        Whether ``include_conv=False`` leaves it out.
    """

    kind: str
    is_conv: bool = False


_REGISTRY: dict[type[nn.Module], LayerType] = {}


def register_layer_type(module_type: type[nn.Module], kind: str, *, is_conv: bool = False) -> None:
    """Record outputs of ``module_type`` (and its subclasses) with the view ``kind``.

    Parameters
    ----------
    module_type : type
        A subclass of ``nn.Module``.
    kind : str
        One of :data:`delve_fast.views.VIEWS` (``linear``, ``conv``, ``lstm``).
    is_conv : bool, default False
        Leave the type out when a tracker is built with ``include_conv=False``.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"module_type must be a subclass of nn.Module, got {module_type!r}")
    if kind not in VIEWS:
        raise ValueError(f"kind={kind!r} is not a view kind; choose one of {', '.join(map(repr, VIEWS))}")
    _REGISTRY[module_type] = LayerType(kind, bool(is_conv))


def registered_layer_types() -> dict[type[nn.Module], LayerType]:
    """A copy of the registry, in registration order."""
    return dict(_REGISTRY)


# The default tracked set, as delve's.
register_layer_type(nn.Linear, "linear")
register_layer_type(nn.Conv2d, "conv", is_conv=True)
register_layer_type(nn.LSTM, "lstm")


def _layer_type(module: nn.Module) -> LayerType | None:
    for cls in type(module).__mro__:  # nearest registered base class wins
        spec = _REGISTRY.get(cls)
        if spec is not None:
            return spec
    return None


def layer_kind(module: nn.Module, include_conv: bool = True) -> str | None:
    """The view kind that records ``module``, or None when it is not tracked.

    Parameters
    ----------
    module : nn.Module
    include_conv : bool, default True
        If False, conv types count as not tracked.
    """
    spec = _layer_type(module)
    if spec is None or (spec.is_conv and not include_conv):
        return None
    return spec.kind


def supported_types_text() -> str:
    """``"nn.Linear, nn.Conv2d, nn.LSTM"``: the registered types, for messages."""
    names = []
    for cls in _REGISTRY:
        prefix = "nn." if cls.__module__.startswith("torch.nn") else f"{cls.__module__}."
        names.append(prefix + cls.__name__)
    return ", ".join(names)


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside any ``DistributedDataParallel`` / ``DataParallel`` / ``torch.compile`` wrappers.

    Each wrapper holds the model as a child (``module`` or ``_orig_mod``), which
    would otherwise add ``module-`` or ``_orig_mod-`` to every layer name.
    ``torch.compile``'s wrapper is recognised by its type name, so naming a
    layer never imports the compiler stack.
    """
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif type(module).__name__ == "OptimizedModule" and isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            return module


def _walk(module: nn.Module, prefix: str, out: dict[str, nn.Module], seen: set[int], include_conv: bool) -> None:
    """Collect the tracked leaves under ``module``; a module reached twice is kept once."""
    module = unwrap(module)
    children = [(k, m) for k, m in module._modules.items() if m is not None]
    if children:
        for key, child in children:
            _walk(child, key if prefix == "" else f"{prefix}-{key}", out, seen, include_conv)
    elif layer_kind(module, include_conv) is not None:
        if id(module) in seen:
            log.info("skipping %s: the same module is already tracked", prefix)
            return
        seen.add(id(module))
        out[prefix] = module
        log.debug("found layer %s", prefix)
    else:
        log.debug("skipping %s (%s)", prefix, type(module).__name__)


def _is_single_layer(module: nn.Module) -> bool:
    return layer_kind(module) is not None and not module._modules


def find_layers(modules: nn.Module | Sequence[nn.Module], include_conv: bool = True) -> dict[str, nn.Module]:
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

    Returns
    -------
    dict
        Name to layer, in discovery order.
    """
    layers: dict[str, nn.Module] = {}
    seen: set[int] = set()
    if isinstance(modules, nn.Module):
        modules = unwrap(modules)
        if not _is_single_layer(modules):
            _walk(modules, "", layers, seen, include_conv)
            return layers
        modules = [modules]  # a single layer is a one-element list
    if not isinstance(modules, (list, tuple)):
        raise TypeError(f"modules must be an nn.Module or a list of nn.Module, got {type(modules).__name__}")
    for i, module in enumerate(modules):
        if not isinstance(module, nn.Module):
            raise TypeError(f"modules[{i}] is a {type(module).__name__}, not an nn.Module")
        module = unwrap(module)
        if _is_single_layer(module):
            _walk(module, f"Module-{i}-{type(module).__name__}", layers, seen, include_conv)
            continue
        found: dict[str, nn.Module] = {}
        _walk(module, "", found, seen, include_conv)
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
    return {name: layer for name, layer in filtered.items() if name not in ignored and layer_kind(layer) is not None}
