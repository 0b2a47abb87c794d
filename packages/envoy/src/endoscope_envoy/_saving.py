"""``.save()`` on any value made inside a trace.

``value.save()`` marks a value to survive its trace, like :func:`save`. Values in
a trace are tensors, tuples, dicts, dataclasses, numbers, anything a module
returns, and built-in types refuse new attributes, so a ``save`` method is
mounted on ``object`` itself, through its type dictionary, once when
endoscope-envoy is imported (as nnsight does). A class with its own ``save``
keeps it. Mounting per trace would be cleaner but costs hundreds of
microseconds: ``PyType_Modified(object)`` invalidates every type's attribute
cache.
"""

from __future__ import annotations

import ctypes
import gc
from typing import Any, TypeVar

from endoscope_tracing import save

__all__ = ["mount_save", "save", "unmount_save"]

T = TypeVar("T")


def _save_method(self: T) -> T:
    """Mark this value to survive the trace it was made in, and return it."""
    return save(self)


def _object_dict() -> dict[str, Any]:
    return gc.get_referents(object.__dict__)[0]


def mount_save() -> None:
    """Give every object a ``.save()`` method (idempotent)."""
    namespace = _object_dict()
    if namespace.get("save") is not _save_method:
        namespace["save"] = _save_method
        ctypes.pythonapi.PyType_Modified(ctypes.py_object(object))


def unmount_save() -> None:
    """Remove the ``.save()`` method :func:`mount_save` added."""
    namespace = _object_dict()
    if namespace.get("save") is _save_method:
        del namespace["save"]
        ctypes.pythonapi.PyType_Modified(ctypes.py_object(object))
