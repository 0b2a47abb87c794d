"""Finding a function's source: lambdas, classes, decorators, and clear errors."""

from __future__ import annotations

import functools
import linecache
import textwrap

import pytest

from endoscope_source import (
    SourceAccessor,
    SourceMismatchError,
    SourceUnavailableError,
    UnsupportedFunctionError,
)
from endoscope_source._locate import describe, locate


def _exec(filename: str, source: str, *, register: bool) -> dict[str, object]:
    text = textwrap.dedent(source)
    if register:
        linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    namespace: dict[str, object] = {"__name__": "snippet"}
    exec(compile(text, filename, "exec"), namespace)
    return namespace


@pytest.mark.parametrize("builtin", [len, str.upper, [].append, int.__add__, (1).__add__])
def test_builtins_have_no_source(builtin: object) -> None:
    with pytest.raises(SourceUnavailableError, match="built-in implemented in C") as info:
        SourceAccessor(builtin)  # type: ignore[arg-type]
    name = getattr(builtin, "__qualname__", None) or builtin.__name__  # type: ignore[attr-defined]
    assert name in str(info.value)


@pytest.mark.parametrize("filename", ["<stdin>", "<string>"])
def test_code_without_kept_source_is_reported(filename: str) -> None:
    namespace = _exec(
        filename, "square = lambda x: x * x\ndef cube(x):\n    return x ** 3\n", register=False
    )
    linecache.cache.pop(filename, None)
    for name in ("square", "cube"):
        with pytest.raises(SourceUnavailableError) as info:
            SourceAccessor(namespace[name])  # type: ignore[arg-type]
        message = str(info.value)
        assert ("<lambda>" if name == "square" else "cube") in message
        assert filename in message and "interactive prompt" in message


def test_new_repl_sources_in_linecache_work() -> None:
    # Python 3.13's REPL keeps each input in linecache under <python-input-N>.
    namespace = _exec("<python-input-7>", "f = lambda x: abs(x) + 1\n", register=True)
    accessor = SourceAccessor(namespace["f"])  # type: ignore[arg-type]
    assert list(accessor.operations) == ["abs_0"]
    assert accessor(-2) == 3
    del linecache.cache["<python-input-7>"]


def test_lambdas_on_one_line_are_told_apart() -> None:
    first, second = (lambda v: abs(v)), (lambda v: str(v))
    assert list(SourceAccessor(first).operations) == ["abs_0"]
    assert list(SourceAccessor(second).operations) == ["str_0"]


def test_lambda_inside_a_multiline_expression() -> None:
    table = {
        "neg": lambda v: -abs(v),
        "str": lambda v: str(v),
    }
    accessor = SourceAccessor(table["neg"])
    assert list(accessor.operations) == ["abs_0"]
    assert accessor(3) == -3


def test_private_names_are_mangled_with_the_defining_class() -> None:
    class Outer:
        class _Inner:
            def __init__(self):
                self.__value = 7

            def read(self):
                return abs(self.__value)

    accessor = SourceAccessor(Outer._Inner.read)
    assert accessor(Outer._Inner()) == 7
    assert locate(Outer._Inner.read).private_name == "_Inner"


def test_decorated_function_is_found_by_its_first_decorator_line() -> None:
    def tag(*_args):
        return lambda fn: fn

    @tag(
        "a",
        "b",
    )
    @functools.lru_cache(maxsize=None)  # noqa: UP033 - a C wrapper on purpose
    def cached(x):
        return abs(x)

    with pytest.raises(UnsupportedFunctionError, match="__wrapped__"):
        SourceAccessor(cached)
    accessor = SourceAccessor(cached.__wrapped__)
    assert list(accessor.operations) == ["abs_0"]


def test_functions_rewritten_by_pytest_are_refused() -> None:
    def checked(x):
        assert x > 0, "positive"
        return x

    with pytest.raises(SourceMismatchError, match="pytest rewrites assert"):
        SourceAccessor(checked)


def test_other_callables_get_a_hint() -> None:
    class Model:
        def forward(self, x):
            return x

        def __call__(self, x):
            return x

    class Plain:
        def __call__(self, x):
            return x

    with pytest.raises(UnsupportedFunctionError, match=r"pass its \.func"):
        SourceAccessor(functools.partial(abs, 1))
    with pytest.raises(UnsupportedFunctionError, match="is a class"):
        SourceAccessor(Model)
    with pytest.raises(UnsupportedFunctionError, match="get_or_create_source_accessor"):
        SourceAccessor(Model())
    with pytest.raises(UnsupportedFunctionError, match=r"type\(obj\).__call__"):
        SourceAccessor(Plain())
    with pytest.raises(UnsupportedFunctionError, match="not callable"):
        SourceAccessor(42)  # type: ignore[arg-type]


def test_describe_names_module_qualname_and_place() -> None:
    def fn():
        return None

    text = describe(fn)
    assert text.startswith(
        f"{__name__}.test_describe_names_module_qualname_and_place.<locals>.fn ("
    )
    assert text.endswith(f":{fn.__code__.co_firstlineno})")
    assert describe(len) == "builtins.len"
