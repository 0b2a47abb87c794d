"""Variables a block assigned without save(): NameError when used, a warning when
a variable that already existed was reassigned."""

from __future__ import annotations

import copy
import gc
import linecache
import traceback
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from endoscope_tracing import Tracer, UnsavedName, UnsavedValueWarning, save

HERE = Path(__file__).read_text(encoding="utf-8").splitlines()


def line_of(marker: str) -> int:
    """The line of this file that ends with the comment ``# <marker>``."""
    (line,) = [n for n, text in enumerate(HERE, 1) if text.endswith(f"# {marker}")]
    return line


def hint(name: str, line: int, filename: str = __file__) -> str:
    return (
        f"name {name!r} was assigned inside the traced block ({filename}:{line}) but not "
        "saved, so it does not exist after the block: call .save() on it inside the block "
        f"({name} = ....save(), or save(...))."
    )


@contextmanager
def no_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


class KeepAll(Tracer):
    keep_unsaved = True


# ------------------------------------------------------------- new variables


def test_using_an_unsaved_variable_raises_a_name_error_at_the_users_line() -> None:
    with Tracer():
        scratch = [1, 2]  # assigns scratch
    with pytest.raises(NameError) as caught:
        print(scratch)  # uses scratch
    error = caught.value
    assert str(error) == hint("scratch", line_of("assigns scratch"))
    assert error.name == "scratch"
    user = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == __file__]
    assert user[-1].lineno == line_of("uses scratch")


def test_every_use_of_the_value_raises() -> None:
    with Tracer():
        value = 3
    uses = {
        "str": lambda: str(value),
        "repr": lambda: repr(value),
        "format": lambda: f"{value}",
        "attribute": lambda: value.real,
        "set attribute": lambda: setattr(value, "real", 1),
        "arithmetic": lambda: value + 1,
        "reflected": lambda: 1 + value,
        "comparison": lambda: value == 3,
        "order": lambda: value < 3,
        "truth": lambda: bool(value),
        "len": lambda: len(value),
        "iteration": lambda: list(value),
        "membership": lambda: 1 in value,
        "index": lambda: value[0],
        "call": lambda: value(),
        "hash": lambda: {value: 1},
        "int": lambda: int(value),
        "as an index": lambda: [1, 2][value],
        "copy": lambda: copy.copy(value),
        "dir": lambda: dir(value),
    }
    for use, run in uses.items():
        with pytest.raises(NameError, match="call .save\\(\\) on it inside the block"):
            run()
            pytest.fail(f"{use} did not raise")


def test_what_cannot_raise() -> None:
    # Python answers these without asking the object (documented limits).
    with Tracer():
        value = 3
    assert value is not None
    assert type(value) is UnsavedName
    assert not isinstance(value, int)
    assert not hasattr(value, "__wrapped__")  # tools probing protocols keep working
    holder = [value]
    assert holder[0] is value


def test_a_placeholder_holds_no_reference_to_the_value() -> None:
    class Blob:
        pass

    refs: list[weakref.ref[Blob]] = []
    with Tracer():
        blob = Blob()
        refs.append(weakref.ref(blob))
    gc.collect()
    assert refs[0]() is None
    assert isinstance(blob, UnsavedName)


def test_the_message_names_the_last_line_that_assigns() -> None:
    with Tracer():
        total = 1
        total = total + 1  # last assignment of total
    with pytest.raises(NameError, match=f":{line_of('last assignment of total')}\\)"):
        total + 1


def test_a_loop_of_blocks_never_warns_and_later_blocks_do_not_see_the_placeholder() -> None:
    seen = []
    with no_warnings():
        for step in range(3):
            with Tracer():
                seen.append(save("partial" in locals()))
                partial = step * 2
    assert seen == [False, False, False]  # the earlier placeholder is not pulled in
    assert isinstance(partial, UnsavedName)


def test_one_placeholder_per_call_site_and_name_written_with_the_saved_values() -> None:
    placeholders = []
    for step in range(3):
        with Tracer():
            kept = save([step])
            scratch = [step * 2]
        placeholders.append(scratch)
        assert kept == [step]  # the saved value and the placeholder land together
    # Made once per call site and name: later runs reuse it (nothing to format or
    # write when the frame holds it already).
    assert all(p is placeholders[0] for p in placeholders)
    assert isinstance(scratch, UnsavedName)
    with pytest.raises(NameError, match="'scratch' was assigned inside the traced block"):
        scratch + 1


def test_a_failing_block_binds_placeholders_without_warnings() -> None:
    before = "old"
    with no_warnings(), pytest.raises(ZeroDivisionError):
        with Tracer():
            made = 1
            before = "new"
            1 / 0
    assert before == "old"
    with pytest.raises(NameError, match="'made'"):
        print(made)


def test_keep_unsaved_tracers_push_everything() -> None:
    before = "old"
    with no_warnings():
        with KeepAll():
            made = 1
            before = "new"
    assert (made, before) == (1, "new")


def test_module_level_uncaught_error_ends_at_the_users_line(write_script, run_python) -> None:
    path = write_script(
        """
        from endoscope_tracing import Tracer
        with Tracer():
            hidden = 1
        print(hidden)
        """
    )
    result = run_python(str(path))
    assert result.returncode == 1
    # 3.13 underlines the failing expression with carets; they are not a frame.
    lines = [line for line in result.stderr.strip().splitlines() if line.strip(" ^~")]
    last_frame = lines[-3:]
    assert last_frame == [
        f'  File "{path}", line 5, in <module>',
        "    print(hidden)",
        f"NameError: {hint('hidden', 4, str(path))}",
    ]


