"""Frame plumbing: locals written back on every CPython, trace functions restored."""

from __future__ import annotations

import sys
import threading
from types import FrameType
from typing import Any

import pytest

from endoscope_tracing import (
    Tracer,
    opens_with,
    register_internal_module,
    register_internal_package,
    save,
    write_locals,
)
from endoscope_tracing._frames import is_internal_frame, user_frame


def test_write_locals_rebinds_fast_locals_and_cells() -> None:
    def target() -> tuple[int, int, int]:
        plain = 1
        shared = 1

        def read_shared() -> int:
            return shared

        write_locals(sys._getframe(), {"plain": 10, "shared": 20})
        return plain, shared, read_shared()

    assert target() == (10, 20, 20)


def test_write_locals_uses_the_version_specific_mechanism() -> None:
    frame = sys._getframe()
    if sys.version_info >= (3, 13):
        # PEP 667: a write-through proxy, no ctypes involved.
        assert type(frame.f_locals).__name__ == "FrameLocalsProxy"
    else:
        import endoscope_tracing._frames as frames

        assert frames._locals_to_fast.__name__ == "PyFrame_LocalsToFast"


def test_write_locals_into_module_namespace() -> None:
    namespace: dict[str, Any] = {}
    exec("import sys\nframe = sys._getframe()", namespace)
    write_locals(namespace["frame"], {"added": 1})
    assert namespace["added"] == 1


def test_previous_trace_function_keeps_working() -> None:
    events: list[tuple[str, str, int]] = []

    def tracer(frame: FrameType, event: str, arg: Any):
        if frame.f_code.co_name in {"traced_function", "marker"}:
            events.append((frame.f_code.co_name, event, frame.f_lineno))
            return tracer
        return None

    def marker() -> int:
        return 1

    def traced_function() -> int:
        with Tracer():
            value = save(5)
        after = value + marker()
        return after

    sys.settrace(tracer)
    try:
        result = traced_function()
        restored = sys.gettrace()
    finally:
        sys.settrace(None)
    assert result == 6
    assert restored is tracer
    names = [(name, event) for name, event, _ in events]
    assert ("marker", "call") in names  # new frames after the block are still traced
    first_line = traced_function.__code__.co_firstlineno
    after_lines = {
        line for name, event, line in events if name == "traced_function" and event == "line"
    }
    assert first_line + 3 in after_lines  # `after = ...` line traced in the same frame
    assert ("traced_function", "return") in names


def test_no_trace_function_left_behind() -> None:
    assert sys.gettrace() is None
    with Tracer():
        pass
    assert sys.gettrace() is None
    frame = sys._getframe()
    assert frame.f_trace is None
    assert frame.f_trace_opcodes is False


def test_trace_function_per_thread_untouched() -> None:
    seen: list[Any] = []

    def worker() -> None:
        seen.append(sys.gettrace())

    with Tracer():
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
    assert seen == [None]


def test_internal_frames_are_skipped_when_finding_the_user() -> None:
    namespace: dict[str, Any] = {"__name__": "fake_internal_pkg.sub"}
    exec("import sys\ndef grab():\n    return sys._getframe()", namespace)
    frame = namespace["grab"]()
    assert not is_internal_frame(frame)
    register_internal_package("fake_internal_pkg")
    assert is_internal_frame(frame)
    assert user_frame(frame) is not frame


def test_an_internal_module_is_internal_alone() -> None:
    frames = {}
    for name in ("mixed_pkg.engine", "mixed_pkg.jobs", "mixed_pkg.engine.sub", "mixed_pkg"):
        namespace: dict[str, Any] = {"__name__": name}
        exec("import sys\ndef grab():\n    return sys._getframe()", namespace)
        frames[name] = namespace["grab"]()
    register_internal_module("mixed_pkg.engine")
    assert {name: is_internal_frame(frame) for name, frame in frames.items()} == {
        "mixed_pkg.engine": True,
        "mixed_pkg.jobs": False,  # a sibling that opens traces stays the user's
        "mixed_pkg.engine.sub": False,
        "mixed_pkg": False,
    }


def test_subclass_enter_in_an_internal_package_captures_the_user_frame() -> None:
    namespace: dict[str, Any] = {"__name__": "my_tracer_lib.tracers", "Tracer": Tracer}
    exec(
        "class Wrapped(Tracer):\n"
        "    def __enter__(self):\n"
        "        self.note = 'wrapped'\n"
        "        return super().__enter__()\n",
        namespace,
    )
    register_internal_package("my_tracer_lib")
    with namespace["Wrapped"]() as tracer:
        inside = save(tracer.note)
    assert inside == "wrapped"
    assert tracer.info.filename == __file__


@pytest.mark.parametrize("depth", [1, 5])
def test_write_back_across_recursion(depth: int) -> None:
    def recurse(n: int) -> int:
        if n == 0:
            return 0
        with Tracer():
            here = save(n + recurse(n - 1))
        return here

    assert recurse(depth) == sum(range(depth + 1))


class _Opener:
    """A context manager factory that records whether each call opens a ``with``."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def __call__(self) -> _Opener:
        self.seen.append(opens_with(sys._getframe(1)))
        return self

    def __enter__(self) -> _Opener:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def passed_on(self) -> _Opener:
        return self()  # only returns the call's value: the caller decides


def test_opens_with_tells_a_with_statement_from_other_uses() -> None:
    opener = _Opener()
    with opener():
        pass
    value = opener()
    with open(__file__) as handle, opener() as _:
        handle.read(1)
    for _ in range(2):
        with opener():
            pass
    print(opener(), value)
    with opener.passed_on():
        pass
    kept = opener.passed_on()
    assert opener.seen == [True, False, True, True, True, False, True, False]
    assert kept is opener
    assert opens_with(None) is False


def test_opens_with_keeps_no_code_alive() -> None:
    import gc
    import weakref

    opener = _Opener()
    code = compile("with opener():\n    pass\n", "<opens-with memo>", "exec")
    exec(code, {"opener": opener})
    assert opener.seen == [True]
    ref = weakref.ref(code)
    del code
    gc.collect()
    assert ref() is None
