"""Errors in a traced block: original type, the user's file and line, no internals."""

from __future__ import annotations

import sys
import traceback

import pytest

from endoscope_tracing import CONFIG, Tracer, clean_exception, save


def test_type_and_location_are_kept() -> None:
    with pytest.raises(KeyError) as caught:
        with Tracer():
            data = {"a": 1}
            data["missing"]
    error = caught.value
    assert type(error) is KeyError
    assert error.__context__ is None  # the control-flow exception is unlinked
    frames = traceback.extract_tb(error.__traceback__)
    assert frames[-1].filename == __file__
    assert frames[-1].line == 'data["missing"]'
    internal = [f.name for f in frames if "endoscope_tracing" in f.filename]
    # 3.10 re-raises with the re-raising frame on top (hidden by the excepthook).
    assert internal == ([] if sys.version_info >= (3, 11) else ["__exit__"])
    user = [f.name for f in frames if "endoscope_tracing" not in f.filename]
    assert user == ["test_type_and_location_are_kept"] * 2


def test_user_context_is_preserved() -> None:
    with pytest.raises(ValueError) as caught:
        with Tracer():
            try:
                {}["x"]
            except KeyError:
                raise ValueError("while handling") from None
    assert caught.value.__suppress_context__
    with pytest.raises(ValueError) as caught:
        with Tracer():
            try:
                {}["x"]
            except KeyError:
                raise ValueError("while handling")  # noqa: B904
    assert isinstance(caught.value.__context__, KeyError)


def test_error_in_a_function_called_from_the_block() -> None:
    def helper() -> None:
        raise RuntimeError("inner")

    with pytest.raises(RuntimeError) as caught:
        with Tracer():
            helper()
    names = [f.name for f in traceback.extract_tb(caught.value.__traceback__)]
    assert names[-2:] == ["test_error_in_a_function_called_from_the_block", "helper"]


SCRIPT = """\
from endoscope_tracing import Tracer

def main():
    values = [1, 2]
    with Tracer():
        print(values[5])

main()
"""


def test_uncaught_traceback_shows_only_user_lines(write_script, run_python) -> None:
    path = write_script(SCRIPT)
    result = run_python(str(path))
    assert result.returncode == 1
    assert "IndexError: list index out of range" in result.stderr
    assert f'File "{path}", line 6, in main' in result.stderr
    assert "print(values[5])" in result.stderr
    assert "endoscope_tracing" not in result.stderr


def test_debug_flag_shows_internal_frames(write_script, run_python) -> None:
    path = write_script(SCRIPT)
    result = run_python(str(path), env={"ENDOSCOPE_DEBUG": "1"})
    assert result.returncode == 1
    assert "endoscope_tracing" in result.stderr
    assert f'File "{path}", line 6, in main' in result.stderr


def test_debug_flag_in_code_keeps_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CONFIG, "debug", True)
    with pytest.raises(ZeroDivisionError) as caught:
        with Tracer():
            1 / 0
    files = [f.filename for f in traceback.extract_tb(caught.value.__traceback__)]
    assert sum("endoscope_tracing" in f for f in files) > 1


def test_clean_exception_never_leaves_an_error_without_location() -> None:
    error = RuntimeError("x")
    clean_exception(error)
    assert error.__traceback__ is None


def test_block_can_still_save_after_a_caught_error() -> None:
    with Tracer():
        try:
            raise ValueError
        except ValueError:
            caught = save(True)
    assert caught


def test_the_body_runs_with_no_exception_being_handled() -> None:
    # __exit__ runs inside the with statement's handler of the body-skipping
    # exception; the body (and a model run beside it) must not see it as handled,
    # or every exception raised there is chained to it (and built eagerly).
    with Tracer():
        handled = save(sys.exc_info())
        try:
            raise KeyError("inner")
        except KeyError as error:
            context = save(error.__context__)
    assert handled == (None, None, None)
    assert context is None
    # After the block the handler's state is whatever it was before it.
    assert sys.exc_info() == (None, None, None)


def test_a_block_inside_an_except_keeps_the_outer_exception_as_context() -> None:
    try:
        raise ValueError("outer")
    except ValueError as error:
        outer = error
        with Tracer():
            try:
                raise KeyError("inner")
            except KeyError as inner:
                context = save(inner.__context__)
        # Still handling the outer exception after the block.
        after = sys.exc_info()[1]
        with pytest.raises(RuntimeError) as caught:
            with Tracer():
                raise RuntimeError("in the body")  # noqa: B904 (the chaining is the point)
    assert context is outer
    assert after is outer
    assert caught.value.__context__ is outer
