"""``.save()`` on any value made inside a trace.

``value.save()`` marks a value to survive its trace, like :func:`save`. Values in
a trace are tensors, tuples, dicts, dataclasses, numbers, anything a module
returns, and built-in types refuse new attributes. So while a trace runs, a
``save`` method is mounted on ``object`` itself (through its type dictionary; a
class with its own ``save`` keeps it) and unmounted when the outermost trace
ends, so nothing outside traces sees it.
"""

from __future__ import annotations

import ctypes
import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from endoscope_tracing import save

__all__ = ["mounted_save", "save"]

T = TypeVar("T")


def _save_method(self: T) -> T:
    """Mark this value to survive the trace it was made in, and return it."""
    return save(self)


_lock = threading.Lock()
_depth = 0
_object_dict: dict[str, Any] = gc.get_referents(object.__dict__)[0]


def _changed() -> None:
    # Attribute caches of every type hang off object's version tag.
    ctypes.pythonapi.PyType_Modified(ctypes.py_object(object))


@contextmanager
def mounted_save() -> Iterator[None]:
    """Make ``.save()`` available on every object for the duration of the block."""
    global _depth
    with _lock:
        _depth += 1
        if _depth == 1 and "save" not in _object_dict:
            _object_dict["save"] = _save_method
            _changed()
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _object_dict.get("save") is _save_method:
                del _object_dict["save"]
                _changed()
