"""Exceptions of the interleaving engine, and how they name the user's line.

Errors a user causes (asking for a value out of order, asking for one that never
comes, a barrier that is never completed) are *built* on the model side, which
knows what ran, but *raised* inside the worker, at the line of intervention code
that asked. Before raising, the worker walks its own stack to the first frame that
is not library code and records that location, so the message says where.
"""

from __future__ import annotations

import linecache
import sys
from types import FrameType, TracebackType
from typing import Any

__all__ = [
    "LIBRARY_MODULES",
    "Cancelation",
    "EarlyStopException",
    "MissedProviderError",
    "OutOfOrderError",
    "SkipException",
    "describe_frame",
    "intervention_traceback",
    "note_intervention_traceback",
    "user_frame",
]

#: Top-level module names whose frames are library frames, never "the user's line".
#: Packages built on the interleaver add their own name here.
LIBRARY_MODULES: set[str] = {
    "endoscope",
    "endoscope_cache",
    "endoscope_envoy",
    "endoscope_interleaver",
    "endoscope_source",
    "endoscope_tracing",
}


def user_frame(frame: FrameType | None = None) -> FrameType | None:
    """Return the innermost frame that does not belong to a library module.

    Args:
        frame: where to start walking outwards; the caller's frame by default.

    Returns:
        The first frame whose module is not in :data:`LIBRARY_MODULES`, or ``None``.
    """
    if frame is None:
        frame = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__") or ""
        if module.partition(".")[0] not in LIBRARY_MODULES:
            return frame
        frame = frame.f_back
    return None


def describe_frame(frame: FrameType | None) -> str:
    """Describe a frame as ``File "x.py", line 3, in f`` plus its source line."""
    if frame is None:
        return "an unknown location"
    code = frame.f_code
    text = f'File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}'
    source = linecache.getline(code.co_filename, frame.f_lineno, frame.f_globals).strip()
    if source:
        text += f"\n    {source}"
    return text


class _Located(Exception):
    """Base for errors whose message names the user's line once it is known."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        #: Where the user's code asked, as ``(filename, lineno)``; set when raised.
        self.location: tuple[str, int] | None = None
        self._where = ""

    def locate(self, frame: FrameType | None) -> None:
        """Record the user's frame this error is raised at."""
        if frame is not None:
            self.location = (frame.f_code.co_filename, frame.f_lineno)
        self._where = describe_frame(frame)


class MissedProviderError(_Located):
    """A requested value was never provided before the run ended.

    Attributes:
        requester: the requester string that was asked for, e.g. ``model.fc.output.i0``.
        location: ``(filename, lineno)`` of the asking line, once raised in the worker.
    """

    def __init__(self, requester: str, reason: str, hint: str) -> None:
        super().__init__(requester, reason, hint)
        self.requester = requester
        self.reason = reason
        self.hint = hint

    def __str__(self) -> str:
        where = f"\nAsked at: {self._where}" if self._where else ""
        return f"{self.reason}{where}\n{self.hint}"


class OutOfOrderError(MissedProviderError):
    """A value was requested after the computation had already produced it.

    Attributes:
        requester: what was asked for.
        provider: where the computation was when it was asked (``None`` at the end).
    """

    def __init__(self, requester: str, provider: str | None, reason: str, hint: str) -> None:
        super().__init__(requester, reason, hint)
        self.provider = provider


class EarlyStopException(Exception):
    """Raised to end the computation early (``tracer.stop()``); the interleaver absorbs it."""


class SkipException(Exception):
    """Raised by :meth:`Interleaver.handle` when interventions asked to skip a provider.

    The code that called ``handle`` (e.g. a module's input hook) catches it and
    returns the replacement instead of running the computation.

    Attributes:
        values: one ``(batch_group, replacement)`` pair per skipping mediator, in
            mediator order. Batched callers combine them; unbatched callers use
            :attr:`value`.
    """

    def __init__(self, values: list[tuple[Any, Any]]) -> None:
        super().__init__(f"skipped by {len(values)} intervention(s)")
        self.values = values

    @property
    def value(self) -> Any:
        """The replacement of the last skipping mediator (later mediators win, as with swaps)."""
        return self.values[-1][1]


class Cancelation(Exception):
    """Raised inside a worker whose pending request was canceled (teardown, error, stop)."""


# Where an intervention's exception keeps the traceback it left the intervention
# with: re-raised on the model side, it gains the computation's frames on its way
# out (every module call between the run's start and the point served), which a
# user reading the error rarely wants.
_INTERVENTION_TRACEBACK = "__endoscope_intervention_traceback__"


def note_intervention_traceback(error: BaseException) -> None:
    """Record ``error``'s traceback as the one it left its intervention with.

    Called by the model side just before it re-raises an intervention's error.
    The recorded chain is the tail of the error's own chain from then on, so it
    keeps nothing alive that the error does not.
    """
    try:
        setattr(error, _INTERVENTION_TRACEBACK, error.__traceback__)
    except (AttributeError, TypeError):  # an exception type without a __dict__
        pass


def intervention_traceback(error: BaseException) -> TracebackType | None:
    """The traceback ``error`` had when it left the intervention that raised it.

    ``None`` when ``error`` did not come out of an intervention. Read once: the
    record is dropped, so an error raised again later is not mistaken for one.

    Example:
        A tool built on the interleaver that wants errors to show only the
        intervention's frames::

            try:
                with interleaver:
                    model(x)
            except BaseException as error:
                origin = intervention_traceback(error)
                if origin is None:
                    raise
                raise error.with_traceback(origin)
    """
    state = getattr(error, "__dict__", None)
    if not state:
        return None
    traceback: TracebackType | None = state.pop(_INTERVENTION_TRACEBACK, None)
    return traceback
