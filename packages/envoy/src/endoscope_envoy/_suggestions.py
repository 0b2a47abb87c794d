"""AttributeErrors whose message already suggests the names the user meant."""

from __future__ import annotations

__all__ = ["attribute_error"]


class _Suggested:
    """The ``obj`` of an AttributeError whose message already suggests names.

    Python's traceback printing (3.12 and later, and 3.11's own printer) appends
    ``Did you mean: ...?`` computed from ``dir(error.obj)``; an object with no
    attributes to offer keeps it from repeating, worse, the message's suggestion
    (an Envoy's own list covers children, aliases and the module's attributes).
    """

    __slots__ = ()

    def __dir__(self) -> list[str]:
        return []


_SUGGESTED = _Suggested()


def attribute_error(message: str, name: str) -> AttributeError:
    """An AttributeError for the missing ``name`` whose ``message`` has the suggestions."""
    return AttributeError(message, name=name, obj=_SUGGESTED)
