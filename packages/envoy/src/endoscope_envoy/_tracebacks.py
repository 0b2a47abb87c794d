"""Errors of the user's code leave a run with the user's frames only.

An exception raised in a trace's body (or a backward block's) is re-raised on
the model side, where the computation is paused, and travels out through every
call the computation was in: a transformer's forward adds dozens of frames
between the ``with`` line and the line that raised. None of them says anything
about the user's mistake, so they are dropped; an error the computation raised
itself keeps its frames (they are where it happened), and ``CONFIG.debug``
keeps everything.
"""

from __future__ import annotations

from endoscope_interleaver import intervention_traceback

from ._config import CONFIG

__all__ = ["drop_computation_frames"]


def drop_computation_frames(error: BaseException) -> bool:
    """Give ``error`` back the traceback it left the user's code with.

    Call it on an error leaving a run, then re-raise ``error`` itself (``raise
    error``: a bare ``raise`` would restore the old traceback on Python 3.10).

    Returns:
        Whether the traceback changed (``False`` when ``error`` did not come out
        of the user's code, or when debugging).
    """
    origin = intervention_traceback(error)
    if origin is None or CONFIG.debug:
        return False
    error.__traceback__ = origin
    return True
