"""``.save()`` on tensors and on the containers module values come in.

``value.save()`` marks a value to survive its trace, like :func:`save`. Tensors
get the method as an ordinary attribute of ``torch.Tensor``. Module outputs are
often tuples, lists or dicts (and transformers' ModelOutput, a dict), whose
built-in types refuse new attributes; the method is placed in their type
dictionaries directly, once, when endoscope-envoy is imported.
"""

from __future__ import annotations

import ctypes
import gc
from typing import Any, TypeVar

import torch

from endoscope_tracing import save

__all__ = ["install_save_methods", "save"]

T = TypeVar("T")


def _save_method(self: T) -> T:
    """Mark this value to survive the trace it was made in, and return it."""
    return save(self)


def _add_to_builtin(kind: type, name: str, value: Any) -> None:
    if name in kind.__dict__:
        return
    namespace = gc.get_referents(kind.__dict__)[0]
    namespace[name] = value
    ctypes.pythonapi.PyType_Modified(ctypes.py_object(kind))


def install_save_methods() -> None:
    """Give tensors, tuples, lists and dicts a ``.save()`` method (idempotent)."""
    if getattr(torch.Tensor, "save", None) is not _save_method:
        torch.Tensor.save = _save_method  # type: ignore[attr-defined]
    for kind in (tuple, list, dict):
        _add_to_builtin(kind, "save", _save_method)
