"""SourceAccessor: calling, decorators, rebind, activity, recursion, lifetimes."""

from __future__ import annotations

import functools
import gc
import threading
import weakref
from collections.abc import Iterator

import pytest

from endoscope_source import (
    NO_INSTANCE,
    SourceAccessor,
    SourceMismatchError,
    UnsupportedFunctionError,
    Watch,
)


class Layer:
    def __init__(self, scale):
        self.scale = scale

    def __call__(self, x):
        return x * self.scale


class Block:
    def __init__(self):
        self.inner = Layer(2)
        self.outer = Layer(10)

    def forward(self, x):
        h = self.inner(x)
        return self.outer(abs(h)), helper(h)


def helper(v):
    return str(v) + "!", len(str(v))


class OtherBlock(Block):
    def forward(self, x):
        h = self.inner(x)
        return self.outer(abs(h)), helper(h)


@pytest.fixture
def no_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def test_unbound_method_takes_the_instance_first() -> None:
    acc = SourceAccessor(Block.forward, path="model.block")
    assert list(acc) == ["self_inner_0", "abs_0", "self_outer_0", "helper_0"]
    assert len(acc) == 4 and "abs_0" in acc
    block = Block()
    assert acc(block, -3) == block.forward(-3)
    assert acc.instance is NO_INSTANCE
    assert acc.bind(block)(-3) == block.forward(-3)
    assert acc.function is Block.forward and acc.given is Block.forward


def test_bound_method_passes_its_instance() -> None:
    block = Block()
    acc = SourceAccessor(block.forward)
    assert acc.instance is block
    assert acc(4) == block.forward(4)


def test_operations_by_attribute_and_item_with_suggestions() -> None:
    acc = SourceAccessor(Block.forward, path="model.block")
    assert acc.self_inner_0 is acc["self_inner_0"] is acc.operations["self_inner_0"]
    assert "self_outer_0" in dir(acc)
    with pytest.raises(AttributeError, match="did you mean 'self_inner_0'"):
        _ = acc.self_iner_0
    with pytest.raises(KeyError, match="model.block has no operation named 'zzz'"):
        _ = acc["zzz"]
    with pytest.raises(AttributeError):
        _ = acc.__deepcopy__


def test_source_and_metadata() -> None:
    acc = SourceAccessor(Block.forward)
    assert acc.source.startswith("def forward(self, x):")
    assert acc.filename == __file__
    assert acc.first_line == Block.forward.__code__.co_firstlineno
    assert [s.name for s in acc.sites] == list(acc)
    assert repr(acc) == f"<SourceAccessor for {__name__}.Block.forward, 4 operations>"


def counting(fn):
    calls = {"n": 0}

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        return ("wrapped", fn(*args, **kwargs))

    wrapper.calls = calls  # type: ignore[attr-defined]
    return wrapper


@counting
@counting
def decorated(x):
    return abs(x)


def test_decorators_are_kept_around_the_injected_function() -> None:
    acc = SourceAccessor(decorated)
    assert acc.given is decorated
    assert acc.function is decorated.__wrapped__.__wrapped__  # type: ignore[attr-defined]
    acc.abs_0.post_hooks.append(lambda v: v + 100)
    assert acc(-1) == ("wrapped", ("wrapped", 101))
    assert decorated(-1) == ("wrapped", ("wrapped", 1))
    # The clones share the decorators' state with the originals.
    assert decorated.calls["n"] == 2  # type: ignore[attr-defined]
    assert acc.injected.__wrapped__.__wrapped__ is not acc.function  # type: ignore[attr-defined]


def test_wrapper_without_the_function_in_a_closure_is_refused() -> None:
    def fn(x):
        return abs(x)

    def wrapper(*args):
        return fn(*args)

    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    other = wrapper
    del wrapper

    def unrelated(*args):
        return args

    unrelated.__wrapped__ = fn  # type: ignore[attr-defined]
    SourceAccessor(other)  # holds fn through a closure cell: fine
    with pytest.raises(UnsupportedFunctionError, match="does not keep"):
        SourceAccessor(unrelated)


