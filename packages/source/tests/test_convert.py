"""convert(): caching, instantiation, and fidelity of tracebacks, inspect and linecache."""

from __future__ import annotations

import importlib.util
import inspect
import linecache
import sys
import textwrap
import traceback
from pathlib import Path
from types import ModuleType

import pytest

from endoscope_source import (
    Conversion,
    SourceAccessor,
    SourceMismatchError,
    UnsupportedFunctionError,
    convert,
)


def failing(x):
    y = abs(x)
    return int("not an int" + str(y))


def test_conversion_is_cached_per_code_object() -> None:
    first = convert(failing)
    assert isinstance(first, Conversion)
    assert convert(failing) is first
    assert [s.name for s in first.sites] == ["abs_0", "str_0", "int_0"]
    assert first.filename == __file__
    assert first.first_line == failing.__code__.co_firstlineno
    assert first.text.startswith("def failing(x):")


def test_convert_needs_a_function() -> None:
    with pytest.raises(UnsupportedFunctionError, match="plain Python function"):
        convert(SourceAccessor)  # type: ignore[arg-type]


def test_instantiate_checks_operation_count() -> None:
    with pytest.raises(ValueError, match="expected 3 operations"):
        convert(failing).instantiate(failing, [])


def _frame_of(exc: BaseException, name: str) -> traceback.FrameSummary:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.name == name]
    assert frames, f"no frame of {name}"
    return frames[-1]


@pytest.mark.parametrize("hooked", [False, True])
def test_exceptions_point_at_the_original_file_and_line(hooked: bool) -> None:
    accessor = SourceAccessor(failing)
    if hooked:
        accessor.operations["int_0"].pre_hooks.append(lambda inputs: None)
    with pytest.raises(ValueError) as original:
        failing(-3)
    with pytest.raises(ValueError) as injected:
        accessor(-3)
    want, got = _frame_of(original.value, "failing"), _frame_of(injected.value, "failing")
    assert (got.filename, got.lineno, got.line) == (want.filename, want.lineno, want.line)
    if sys.version_info >= (3, 11):
        assert (got.colno, got.end_colno) == (want.colno, want.end_colno)


def test_inspect_sees_the_original_source() -> None:
    accessor = SourceAccessor(failing)
    injected = accessor.injected
    assert inspect.getsource(injected) == inspect.getsource(failing)
    assert injected.__code__.co_filename == failing.__code__.co_filename
    assert injected.__code__.co_firstlineno == failing.__code__.co_firstlineno
    assert injected.__name__ == "failing" and injected.__qualname__ == "failing"
    assert inspect.signature(injected) == inspect.signature(failing)


def test_nested_qualnames_match_the_original() -> None:
    def outer():
        def inner():
            return 1

        class Local:
            def method(self):
                return 2

        return (
            inner.__qualname__,
            Local.__qualname__,
            Local.method.__qualname__,
            (lambda: 0).__qualname__,
        )

    assert SourceAccessor(outer)() == outer()


def _exec_registered(name: str, source: str, *, mtime: float | None) -> dict[str, object]:
    text = textwrap.dedent(source)
    lines = text.splitlines(keepends=True)
    linecache.cache[name] = (len(text), mtime, lines, name)
    namespace: dict[str, object] = {"__name__": "registered"}
    exec(compile(text, name, "exec"), namespace)
    return namespace


def test_sources_registered_in_linecache_work_and_stay_pinned() -> None:
    name = "<endoscope-test-cell-1>"
    namespace = _exec_registered(
        name,
        """
        def cell(x):
            return abs(x) + int("x")
        """,
        mtime=12345.0,  # like a notebook entry with a fake timestamp
    )
    accessor = SourceAccessor(namespace["cell"])  # type: ignore[arg-type]
    assert list(accessor.operations) == ["abs_0", "int_0"]
    linecache.checkcache()  # would drop a timestamped entry for a missing file
    assert linecache.getline(name, 3).strip() == 'return abs(x) + int("x")'
    with pytest.raises(ValueError) as info:
        accessor(1)
    assert _frame_of(info.value, "cell").line == 'return abs(x) + int("x")'
    del linecache.cache[name]


def _load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_edited_file_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "edited_mod.py"
    path.write_text("def fn(x):\n    return abs(x)\n")
    module = _load_module(path, "edited_mod")
    path.write_text("def fn(x):\n    return str(x) + '!'\n")
    linecache.checkcache(str(path))
    with pytest.raises(SourceMismatchError, match="edited after it was imported"):
        SourceAccessor(module.fn)


def test_stale_linecache_is_refreshed_after_reload(tmp_path: Path) -> None:
    path = tmp_path / "reloaded_mod.py"
    path.write_text("def fn(x):\n    return abs(x)\n")
    _load_module(path, "reloaded_mod")
    assert linecache.getlines(str(path))  # linecache now holds version 1
    path.write_text("def fn(x):\n    return str(x) + '!'  # version two\n")
    module = _load_module(path, "reloaded_mod")
    accessor = SourceAccessor(module.fn)
    assert list(accessor.operations) == ["str_0"]
    assert accessor(3) == "3!"
