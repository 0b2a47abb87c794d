"""Nested values as JSON nodes: tensors go to shards, everything around them to the manifest.

A node is a small JSON object with a ``"type"``. Tensor nodes are produced by the
shard writer (they name a shard and a key); every other node records structure or a
plain leaf exactly (floats as ``float.hex``), so a value read back from disk has the
same tuples, lists, dicts, dataclasses, named tuples, ``None`` and ints as the value
that was written. Objects this module does not know come back as :class:`OpaqueValue`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import torch

from ._nested import describe_tensor, is_dataclass_instance, is_namedtuple, join_parts

__all__ = ["OpaqueValue", "decode", "describe_node", "dtype_from_name", "encode"]

Node = dict[str, Any]
PutTensor = Callable[[torch.Tensor], Node]
GetTensor = Callable[[Node], torch.Tensor]


class OpaqueValue:
    """Stands in for an object a disk cache could not store (neither tensor nor structure).

    Attributes:
        type_name: ``module:qualname`` of the original object's class.
        text: the original object's ``repr``, shortened.
    """

    __slots__ = ("text", "type_name")

    def __init__(self, type_name: str, text: str) -> None:
        self.type_name = type_name
        self.text = text

    def __repr__(self) -> str:
        return f"OpaqueValue({self.type_name}: {self.text})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, OpaqueValue)
            and other.type_name == self.type_name
            and other.text == self.text
        )

    def __hash__(self) -> int:
        return hash((self.type_name, self.text))


def dtype_from_name(name: str) -> torch.dtype:
    """``"float32"`` to ``torch.float32``."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown torch dtype {name!r} in cache manifest")
    return dtype


def _class_ref(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve(ref: str | None) -> type | None:
    """The class named by ``module:qualname``, or None when it cannot be found."""
    if not ref:
        return None
    module_name, _, qualname = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError):
        return None
    return obj if isinstance(obj, type) else None


def encode(value: Any, put: PutTensor) -> Node:
    """Turn ``value`` into a JSON-ready node, handing every tensor to ``put``.

    Args:
        value: the nested value to record.
        put: stores one tensor and returns its node.

    Returns:
        The node describing ``value``.
    """
    if isinstance(value, torch.Tensor):
        return put(value)
    if value is None:
        return {"type": "none"}
    if value is Ellipsis:
        return {"type": "ellipsis"}
    if isinstance(value, bool):
        return {"type": "bool", "value": value}
    if isinstance(value, int):
        return {"type": "int", "value": int(value)}
    if isinstance(value, float):
        return {"type": "float", "value": float(value).hex()}
    if isinstance(value, complex):
        return {"type": "complex", "value": [value.real.hex(), value.imag.hex()]}
    if isinstance(value, str):
        return {"type": "str", "value": str(value)}
    if isinstance(value, bytes):
        return {"type": "bytes", "value": value.hex()}
    if isinstance(value, torch.dtype):
        return {"type": "dtype", "value": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"type": "device", "value": str(value)}
    if isinstance(value, slice):
        return {
            "type": "slice",
            "items": [encode(v, put) for v in (value.start, value.stop, value.step)],
        }
    if is_dataclass_instance(value):
        return {
            "type": "dataclass",
            "class": _class_ref(type(value)),
            "fields": {
                f.name: encode(getattr(value, f.name), put) for f in dataclasses.fields(value)
            },
        }
    if isinstance(value, tuple):
        if type(value) is torch.Size:
            return {"type": "size", "value": list(value)}
        items = [encode(item, put) for item in value]
        if is_namedtuple(value):
            return {
                "type": "namedtuple",
                "class": _class_ref(type(value)),
                "fields": list(type(value)._fields),  # type: ignore[attr-defined]
                "items": items,
            }
        return _with_class({"type": "tuple", "items": items}, value, tuple)
    if isinstance(value, list):
        return _with_class({"type": "list", "items": [encode(i, put) for i in value]}, value, list)
    if isinstance(value, dict):
        pairs = [[encode(k, put), encode(v, put)] for k, v in value.items()]
        return _with_class({"type": "dict", "items": pairs}, value, dict)
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not lose the rest of the value
        text = "<unprintable>"
    if len(text) > 200:
        text = text[:197] + "..."
    return {"type": "opaque", "class": _class_ref(type(value)), "repr": text}


def _with_class(node: Node, value: Any, base: type) -> Node:
    if type(value) is not base:
        node["class"] = _class_ref(type(value))
    return node