def test_rebind_keeps_operations_and_hooks() -> None:
    acc = SourceAccessor(Block.forward)
    ops = dict(acc.operations)
    acc.abs_0.post_hooks.append(lambda v: -v)
    acc.rebind(OtherBlock.forward)
    assert acc.operations == ops and all(acc.operations[k] is ops[k] for k in ops)
    assert acc.function is OtherBlock.forward
    assert acc(OtherBlock(), 1)[0] == -20
    assert acc.abs_0.site.lineno == OtherBlock.forward.__code__.co_firstlineno + 2


def test_rebind_refuses_different_sources() -> None:
    acc = SourceAccessor(Block.forward)
    with pytest.raises(SourceMismatchError, match="call sites differ"):
        acc.rebind(helper)
    assert acc.function is Block.forward


def test_active_follows_hooks_and_watches() -> None:
    acc = SourceAccessor(Block.forward)
    outer = acc.self_outer_0  # its argument contains abs(h): a nested site
    inner = acc.self_inner_0
    assert not acc.active and outer._detour is None
    inner.pre_hooks.append(lambda inputs: None)
    assert acc.active and acc.hooked and outer._detour is True
    inner.pre_hooks.clear()
    assert not acc.active and outer._detour is None
    with acc.watch() as watch:
        assert isinstance(watch, Watch)
        assert acc.active and acc.watching and not acc.hooked
        assert outer._detour is True and inner._detour is None
        second = acc.watch()
    assert watch.closed and acc.active
    second.close()
    second.close()
    assert not acc.active and outer._detour is None


def test_a_hook_outliving_a_counting_watch_keeps_its_site_detoured_until_removed() -> None:
    # What a trace does: count from the start, hook one site, stop counting, unhook.
    acc = SourceAccessor(Block.forward)
    outer, inner = acc.self_outer_0, acc.self_inner_0
    block = Block()
    seen: list[object] = []
    watch = acc.watch(count=True)
    inner.post_hooks.append(seen.append)
    assert acc(block, -3) == block.forward(-3)
    watch.close()
    assert acc.active and acc.hooked and not acc.counting
    detours = {name: op._detour for name, op in acc.operations.items()}
    assert detours == {"self_inner_0": True, "abs_0": None, "self_outer_0": True, "helper_0": None}
    inner.post_hooks.remove(seen.append)
    assert not acc.active and not acc.hooked
    assert all(op._detour is None for op in acc.operations.values())
    assert acc(block, -3) == block.forward(-3)
    assert seen == [block.inner(-3)]  # the hooked call only
    assert (outer.calls, inner.calls) == (1, 1)  # counted only while the watch was open


def test_a_counting_watch_counts_every_call_of_every_site() -> None:
    acc = SourceAccessor(Block.forward)
    block = Block()
    acc(block, 1)  # not counting: nothing moves
    assert [(op.calls, op.returns) for op in acc.operations.values()] == [(0, 0)] * 4
    acc.helper_0.post_hooks.append(lambda v: None)  # hooked sites count too
    with acc.watch(count=True):
        assert acc.counting and acc.active
        assert all(op._detour is True for op in acc.operations.values())
        acc(block, 1)
        acc(block, 2)
        counts = {name: (op.calls, op.returns) for name, op in acc.operations.items()}
    assert counts == dict.fromkeys(("self_inner_0", "abs_0", "self_outer_0", "helper_0"), (2, 2))
    assert not acc.counting and acc.abs_0._detour is None
    acc(block, 3)
    assert acc.abs_0.calls == 2  # stopped with the watch
    with acc.watch(count=True) as first:
        acc(block, 1)
        with acc.watch(count=True):  # a second counter does not start again from zero
            acc(block, 1)
        assert acc.counting and acc.abs_0.calls == 2
    assert first.closed and not acc.counting


def boom(v):
    raise ValueError(v)


def helper_then_boom(x):
    return helper(x), boom(x)


def pick_and_call(x, flag):
    fn = abs if flag else helper
    return fn(x)


