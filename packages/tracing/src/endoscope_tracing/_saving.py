"""Marking values to survive a traced block.

Only values marked with :func:`save` are written back to the user's frame when the
outermost trace ends (unless a tracer keeps every local); the rest are dropped with
the block's frame. Marks live as long as the outermost active trace and are
released when it ends, so saving costs one dictionary entry per value.
"""

from __future__ import annotations

import contextvars
from typing import Any, TypeVar

__all__ = ["SAVED", "SavedValues", "save"]

T = TypeVar("T")


class _Scope:
    """The marks of one outermost trace and how deep its traces are nested."""

    __slots__ = ("depth", "values")

    def __init__(self) -> None:
        self.depth = 0
        self.values: dict[int, Any] = {}


class SavedValues:
    """Identity set of the values saved during the outermost active trace.

    One set per outermost trace, kept in a :mod:`contextvars` variable: traces of
    other threads running at the same time have their own (their marks neither
    leak into this trace's results nor outlive their trace), while a trace body
    run on a worker thread or greenlet runs in a copy of its trace's context and
    shares its set.
    """

    def __init__(self) -> None:
        self._scope: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar(
            "endoscope_saved_values", default=None
        )

    @property
    def _values(self) -> dict[int, Any]:
        scope = self._scope.get()
        return scope.values if scope is not None else {}

    def enter(self) -> None:
        """A trace started executing."""
        scope = self._scope.get()
        if scope is None or scope.depth <= 0:
            # The outermost trace of this context (a copy of an ended trace's
            # context starts afresh too).
            scope = _Scope()
            self._scope.set(scope)
        scope.depth += 1

    def exit(self) -> None:
        """A trace finished; the outermost one releases every mark."""
        scope = self._scope.get()
        if scope is None:
            return
        scope.depth -= 1
        if scope.depth <= 0:
            scope.depth = 0
            scope.values.clear()
            self._scope.set(None)

    @property
    def active(self) -> bool:
        """Whether some trace is executing in this context."""
        scope = self._scope.get()
        return scope is not None and scope.depth > 0

    def mark(self, value: T) -> T:
        """Mark ``value`` as saved (no effect outside a trace) and return it."""
        scope = self._scope.get()
        if scope is not None and scope.depth:
            # Keep the object alive while marked so its id cannot be reused.
            scope.values[id(value)] = value
        return value

    def __contains__(self, value: object) -> bool:
        return self._values.get(id(value), _ABSENT) is value

    def keeps(self, value: object) -> bool:
        """Whether ``value`` is saved, or is a list, tuple or dict holding saved values.

        ``hidden = [layer.output.save() for layer in layers]`` keeps the list:
        users save the items and expect the container they built to survive.
        """
        if self._values.get(id(value), _ABSENT) is value:
            return True
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, (list, tuple)):
            return False
        return any(self._values.get(id(item), _ABSENT) is item for item in value)

    def __len__(self) -> int:
        return len(self._values)


_ABSENT = object()

SAVED = SavedValues()


def save(value: T) -> T:
    """Mark ``value`` to survive the traced block it is created in.

    Args:
        value: any object.

    Returns:
        ``value`` itself, so ``h = save(model.layer.output)`` reads naturally.
    """
    return SAVED.mark(value)
