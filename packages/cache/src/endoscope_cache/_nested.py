"""Walking nested activation values: mapping every tensor, describing shapes.

Module outputs and inputs are rarely a bare tensor: they are tuples, lists, dicts,
dataclasses (Hugging Face ``ModelOutput``) or named tuples holding tensors next to
``None``, ints and other plain leaves. Everything here rebuilds or describes such a
value without caring which of those shapes it has.
"""

from __future__ import annotations

import copy
import dataclasses
import operator
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "describe",
    "describe_tensor",
    "is_dataclass_instance",
    "is_namedtuple",
    "join_parts",
    "map_tensors",
]

# How many items of one container ``describe`` spells out before eliding the rest.
_MAX_ITEMS = 6


def is_namedtuple(value: object) -> bool:
    """Whether ``value`` is an instance of a ``collections.namedtuple`` class."""
    return isinstance(value, tuple) and hasattr(type(value), "_fields")


def is_dataclass_instance(value: object) -> bool:
    """Whether ``value`` is a dataclass instance (not a dataclass type)."""
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Return ``value`` with ``fn`` applied to every tensor inside it.

    Tuples (plain, named and ``torch.return_types``), lists, dicts and dataclass
    instances are rebuilt around the mapped tensors; any other leaf is kept as it is.
    A container none of whose items changed is returned unchanged (same object).

    Args:
        value: a tensor or a nested structure holding tensors.
        fn: applied to each tensor; its result replaces the tensor.

    Returns:
        The rebuilt value.
    """
    if isinstance(value, torch.Tensor):
        return fn(value)
    return _map(value, fn)


# Leaves that can hold no tensor, answered before any container check (add() is hot).
_LEAVES = frozenset({type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device})


def _unchanged(new: list[Any], old: Any) -> bool:
    return all(map(operator.is_, new, old))


def _map(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    cls = type(value)
    if cls in _LEAVES:
        return value
    if isinstance(value, torch.Tensor):
        return fn(value)
    if cls is tuple:
        items = [_map(item, fn) for item in value]
        return value if _unchanged(items, value) else tuple(items)
    if cls is dict:
        mapped: dict[Any, Any] = {key: _map(item, fn) for key, item in value.items()}
        return value if _unchanged(list(mapped.values()), value.values()) else mapped
    # Dataclasses before other dicts: a ModelOutput is also a dict, but rebuilding it
    # through its constructor keeps its attribute and key views consistent.
    if is_dataclass_instance(value):
        return _map_dataclass(value, fn)
    if isinstance(value, tuple):
        if cls is torch.Size:
            return value
        items = [_map(item, fn) for item in value]
        if _unchanged(items, value):
            return value
        if is_namedtuple(value):
            return type(value)(*items)
        try:  # structseq types such as torch.return_types.max take one sequence
            return type(value)(items)
        except TypeError:
            return tuple(items)
    if isinstance(value, list):
        items = [_map(item, fn) for item in value]
        if _unchanged(items, value):
            return value
        if cls is list:
            return items
        rebuilt = copy.copy(value)
        rebuilt[:] = items
        return rebuilt
    if isinstance(value, dict):
        mapped = {key: _map(item, fn) for key, item in value.items()}
        if _unchanged(list(mapped.values()), value.values()):
            return value
        # copy.copy keeps what the subclass carries besides its items
        # (a defaultdict's factory, an OrderedDict's order).
        rebuilt_dict = copy.copy(value)
        for key, item in mapped.items():
            rebuilt_dict[key] = item
        return rebuilt_dict
    return value


def _map_dataclass(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    fields = dataclasses.fields(value)
    mapped = {field.name: _map(getattr(value, field.name), fn) for field in fields}
    if all(mapped[field.name] is getattr(value, field.name) for field in fields):
        return value
    rebuilt = dataclasses.replace(value, **{f.name: mapped[f.name] for f in fields if f.init})
    for field in fields:
        if not field.init:
            object.__setattr__(rebuilt, field.name, mapped[field.name])
    return rebuilt


def describe_tensor(dtype: torch.dtype | str, shape: tuple[int, ...] | list[int]) -> str:
    """Spell a tensor as ``dtype[d0, d1, ...]``, e.g. ``float32[2, 8]``."""
    name = str(dtype).removeprefix("torch.")
    return f"{name}[{', '.join(str(d) for d in shape)}]"


def describe(value: Any) -> str:
    """A one-line summary of a nested value: tensors by dtype and shape, not by content.

    Args:
        value: anything a module may take or return.

    Returns:
        For example ``(float32[2, 8], None)`` or ``Out(logits=float32[1, 5, 10])``.
    """
    if isinstance(value, torch.Tensor):
        return describe_tensor(value.dtype, tuple(value.shape))
    if is_dataclass_instance(value):
        parts = [f"{f.name}={describe(getattr(value, f.name))}" for f in dataclasses.fields(value)]
        return f"{type(value).__name__}({join_parts(parts)})"
    if isinstance(value, tuple):
        if type(value) is torch.Size:
            return repr(value)
        if is_namedtuple(value):
            fields = type(value)._fields  # type: ignore[attr-defined]
            parts = [f"{name}={describe(item)}" for name, item in zip(fields, value)]
            return f"{type(value).__name__}({join_parts(parts)})"
        parts = [describe(item) for item in value]
        return f"({join_parts(parts)}{',' if len(value) == 1 else ''})"
    if isinstance(value, list):
        return f"[{join_parts([describe(item) for item in value])}]"
    if isinstance(value, dict):
        return "{" + join_parts([f"{key!r}: {describe(item)}" for key, item in value.items()]) + "}"
    if value is None or isinstance(value, (bool, int, float, complex, torch.dtype, torch.device)):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:37]) + "..."
    return type(value).__name__


def join_parts(parts: list[str]) -> str:
    """Comma-join ``parts``, eliding all but the first few."""
    if len(parts) > _MAX_ITEMS:
        parts = [*parts[:_MAX_ITEMS], f"... {len(parts) - _MAX_ITEMS} more"]
    return ", ".join(parts)