def test_last_callee_is_what_a_slow_call_called() -> None:
    acc = SourceAccessor(pick_and_call)
    acc(-1, True)
    assert acc.fn_0.last_callee is None  # not counted: nothing recorded
    with acc.watch(count=True):
        acc(-1, True)
        assert acc.fn_0.last_callee is abs
        acc(-1, False)
        assert acc.fn_0.last_callee is helper
        acc.fn_0.fn_hooks.append(lambda fn: abs)  # replaced by a hook: the site's own callee
        assert acc(-1, False) == 1
        assert acc.fn_0.last_callee is helper
    acc(-1, True)
    assert acc.fn_0.last_callee is helper  # no longer counted


class Owner:
    def run(self, x):
        method = self.double
        return method(x)

    def double(self, x):
        return x * 2


def test_last_callee_keeps_no_instance_alive(no_gc: None) -> None:
    owner = Owner()
    acc = SourceAccessor(Owner.run)
    owner.accessor = acc  # an object caching its own accessor, as modules do
    with acc.watch(count=True):
        assert acc(owner, 2) == 4
    assert acc.method_0.last_callee is Owner.double
    ref = weakref.ref(owner)
    del owner, acc
    assert ref() is None


class Bag(list):
    """A list that weak references can follow."""


def add_to(bag, x):
    add = bag.append
    add(x)
    return len(bag)


def test_last_callee_keeps_no_object_of_a_builtin_method_alive(no_gc: None) -> None:
    bag = Bag()
    acc = SourceAccessor(add_to)
    with acc.watch(count=True):
        assert acc(bag, 1) == 1
        assert (acc.add_0.calls, acc.add_0.returns) == (1, 1)
    assert acc.add_0.last_callee is None  # bag.append would hold the bag
    ref = weakref.ref(bag)
    del bag
    assert ref() is None


class Answering:
    """A callable object that answers missing attributes in Python, as torch
    modules do (and slowly: an exception raised per miss)."""

    def __init__(self) -> None:
        self.misses: list[str] = []

    def __getattr__(self, name: str) -> None:
        self.misses.append(name)
        raise AttributeError(name)

    def __call__(self, x: int) -> int:
        return x + 1


def call_answering(obj, x):
    return obj(x)


def test_counting_a_call_looks_up_no_attribute_of_the_callee() -> None:
    obj = Answering()
    acc = SourceAccessor(call_answering)
    with acc.watch(count=True):
        assert acc(obj, 1) == 2
    assert acc.obj_0.last_callee is obj
    assert obj.misses == []


def test_a_call_that_raises_is_counted_as_started_not_finished() -> None:
    acc = SourceAccessor(helper_then_boom)
    with acc.watch(count=True), pytest.raises(ValueError):
        acc(1)
    assert (acc.helper_0.calls, acc.helper_0.returns) == (1, 1)
    assert (acc.boom_0.calls, acc.boom_0.returns) == (1, 0)


def test_hook_registered_by_an_inner_operation_fires() -> None:
    acc = SourceAccessor(Block.forward)
    seen = []

    def on_abs(value):
        # Registered while self.outer's argument is being evaluated.
        acc.self_outer_0.post_hooks.append(lambda v: seen.append(v))

    acc.abs_0.post_hooks.append(on_abs)
    acc(Block(), -2)
    assert seen == [40]


def pipe(first, second, x):
    return second(first(x))


def test_hook_registered_from_outside_needs_a_watch() -> None:
    acc = SourceAccessor(pipe)
    seen = []

    def register_then_double(x):
        # Plays the part of another object's hook (e.g. a module's output
        # hook): it runs inside the argument of second(...) but is not hooked
        # as an operation, so nothing tells the accessor to wait.
        acc.second_0.post_hooks.append(lambda v: seen.append(v))
        return x * 2

    assert acc(register_then_double, str, 3) == "6"
    assert seen == []  # second_0 was checked before its argument ran: missed
    acc.clear_hooks()
    with acc.watch():
        acc(register_then_double, str, 3)
    assert seen == ["6"]


