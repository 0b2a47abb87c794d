"""Marking values to survive a traced block.

Only values marked with :func:`save` are written back to the user's frame when the
outermost trace ends (unless a tracer keeps every local); the rest are dropped with
the block's frame. Marks live as long as the outermost active trace and are
released when it ends, so saving costs one dictionary entry per value.
"""

from __future__ import annotations

import threading
from typing import Any, TypeVar

__all__ = ["SAVED", "SavedValues", "save"]

T = TypeVar("T")


class SavedValues:
    """Identity set of the values saved during the outermost active trace.

    Trace bodies may run on worker threads (the interleaver), so the set is
    process-wide, not thread-local.
    """

    def __init__(self) -> None:
        self._depth = 0
        self._values: dict[int, Any] = {}
        self._lock = threading.Lock()

    def enter(self) -> None:
        """A trace started executing."""
        with self._lock:
            self._depth += 1

    def exit(self) -> None:
        """A trace finished; the outermost one releases every mark."""
        with self._lock:
            self._depth -= 1
            if self._depth <= 0:
                self._depth = 0
                self._values.clear()

    @property
    def active(self) -> bool:
        """Whether some trace is executing."""
        return self._depth > 0

    def mark(self, value: T) -> T:
        """Mark ``value`` as saved (no effect outside a trace) and return it."""
        if self._depth:
            # Keep the object alive while marked so its id cannot be reused.
            self._values[id(value)] = value
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
