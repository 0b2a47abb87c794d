"""Errors raised inside a traced block, shown at the user's own lines.

The block is compiled with the caller's filename and original line numbers, so its
frames already point at the user's code. What remains is to drop endoscope's own
frames from the traceback (unless ``CONFIG.debug``) and to unlink the control-flow
:class:`ExitTracingException` from the error's context chain. Because ``__exit__``
re-raises the cleaned error with a bare ``raise``, its own frame (stripped along
with the rest) is not added back on 3.11+: the live traceback holds only the
user's frames. CPython 3.10 re-raises the traceback saved when the error was
caught, whose head is ``__exit__``'s own frame; there :func:`install_excepthook`
hides that one frame when the error goes uncaught (pytest and IPython honour
``__tracebackhide__`` instead).
"""

from __future__ import annotations

import itertools
import sys
from types import TracebackType
from typing import Any

from ._config import CONFIG
from ._frames import is_internal_frame

__all__ = ["clean_exception", "install_excepthook", "strip_internal_frames"]


def strip_internal_frames(tb: TracebackType | None) -> TracebackType | None:
    """The traceback chain ``tb`` without frames of internal packages."""
    kept: list[TracebackType] = []
    while tb is not None:
        if not is_internal_frame(tb.tb_frame):
            kept.append(tb)
        tb = tb.tb_next
    for current, following in itertools.pairwise(kept):
        current.tb_next = following
    if kept:
        kept[-1].tb_next = None
        return kept[0]
    return None


def clean_exception(error: BaseException, control: BaseException | None = None) -> None:
    """Prepare ``error`` to be re-raised to the user.

    Unlinks ``control`` (the exception that carried control into ``__exit__``)
    from the context chain and, unless debugging, hides internal frames of
    ``error`` and of every exception chained to it.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if control is not None and current.__context__ is control:
            current.__context__ = None
        if not CONFIG.debug and current.__traceback__ is not None:
            stripped = strip_internal_frames(current.__traceback__)
            if stripped is not None:  # never leave an error with no location at all
                current.__traceback__ = stripped
        current = current.__cause__ or current.__context__


_installed = False


def install_excepthook() -> None:
    """Hide internal frames of uncaught errors (idempotent; chains the previous hook)."""
    global _installed
    if _installed:
        return
    _installed = True
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> Any:
        if not CONFIG.debug:
            clean_exception(value)
            tb = value.__traceback__
        return previous(kind, value, tb)

    sys.excepthook = hook
