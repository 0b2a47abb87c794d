"""OperationAccessor: hook lists, one-shot replacement, live reads, wrap_operation."""

from __future__ import annotations

import copy
import pickle

import pytest

from endoscope_source import HookList, OperationAccessor, SourceAccessor, wrap_operation


def scaled(x, factor=2):
    return round(abs(x) * factor, 2)


def accessor() -> SourceAccessor:
    return SourceAccessor(scaled, path="model.layer")


def test_operations_have_names_paths_and_sites() -> None:
    acc = accessor()
    op = acc.operations["abs_0"]
    assert isinstance(op, OperationAccessor)
    assert (op.name, op.path) == ("abs_0", "model.layer.source.abs_0")
    assert op.text == "abs(x)" and op.line == scaled.__code__.co_firstlineno + 1
    assert op.accessor is acc
    assert not op.hooked and op.nested is None
    assert repr(op) == f"<OperationAccessor model.layer.source.abs_0 line {op.line} unhooked>"


def test_pre_hook_receives_and_replaces_args_and_kwargs() -> None:
    acc = accessor()
    seen = []

    def pre(inputs):
        seen.append(inputs)
        args, kwargs = inputs
        return (args[0] * 10,), kwargs

    acc.operations["abs_0"].pre_hooks.append(pre)
    acc.operations["round_0"].pre_hooks.append(lambda inputs: None)
    assert acc(-1.5) == 30.0
    assert seen == [((-1.5,), {})]


def test_post_hooks_chain_and_none_keeps_the_value() -> None:
    acc = accessor()
    op = acc.operations["round_0"]
    op.post_hooks.extend([lambda v: v + 1, lambda v: None, lambda v: v * 10])
    assert acc(3) == 70


def test_fn_hooks_and_one_shot_replacement() -> None:
    acc = accessor()
    op = acc.operations["abs_0"]
    seen = []
    op.fn_hooks.append(lambda fn: seen.append(fn))
    op.fn_replacement = lambda v: 100
    assert op.hooked
    assert acc(1) == 200
    assert op.fn_replacement is None
    assert seen[0]("ignored") == 100  # fn hooks see the replacement
    assert acc(1) == 2
    assert seen[1] is abs
    op.fn_hooks.clear()
    op.fn_hooks.append(lambda fn: lambda v: -v)
    assert acc(1) == -2


def test_one_shot_hooks_can_remove_themselves() -> None:
    acc = accessor()
    op = acc.operations["abs_0"]
    fired = []

    def once(value):
        fired.append(value)
        op.post_hooks.remove(once)

    op.post_hooks.append(once)
    assert acc(-2) == 4 and acc(-3) == 6
    assert fired == [2]
    assert not op.hooked and not acc.hooked


def test_hook_lists_are_read_when_the_site_calls() -> None:
    acc = accessor()
    op = acc.operations["abs_0"]
    late = []
    # Registered by the first hook, after the call started: still runs.
    op.post_hooks.append(lambda v: op.post_hooks.append(lambda w: late.append(w)))
    acc(1)
    assert late == []
    acc(2)
    assert late == [2]


def test_hooked_tracks_every_kind_of_list_change() -> None:
    acc = accessor()
    op = acc.operations["abs_0"]
    hooks = op.pre_hooks
    assert isinstance(hooks, HookList)

    def check(expected: bool) -> None:
        assert op.hooked is expected
        assert acc.hooked is expected
        assert (op._detour is True) is expected

    def h(inputs):
        return None

    check(False)
    hooks.append(h)
    check(True)
    hooks.pop()
    check(False)
    hooks.insert(0, h)
    check(True)
    del hooks[0]
    check(False)
    hooks += [h, h]
    check(True)
    hooks *= 0
    check(False)
    hooks.extend([h])
    hooks[0] = h
    check(True)
    hooks[:] = []
    check(False)
    op.fn_replacement = abs
    check(True)
    op.clear_hooks()
    check(False)
    op.post_hooks.append(h)
    acc.clear_hooks()
    check(False)


def test_hook_lists_copy_and_pickle_as_plain_lists() -> None:
    op = accessor().operations["abs_0"]
    op.pre_hooks.append(abs)
    assert copy.copy(op.pre_hooks) == [abs]
    assert pickle.loads(pickle.dumps(op.pre_hooks)) == [abs]
    assert type(pickle.loads(pickle.dumps(op.pre_hooks))) is list


def test_exceptions_from_hooks_and_callee_propagate() -> None:
    acc = accessor()
    op = acc.operations["abs_0"]

    def boom(inputs):
        raise KeyError("from hook")

    op.pre_hooks.append(boom)
    with pytest.raises(KeyError, match="from hook"):
        acc(1)
    op.pre_hooks.clear()
    op.post_hooks.append(lambda v: None)
    with pytest.raises(TypeError):
        acc("not a number")


def test_wrap_operation() -> None:
    op = accessor().operations["abs_0"]
    wrapped = wrap_operation(abs, op)
    assert wrapped(-4) == 4
    op.post_hooks.append(lambda v: v + 1)
    assert wrapped(-4) == 5
    assert "abs_0" in repr(wrapped)
    with pytest.raises(TypeError, match="needs a callable"):
        wrap_operation(3, op)  # type: ignore[arg-type]


def test_operation_without_accessor_still_works() -> None:
    acc = accessor()
    op = acc.operations["abs_0"]
    del acc
    assert op.accessor is None
    op.post_hooks.append(lambda v: v * 3)
    assert op._call(abs, -2) == 6
    assert str(op).startswith("model.layer.source.abs_0: abs(x)")
