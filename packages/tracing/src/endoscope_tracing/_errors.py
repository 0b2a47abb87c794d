"""Exceptions of the capture layer."""

from __future__ import annotations

__all__ = ["ExitTracingException", "UnsupportedBlockError", "WithBlockNotFoundError"]


class WithBlockNotFoundError(RuntimeError):
    """The source of a traced ``with`` block could not be found or parsed.

    Raised at the ``with`` statement. The message says where Python ran the code
    from, why its text is not available there, and how to run it so it is.
    """


class UnsupportedBlockError(SyntaxError):
    """The traced block uses a statement that cannot run outside its frame.

    A traced block runs later as a function of its own, so ``return``, ``yield``,
    ``await``, zero-argument ``super()`` and ``break``/``continue`` aimed at a loop
    outside the block cannot keep their meaning. The error points at the line.
    """


class ExitTracingException(Exception):
    """Raised into the caller's frame to leave a ``with`` block before its body runs.

    Control flow only: the tracer's ``__exit__`` swallows it and runs the captured
    body itself. Users never see it.
    """