def test_exec_of_a_registered_string() -> None:
    source = "before = 1\nwith Tracer():\n    made = 2\n    before = 3\n"
    name = "<unsaved cell>"
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    namespace: dict[str, Any] = {"Tracer": Tracer}
    with pytest.warns(UnsavedValueWarning) as caught:
        exec(compile(source, name, "exec"), namespace)
    assert [(w.filename, w.lineno) for w in caught] == [(name, 4)]
    assert namespace["before"] == 1
    with pytest.raises(NameError) as error:
        exec("made + 1", namespace)
    assert str(error.value) == hint("made", 3, name)


# ---------------------------------------------------------- reassigned variables


def test_a_reassigned_variable_keeps_its_value_and_warns_at_the_assignment() -> None:
    count = 0
    with pytest.warns(UnsavedValueWarning) as caught:
        with Tracer():
            count = count + 1  # reassigns count
    assert count == 0
    (warning,) = caught
    assert warning.filename == __file__
    assert warning.lineno == line_of("reassigns count")
    assert str(warning.message) == (
        "'count' was reassigned inside the traced block without .save(), so after the "
        "block it still holds the value it had before the block: call .save() on it "
        "inside the block to keep the new value (count = ....save(), or save(...))."
    )


def test_no_warning_in_the_normal_cases() -> None:
    numbers = [1, 2, 3]
    result = None
    with no_warnings():
        for _ in range(2):
            with Tracer() as tracer:  # an `as` name from the last round
                result = save(sum(numbers))  # reassigned, but saved
                numbers.append(4)  # mutated, not reassigned
                fresh = len(numbers)
                for item in numbers:  # noqa: B007 (a loop variable the user never had)
                    pass
    assert result == 10
    assert isinstance(tracer, Tracer)
    assert isinstance(fresh, UnsavedName) and isinstance(item, UnsavedName)


def test_a_variable_of_an_enclosing_loop_reassigned_in_the_block_warns() -> None:
    with pytest.warns(UnsavedValueWarning, match="'index'") as caught:
        for index in range(2):
            with Tracer():
                index = index * 10  # reassigns the loop's index
    assert index == 1
    assert {w.lineno for w in caught} == {line_of("reassigns the loop's index")}


def test_nested_blocks_report_the_inner_line() -> None:
    before = "old"
    with pytest.warns(UnsavedValueWarning) as caught:
        with Tracer():
            with Tracer():
                inner = 1  # inner assigns
                before = "new"  # inner reassigns before
            used = save(inner + 1)  # the parent still sees inner
    assert (before, used) == ("old", 2)
    assert [w.lineno for w in caught] == [line_of("inner reassigns before")]
    with pytest.raises(NameError, match=f":{line_of('inner assigns')}\\)"):
        inner + 1


def deferring_backends() -> tuple[Any, Any]:
    """Backends as the envoy's invokes use them: ``defer`` compiles a child body
    while its parent runs; ``run_then_drain`` runs the parent, then the children."""
    deferred: list[tuple[Tracer, Any]] = []

    def defer(tracer: Tracer) -> None:
        deferred.append((tracer, tracer.compile()))

    def run_then_drain(tracer: Tracer) -> None:
        tracer.execute(tracer.compile())
        for child, fn in deferred:
            child.execute(fn)

    return defer, run_then_drain


def test_deferred_bodies_are_settled_by_their_finished_parent() -> None:
    # The envoy's invokes: compiled while the parent body runs, run after it.
    defer, run_then_drain = deferring_backends()
    before = "old"
    with pytest.warns(UnsavedValueWarning) as caught:
        with Tracer(backend=run_then_drain):
            with Tracer(backend=defer):
                made = 1  # the deferred body assigns made
                before = "new"  # the deferred body reassigns before
                kept = save(made + 1)
    assert (before, kept) == ("old", 2)
    assert [w.lineno for w in caught] == [line_of("the deferred body reassigns before")]
    with pytest.raises(NameError, match=f":{line_of('the deferred body assigns made')}\\)"):
        made + 1


def test_a_later_unsaved_assignment_of_a_saved_name_warns() -> None:
    defer, run_then_drain = deferring_backends()
    with pytest.warns(UnsavedValueWarning, match="'shared'"):
        with Tracer(backend=run_then_drain):
            with Tracer(backend=defer):
                shared = save("first")
            with Tracer(backend=defer):
                shared = "second"
    assert shared == "first"


@pytest.mark.parametrize("use", [str, lambda value: value.shape, lambda value: value + 1])
def test_printing_the_error_never_raises_again(use) -> None:
    # Python 3.12's traceback printer calls hasattr(self, name) when the innermost
    # frame of a NameError has a `self`; on a placeholder that would raise while the
    # first error is printed (and crash the printer, pytest's included).
    placeholder = UnsavedName("scratch", "cell.py", 3)
    with pytest.raises(NameError) as caught:
        use(placeholder)
    text = "".join(traceback.format_exception(caught.value))
    assert "call .save() on it inside the block" in text
    innermost = caught.value.__traceback__
    while innermost.tb_next is not None:
        innermost = innermost.tb_next
    assert "self" not in innermost.tb_frame.f_locals
