"""The injected function returns exactly what the original returns, hooked or not.

Every corpus case runs three ways: with no hook anywhere (the fast path), with
a pass-through pre- and post-hook on every operation (every call goes through
the slow path), and while the accessor is watched (nested call sites detour).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import source_corpus
from source_corpus import CASES, Case

from endoscope_source import SourceAccessor


def _outcome(case: Case, call: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        value = case.run(call)
    except Exception as exc:
        return ("raised", type(exc), str(exc))
    return ("returned", type(value), value)


def _hook_everything(accessor: SourceAccessor, seen: list[str]) -> None:
    for op in accessor.operations.values():
        op.pre_hooks.append(lambda inputs, name=op.name: seen.append(name))
        op.post_hooks.append(lambda value: None)


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("mode", ["unhooked", "hooked", "watched"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_injected_matches_original(case: Case, mode: str) -> None:
    source_corpus.COUNTER[:] = [0]
    fn, args, kwargs = case.make()
    expected = _outcome(case, lambda: fn(*args, **kwargs))

    source_corpus.COUNTER[:] = [0]
    fn, args, kwargs = case.make()
    accessor = SourceAccessor(fn)
    seen: list[str] = []
    if mode == "hooked":
        _hook_everything(accessor, seen)
    if mode == "watched":
        with accessor.watch():
            got = _outcome(case, lambda: accessor(*args, **kwargs))
    else:
        got = _outcome(case, lambda: accessor(*args, **kwargs))
    assert got == expected
    if mode == "hooked" and accessor.operations:
        assert seen, "no hook ran although every operation was hooked"


def test_hooks_see_every_call_in_order() -> None:
    def fn(x):
        return max(abs(x), len(str(x)))

    accessor = SourceAccessor(fn)
    seen: list[str] = []
    _hook_everything(accessor, seen)
    assert accessor(-123) == 123
    assert seen == ["abs_0", "str_0", "len_0", "max_0"]


def test_original_and_injected_share_closure_state() -> None:
    def make():
        count = 0

        def bump():
            nonlocal count
            count += 1
            return count

        return bump

    bump = make()
    accessor = SourceAccessor(bump)
    assert bump() == 1
    assert accessor() == 2
    assert bump() == 3


def test_mutable_defaults_are_the_same_objects() -> None:
    def fn(x, acc=[]):  # noqa: B006
        acc.append(x)
        return len(acc)

    accessor = SourceAccessor(fn)
    assert fn(1) == 1
    assert accessor(2) == 2
    assert accessor.injected.__defaults__[0] is fn.__defaults__[0]


def test_locals_show_no_extra_names() -> None:
    def fn(x):
        y = abs(x)
        return locals()

    accessor = SourceAccessor(fn)
    accessor.operations["abs_0"].post_hooks.append(lambda v: None)
    assert accessor(-2) == fn(-2) == {"x": -2, "y": 2}


def test_generator_identity_and_qualnames() -> None:
    def outer(n):
        def inner(v):
            return v + 1

        gen = (inner(i) for i in range(n))
        return inner.__qualname__, type(gen).__name__, gen.__qualname__, list(gen)

    accessor = SourceAccessor(outer)
    assert accessor(3) == outer(3)
    assert accessor.injected.__qualname__ == outer.__qualname__


@pytest.mark.parametrize("mode", ["unhooked", "hooked", "watched"])
def test_stdlib_modules_behave_identically_when_injected(mode: str) -> None:
    script = Path(__file__).with_name("stdlib_stress.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, str(script), mode], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    patched, same = result.stdout.split()
    assert int(patched.split("=")[1]) > 200
    assert same == "same=True"


def test_keyword_defaults_are_shared() -> None:
    def fn(*, k=None):
        return k

    accessor = SourceAccessor(fn)
    fn.__kwdefaults__["k"] = "changed"  # type: ignore[index]
    assert accessor() == "changed"
