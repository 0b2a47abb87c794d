"""Tracer: the four steps, variables in and out, saving, nesting, backends, the cache."""

from __future__ import annotations

import ast
import contextlib
import runpy
import threading
from pathlib import Path
from typing import Any

import pytest

from endoscope_tracing import (
    SAVED,
    Tracer,
    TracerInfo,
    UnsavedName,
    UnsavedValueWarning,
    read_source,
    save,
)


class KeepAll(Tracer):
    keep_unsaved = True


def test_body_runs_once_with_caller_locals() -> None:
    calls: list[int] = []
    base = 20
    with Tracer():
        calls.append(base + 1)
    assert calls == [21]


def test_saved_values_survive_and_unsaved_do_not_leak() -> None:
    kept = "before"
    with pytest.warns(UnsavedValueWarning, match="'kept' was reassigned"):
        with Tracer():
            result = save([1, 2, 3])
            temporary = "not saved"
            kept = "rebound but not saved"
    assert result == [1, 2, 3]
    assert isinstance(temporary, UnsavedName)  # a placeholder, not the value
    assert kept == "before"
    assert len(SAVED) == 0  # marks are released when the outermost trace ends


def test_keep_unsaved_pushes_every_assignment() -> None:
    with KeepAll():
        a = 1
        b = a + 1
    assert (a, b) == (1, 2)


def test_as_target_is_bound_to_the_tracer() -> None:
    with Tracer() as tracer:
        inside = save(tracer)
    assert inside is tracer
    assert isinstance(tracer, Tracer)
    assert isinstance(tracer.info, TracerInfo)
    assert tracer.info.filename == __file__


def test_info_describes_the_block() -> None:
    with Tracer() as tracer:
        x = save(1)
        y = save(2)
    info = tracer.info
    assert info is not None
    assert info.start_line == info.node.lineno + 1
    assert [line.strip() for line in info.source] == ["x = save(1)", "y = save(2)"]
    assert (x, y) == (1, 2)


def test_one_line_with_statement() -> None:
    with Tracer(): value = save(41 + 1)  # fmt: skip  # noqa: E701
    assert value == 42


def test_closures_inside_the_block_see_pulled_and_new_variables() -> None:
    scale = 3
    with Tracer():
        offset = 1
        fns = save([lambda v, i=i: v * scale + offset + i for i in range(3)])
        total = save(sum(f(1) for f in fns))
    assert [f(2) for f in fns] == [7, 8, 9]
    assert total == 4 + 5 + 6


def test_cell_variables_of_the_caller_are_updated() -> None:
    x = 1

    def get() -> int:
        return x

    with Tracer():
        x = save(2)
    assert (x, get()) == (2, 2)


def test_nonlocal_in_the_block_writes_the_enclosing_variable() -> None:
    counter = 0

    def bump() -> None:
        nonlocal counter
        with Tracer():
            counter = save(counter + 5)

    bump()
    bump()
    assert counter == 10


def test_global_declared_in_the_block() -> None:
    with Tracer():
        global GLOBAL_FROM_BLOCK
        GLOBAL_FROM_BLOCK = 99
    assert GLOBAL_FROM_BLOCK == 99  # type: ignore[name-defined]


def test_method_and_self() -> None:
    class Model:
        factor = 4

        def run(self, v: int) -> int:
            with Tracer():
                out = save(v * self.factor)
            return out

    assert Model().run(3) == 12


def test_class_body() -> None:
    class Config:
        base = 2
        with Tracer():
            doubled = save(base * 2)

    assert Config.doubled == 4


def test_loop_reuses_the_call_site() -> None:
    reads_before = read_source.reads
    parses: list[int] = []
    original = Tracer.parse

    def counting_parse(self: Tracer, *args: Any) -> Any:
        parses.append(1)
        return original(self, *args)

    Tracer.parse = counting_parse  # type: ignore[method-assign]
    try:
        seen = []
        for i in range(50):
            with Tracer():
                item = save(i * i)
            seen.append(item)
    finally:
        Tracer.parse = original  # type: ignore[method-assign]
    assert seen == [i * i for i in range(50)]
    assert read_source.reads - reads_before == 1
    assert len(parses) == 1


