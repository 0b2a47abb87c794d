"""Errors: classes, messages, and finding the user's frame."""

from __future__ import annotations

import sys
import traceback

import pytest

from endoscope_interleaver import (
    Cancelation,
    EarlyStopException,
    Interleaver,
    Mediator,
    MissedProviderError,
    OutOfOrderError,
    Scheduler,
    SkipException,
    intervention_traceback,
)
from endoscope_interleaver._errors import LIBRARY_MODULES, describe_frame, user_frame


def test_hierarchy() -> None:
    assert issubclass(OutOfOrderError, MissedProviderError)
    assert issubclass(MissedProviderError, Exception)
    for cls in (EarlyStopException, SkipException, Cancelation):
        assert issubclass(cls, Exception)
        assert not issubclass(cls, MissedProviderError)


def test_user_frame_skips_library_frames() -> None:
    library = {"__name__": "endoscope_envoy.fake", "user_frame": user_frame}
    exec("def lookup():\n    return user_frame()\n", library)
    frame = library["lookup"]()
    assert frame is sys._getframe()
    assert "endoscope_envoy" in LIBRARY_MODULES


def test_user_frame_walks_through_nested_library_frames() -> None:
    library = {"__name__": "endoscope_interleaver.fake", "user_frame": user_frame, "sys": sys}
    exec("def lookup():\n    return user_frame(sys._getframe())\n", library)
    outer = {"__name__": "endoscope_tracing.x", "lookup": library["lookup"]}
    exec("def call():\n    return lookup()\n", outer)
    # the chain reaches this test's frame, which is user code
    assert outer["call"]() is sys._getframe()
    assert user_frame(None) is sys._getframe()


def test_describe_frame() -> None:
    line = sys._getframe().f_lineno + 1
    text = describe_frame(sys._getframe())
    assert text == (
        f'File "{__file__}", line {line}, in test_describe_frame\n'
        "    text = describe_frame(sys._getframe())"
    )
    assert describe_frame(None) == "an unknown location"


def test_missed_message_before_and_after_locating() -> None:
    error = MissedProviderError("a.output.i0", "What happened.", "What to do.")
    assert str(error) == "What happened.\nWhat to do."
    assert error.location is None
    line = sys._getframe().f_lineno + 1
    error.locate(sys._getframe())
    assert error.location == (__file__, line)
    assert str(error).startswith(f'What happened.\nAsked at: File "{__file__}", line ')
    assert str(error).endswith("\nWhat to do.")
    error.locate(None)
    assert str(error) == "What happened.\nAsked at: an unknown location\nWhat to do."


def test_out_of_order_fields() -> None:
    error = OutOfOrderError("a.i0", "b.i0", "reason", "hint")
    assert (error.requester, error.provider, error.reason, error.hint) == (
        "a.i0",
        "b.i0",
        "reason",
        "hint",
    )


def test_skip_exception_values() -> None:
    skip = SkipException([((0, 1), "first"), (None, "second")])
    assert skip.value == "second"
    assert skip.values == [((0, 1), "first"), (None, "second")]
    assert str(skip) == "skipped by 2 intervention(s)"
    with pytest.raises(SkipException):
        raise skip


def _computation(interleaver: Interleaver, depth: int) -> int:
    """A computation whose one provider is ``depth`` calls deep."""
    if depth == 0:
        return interleaver.handle("point", 1, iterate=True)
    return _computation(interleaver, depth - 1) + 1


def _error_of_a_run(scheduler: Scheduler, *, intervention_raises: bool) -> BaseException:
    """The error leaving a run paused 4 calls deep in its computation: the
    intervention's own (``KeyError``) or, after it, the computation's."""
    interleaver = Interleaver(scheduler=scheduler)

    def intervention() -> None:
        assert interleaver.current is not None
        interleaver.current.request("point.i0")
        if intervention_raises:
            raise KeyError("from the intervention")

    interleaver.initialize([Mediator(intervention)])
    with pytest.raises((KeyError, ZeroDivisionError)) as caught:
        with interleaver:
            _computation(interleaver, 3)
            1 / 0
    return caught.value


def test_intervention_traceback_leaves_out_the_computations_frames(
    scheduler: Scheduler,
) -> None:
    error = _error_of_a_run(scheduler, intervention_raises=True)
    assert isinstance(error, KeyError)
    names = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
    assert names.count("_computation") == 4  # it went out through the computation
    origin = intervention_traceback(error)
    assert origin is not None
    names = [frame.name for frame in traceback.extract_tb(origin)]
    assert "_computation" not in names
    assert names[-1] == "intervention"
    assert intervention_traceback(error) is None  # read once


def test_an_error_of_the_computation_has_no_intervention_traceback(
    scheduler: Scheduler,
) -> None:
    error = _error_of_a_run(scheduler, intervention_raises=False)
    assert isinstance(error, ZeroDivisionError)
    assert intervention_traceback(error) is None
