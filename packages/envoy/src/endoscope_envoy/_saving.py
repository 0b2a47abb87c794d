"""``.save()`` on the values modules produce.

``value.save()`` marks a value to survive its trace, like :func:`save`. Module
values are tensors, or tuples, lists and dicts of them (transformers' ModelOutput
is a dict), so those types get a ``save`` method once, when endoscope-envoy is
imported; for any other value use ``endoscope_envoy.save(value)``.

Why not every object, as nnsight does: a method on ``object`` shows up in
``dir()`` of every class, and libraries that validate class attributes (anyio's
typed attribute sets, imported by huggingface_hub) refuse to define classes
after it; mounting it only while a trace runs costs hundreds of microseconds per
trace (``PyType_Modified(object)`` invalidates every type's attribute cache).
Built-in types refuse new attributes, so the method is placed in their type
dictionaries directly.
"""

from __future__ import annotations

import ctypes
import gc
from typing import Any, TypeVar

import torch

from endoscope_tracing import save

__all__ = ["SAVE_TYPES", "mount_save", "save", "unmount_save"]

T = TypeVar("T")

SAVE_TYPES: tuple[type, ...] = (torch.Tensor, tuple, list, dict)


def _save_method(self: T) -> T:
    """Mark this value to survive the trace it was made in, and return it."""
    return save(self)


def _namespace(kind: type) -> dict[str, Any]:
    return gc.get_referents(kind.__dict__)[0]


def mount_save() -> None:
    """Give tensors, tuples, lists and dicts a ``.save()`` method (idempotent)."""
    for kind in SAVE_TYPES:
        namespace = _namespace(kind)
        if "save" not in namespace:
            namespace["save"] = _save_method
            ctypes.pythonapi.PyType_Modified(ctypes.py_object(kind))


def unmount_save() -> None:
    """Remove the ``.save()`` methods :func:`mount_save` added."""
    for kind in SAVE_TYPES:
        namespace = _namespace(kind)
        if namespace.get("save") is _save_method:
            del namespace["save"]
            ctypes.pythonapi.PyType_Modified(ctypes.py_object(kind))
