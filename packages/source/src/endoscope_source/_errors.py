"""Exceptions raised by endoscope-source.

Every error is raised when an accessor is built (never in the middle of a call)
and names the function it is about, so the message alone says what to fix.
"""

from __future__ import annotations

__all__ = [
    "SourceError",
    "SourceMismatchError",
    "SourceUnavailableError",
    "UnsupportedFunctionError",
]


class SourceError(Exception):
    """Base class of every error raised by endoscope-source."""


class SourceUnavailableError(SourceError):
    """The source text of a function cannot be read.

    Raised for built-ins and C functions, and for functions defined where Python
    keeps no source: the classic interactive prompt, ``exec`` of a string that
    was never registered with :mod:`linecache`, or a file deleted since import.
    """


class SourceMismatchError(SourceError):
    """The source text that was found does not belong to the running code.

    Typical causes: the file was edited after the module was imported, the
    code object was rewritten by a tool (pytest's assertion rewriting, a
    bytecode transformer), or ``rebind`` was given a function whose call sites
    differ from the ones the accessor already exposes.
    """


class UnsupportedFunctionError(SourceError, TypeError):
    """The object cannot be source-traced in the form it was given.

    The message says which form would work instead (for example the function
    behind a ``functools.partial``, or ``obj.forward`` for a module-like object).
    """