def test_generator_function() -> None:
    def gen():
        for i in range(3):
            with Tracer():
                v = save(i + 10)
            yield v

    assert list(gen()) == [10, 11, 12]


def test_in_a_worker_thread() -> None:
    out: list[int] = []

    def work() -> None:
        with Tracer():
            v = save(7)
        out.append(v)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert out == [7]


@contextlib.contextmanager
def flag(state: dict[str, bool]):
    state["on"] = True
    try:
        yield "flag"
    finally:
        state["on"] = False


def test_tracer_last_of_several_items() -> None:
    state = {"on": False}
    with flag(state) as name, Tracer():
        seen = save((name, state["on"]))
    assert seen == ("flag", True)
    assert state["on"] is False


def test_nested_tracers_flow_locals_to_parent() -> None:
    with Tracer():
        with Tracer():
            inner_saved = save(7)
            inner_plain = 8
        combined = save(inner_saved + inner_plain)
    assert (inner_saved, combined) == (7, 15)
    assert isinstance(inner_plain, UnsavedName)


def test_three_levels_of_nesting() -> None:
    with Tracer():
        a = 1
        with Tracer():
            b = a + 1
            with Tracer():
                c = save(a + b + 1)
        d = save(c + b)
    assert (c, d) == (4, 6)


class RecordingBackend:
    def __init__(self) -> None:
        self.tracers: list[Tracer] = []

    def __call__(self, tracer: Tracer) -> None:
        self.tracers.append(tracer)


def test_custom_backend_decides_whether_the_body_runs() -> None:
    backend = RecordingBackend()
    ran: list[int] = []
    with Tracer(backend=backend) as tracer:
        ran.append(1)
    assert ran == []
    assert backend.tracers == [tracer]


def test_deferred_body_pushes_through_its_finished_parent() -> None:
    # The envoy's pattern: invokes are compiled while the trace body runs and
    # executed after it returned, still inside the trace's __exit__.
    deferred: list[tuple[Tracer, Any]] = []

    def defer(tracer: Tracer) -> None:
        deferred.append((tracer, tracer.compile()))

    def run_then_drain(tracer: Tracer) -> None:
        tracer.execute(tracer.compile())
        assert not tracer._running
        for child, fn in deferred:
            child.execute(fn)

    with Tracer(backend=run_then_drain):
        prompt = "hello"
        with Tracer(backend=defer):
            shout = save(prompt.upper())
            scratch = 1
        early = save("shout" in locals())
    assert early is False  # the deferred body had not run yet
    assert shout == "HELLO"
    assert isinstance(scratch, UnsavedName)


def test_module_level_block(write_script) -> None:
    path = write_script(
        """
        from endoscope_tracing import Tracer, save
        numbers = [1, 2, 3]
        with Tracer() as tracer:
            doubled = save([n * 2 for n in numbers])
            unsaved = 1
        """
    )
    namespace = runpy.run_path(str(path))
    assert namespace["doubled"] == [2, 4, 6]
    assert isinstance(namespace["unsaved"], UnsavedName)
    assert isinstance(namespace["tracer"], Tracer)


def test_enter_outside_a_with_statement_is_an_error() -> None:
    from endoscope_tracing import WithBlockNotFoundError

    tracer = Tracer()
    with pytest.raises(WithBlockNotFoundError, match="`with` statement"):
        tracer.__enter__()


def test_requires_capture_before_compile() -> None:
    with pytest.raises(RuntimeError, match="use it in a `with` statement"):
        Tracer().compile()


def test_source_file_for_this_module_is_real() -> None:
    assert Path(__file__).exists()