def test_interleaved_consumer_on_another_thread() -> None:
    acc = SourceAccessor(Block.forward)
    to_consumer: list[object] = []
    ready, resume = threading.Event(), threading.Event()
    results = {}

    def one_shot(op, key):
        def hook(value):
            op.post_hooks.remove(hook)
            to_consumer.append(value)
            ready.set()
            resume.wait(5)
            resume.clear()

        return hook

    def consumer():
        for key in ("abs_0", "self_outer_0"):
            op = acc[key]
            op.post_hooks.append(one_shot(op, key))
            if key != "abs_0":
                resume.set()  # let the paused abs_0 hook return
            ready.wait(5)
            ready.clear()
            results[key] = to_consumer[-1]
        resume.set()

    worker = threading.Thread(target=consumer)
    with acc.watch():
        worker.start()
        while not acc.abs_0.hooked:
            pass
        out = acc(Block(), -4)
    worker.join(5)
    assert results == {"abs_0": 8, "self_outer_0": 80}
    assert out[0] == 80
    assert not acc.hooked


def test_recursive_tracing_into_a_called_function() -> None:
    acc = SourceAccessor(Block.forward, path="model")
    op = acc.helper_0
    op.fn_hooks.append(lambda fn: op.injected_for(fn))
    nested = op.source_for(helper)
    assert nested is op.nested and nested.path == "model.source.helper_0"
    assert nested.str_0.path == "model.source.helper_0.source.str_0"
    nested.len_0.post_hooks.append(lambda v: v * 100)
    assert acc(Block(), 5)[1] == ("10!", 200)


def test_recursive_tracing_into_a_bound_method_and_rebinding() -> None:
    def run(block, x):
        return block.forward(x)

    acc = SourceAccessor(run)
    op = acc.block_forward_0
    op.fn_hooks.append(lambda fn: op.injected_for(fn))
    nested = op.source_for(Block().forward)
    nested.abs_0.post_hooks.append(lambda v: v + 1)
    assert acc(Block(), -1)[0] == 30
    # Same source (another class with an identical forward): rebinds in place.
    assert op.source_for(OtherBlock().forward) is nested
    assert nested.function is OtherBlock.forward
    with pytest.raises(SourceMismatchError):
        op.source_for(helper)


def test_no_reference_cycles(no_gc: None) -> None:
    acc = SourceAccessor(Block.forward, path="m")
    acc.abs_0.post_hooks.append(lambda v: v)
    with acc.watch():
        acc(Block(), 1)
    op_ref = weakref.ref(acc.abs_0)
    acc_ref = weakref.ref(acc)
    injected_ref = weakref.ref(acc.injected)
    del acc
    assert acc_ref() is None
    assert op_ref() is None
    assert injected_ref() is None


def test_copies_and_pickles_are_fresh_accessors() -> None:
    import copy
    import pickle

    class Holder:
        pass

    holder = Holder()
    holder.acc = SourceAccessor(helper, path="p")  # type: ignore[attr-defined]
    holder.acc.str_0.post_hooks.append(lambda v: v)  # type: ignore[attr-defined]
    clone = copy.deepcopy(holder)
    assert clone.acc is not holder.acc  # type: ignore[attr-defined]
    assert clone.acc.path == "p" and clone.acc.function is helper  # type: ignore[attr-defined]
    assert not clone.acc.hooked  # type: ignore[attr-defined]
    restored = pickle.loads(pickle.dumps(SourceAccessor(helper, path="q")))
    assert restored.path == "q" and restored(12) == helper(12)
    block = Block()
    bound = copy.deepcopy(SourceAccessor(block.forward))
    assert bound.instance is not block and bound(2) == block.forward(2)


def test_an_injected_function_stands_for_its_original() -> None:
    acc = SourceAccessor(decorated)
    again = SourceAccessor(acc.injected)
    assert again.function is acc.function and again.given is decorated
    op = SourceAccessor(Block.forward).helper_0
    nested = op.source_for(helper)
    assert op.source_for(nested.injected) is nested
    assert nested.given is helper


def test_a_dropped_watch_closes_itself(no_gc: None) -> None:
    acc = SourceAccessor(Block.forward)
    acc.watch()  # not kept
    assert not acc.active and not acc.watching