def decode(node: Node, get: GetTensor) -> Any:
    """Rebuild the value ``node`` describes, reading tensors through ``get``.

    Classes named in the node (dataclasses, named tuples, container subclasses) are
    imported by name; one that cannot be imported or rebuilt falls back to the plain
    container (``dict`` for a dataclass, ``tuple``, ``list``, ``dict``).
    """
    kind = node["type"]
    if kind == "tensor":
        return get(node)
    if kind == "none":
        return None
    if kind == "ellipsis":
        return Ellipsis
    if kind in ("bool", "int", "str"):
        return node["value"]
    if kind == "float":
        return float.fromhex(node["value"])
    if kind == "complex":
        real, imag = node["value"]
        return complex(float.fromhex(real), float.fromhex(imag))
    if kind == "bytes":
        return bytes.fromhex(node["value"])
    if kind == "dtype":
        return dtype_from_name(node["value"])
    if kind == "device":
        return torch.device(node["value"])
    if kind == "size":
        return torch.Size(node["value"])
    if kind == "slice":
        return slice(*(decode(item, get) for item in node["items"]))
    if kind == "dataclass":
        fields = {name: decode(item, get) for name, item in node["fields"].items()}
        return _rebuild_dataclass(_resolve(node["class"]), fields)
    if kind == "namedtuple":
        items = [decode(item, get) for item in node["items"]]
        cls = _resolve(node["class"])
        if cls is not None and issubclass(cls, tuple):
            try:
                return cls(*items)
            except TypeError:
                pass
        return tuple(items)
    if kind in ("tuple", "list"):
        base: Any = tuple if kind == "tuple" else list
        items = [decode(item, get) for item in node["items"]]
        cls = _resolve(node.get("class"))
        if cls is not None and issubclass(cls, base):
            try:
                return cls(items)
            except TypeError:
                pass
        return base(items)
    if kind == "dict":
        pairs = [(decode(k, get), decode(v, get)) for k, v in node["items"]]
        cls = _resolve(node.get("class"))
        if cls is not None and issubclass(cls, dict):
            try:
                rebuilt = cls()
                for key, item in pairs:
                    rebuilt[key] = item
                return rebuilt
            except TypeError:
                pass
        return dict(pairs)
    if kind == "opaque":
        return OpaqueValue(node["class"], node["repr"])
    raise ValueError(f"unknown node type {kind!r} in cache manifest")


def _rebuild_dataclass(cls: type | None, fields: dict[str, Any]) -> Any:
    if cls is None or not dataclasses.is_dataclass(cls):
        return fields
    known = {f.name: f for f in dataclasses.fields(cls)}
    if set(known) != set(fields):
        return fields
    try:
        obj = cls(**{name: fields[name] for name, f in known.items() if f.init})
    except TypeError:
        return fields
    for name, f in known.items():
        if not f.init:
            object.__setattr__(obj, name, fields[name])
    return obj


def describe_node(node: Node) -> str:
    """Summarise a node like :func:`endoscope_cache._nested.describe`, reading nothing."""
    kind = node["type"]
    if kind == "tensor":
        return describe_tensor(node["dtype"], node["shape"])
    if kind == "none":
        return "None"
    if kind == "ellipsis":
        return "Ellipsis"
    if kind in ("bool", "int", "str", "dtype", "device", "float", "complex", "bytes"):
        return repr(decode(node, _no_tensor))
    if kind == "size":
        return repr(torch.Size(node["value"]))
    if kind == "dataclass":
        parts = [f"{k}={describe_node(v)}" for k, v in node["fields"].items()]
        return f"{_short(node['class'])}({join_parts(parts)})"
    if kind == "namedtuple":
        parts = [f"{k}={describe_node(v)}" for k, v in zip(node["fields"], node["items"])]
        return f"{_short(node['class'])}({join_parts(parts)})"
    if kind == "tuple":
        items = node["items"]
        return f"({join_parts([describe_node(i) for i in items])}{',' if len(items) == 1 else ''})"
    if kind == "list":
        return f"[{join_parts([describe_node(i) for i in node['items']])}]"
    if kind == "dict":
        parts = [f"{describe_node(k)}: {describe_node(v)}" for k, v in node["items"]]
        return "{" + join_parts(parts) + "}"
    if kind == "slice":
        return f"slice({', '.join(describe_node(i) for i in node['items'])})"
    return _short(str(node.get("class", kind)))


def _no_tensor(node: Node) -> torch.Tensor:
    raise ValueError("a leaf node unexpectedly holds a tensor")


def _short(ref: str) -> str:
    return ref.rpartition(":")[2].rpartition(".")[2]