def test_equal_code_from_different_files_is_captured_separately() -> None:
    import linecache

    source = "def run():\n    with Tracer() as t:\n        pass\n    return t.info.filename\n"
    seen = []
    for name in ("<first file>", "<second file>"):
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
        namespace = {"Tracer": Tracer}
        exec(compile(source, name, "exec"), namespace)
        seen.append(namespace["run"]())
    assert seen == ["<first file>", "<second file>"]


def test_code_objects_are_not_kept_alive_by_the_cache() -> None:
    import gc
    import linecache

    from endoscope_tracing import _tracer

    source = "def run():\n    with Tracer():\n        v = save(1)\n    return v\n"
    name = "<collected file>"
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    namespace = {"Tracer": Tracer, "save": save}
    exec(compile(source, name, "exec"), namespace)
    assert namespace["run"]() == 1
    key = id(namespace["run"].__code__)
    assert key in _tracer._SITES
    namespace.clear()
    gc.collect()
    assert key not in _tracer._SITES


def test_values_assigned_before_an_error_still_reach_the_caller() -> None:
    with pytest.raises(RuntimeError):
        with Tracer():
            before = save("kept")
            raise RuntimeError("boom")
    assert before == "kept"


class _CountingTracer(Tracer):
    """Appends ``calls = <tracer>.note(calls)`` to every body it captures."""

    keep_unsaved = True
    transforms = 0

    def transform(self, body: list[ast.stmt], tracer_name: str) -> list[ast.stmt]:
        type(self).transforms += 1
        call = ast.parse(f"calls = {tracer_name}.note(calls)").body[0]
        return [*body, ast.copy_location(call, body[-1])]

    def note(self, calls: list[str]) -> list[str]:
        return [*calls, "noted"]


def test_transform_rewrites_the_body_once_per_call_site() -> None:
    _CountingTracer.transforms = 0
    results = []
    for _ in range(3):
        calls: list[str] = []
        with _CountingTracer():
            calls.append("body")
        results.append(calls)
    assert results == [["body", "noted"]] * 3
    assert _CountingTracer.transforms == 1


def test_transformed_and_plain_tracers_at_one_site_keep_separate_parses() -> None:
    outcomes = []
    for kind in (_CountingTracer, Tracer, _CountingTracer):
        calls: list[str] = []
        with kind():
            calls.append("body")
        outcomes.append(calls)
    assert outcomes == [["body", "noted"], ["body"], ["body", "noted"]]


def test_transformed_body_keeps_the_users_line_numbers() -> None:
    def fails() -> None:
        calls: list[str] = []
        with _CountingTracer():
            calls.append("body")
            raise ValueError("at the user's line")

    with pytest.raises(ValueError) as info:
        fails()
    lines = [entry.lineno for entry in info.traceback if entry.name == "fails"]
    first = fails.__code__.co_firstlineno
    assert first + 4 - 1 in lines  # tracebacks count from 0


def _nested_in_two_threads(tag: str, mine: threading.Barrier) -> Any:
    """One call site run by two threads at once: the nested tracer's parent is this
    thread's outer tracer, although the other thread's runs the same body too."""
    with Tracer() as outer:
        mine.wait(60)  # both outer bodies are running now
        with Tracer() as inner:
            value = save(tag)
        parent_is_outer = save(inner.parent is outer)
        mine.wait(60)  # and still are, until both inner blocks are done
    return value, parent_is_outer


def test_nested_tracers_find_their_parent_in_their_own_thread() -> None:
    # Compiled once here: both threads then run the very same body code.
    assert _nested_in_two_threads("warm", threading.Barrier(1)) == ("warm", True)
    both = threading.Barrier(2)
    results: dict[str, Any] = {}

    def run(tag: str) -> None:
        results[tag] = _nested_in_two_threads(tag, both)

    threads = [threading.Thread(target=run, args=(tag,)) for tag in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {"a": ("a", True), "b": ("b", True)}
