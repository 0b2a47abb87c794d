"""Events and the signal replies."""

from __future__ import annotations

from endoscope_interleaver import Events
from endoscope_interleaver._events import Signal


def test_event_members() -> None:
    assert [e.name for e in Events] == [
        "VALUE",
        "SWAP",
        "SKIP",
        "BARRIER",
        "WAIT",
        "END",
        "EXCEPTION",
    ]
    assert Events("swap") is Events.SWAP


def test_signal_wraps_an_error() -> None:
    error = ValueError("x")
    signal = Signal(error)
    assert signal.error is error
    assert repr(signal) == "Signal(ValueError('x'))"
