"""Traces from several threads: one at a time per module tree, each with its own values.

Every test runs on both schedulers (conftest). Expected values come from the same
modules called directly, in the tracing threads themselves, while other threads
trace them (a plain call must not be served to another thread's trace).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch

from endoscope_envoy import NNsight, TraceDeadlockError
from endoscope_envoy._locking import _WAITING, lock_of
from endoscope_tracing import SAVED

GUARD = 120  # seconds: only a safeguard against a hang, never a measurement


def _run_threads(targets: list[Callable[[], None]]) -> list[BaseException]:
    """Run each target on its own thread; the errors they raised."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as error:  # reported by the test
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(t,), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GUARD)
    assert not any(t.is_alive() for t in threads), "a thread is still waiting: deadlock"
    return errors


def _assert_clean(net: torch.nn.Module, before: set[threading.Thread]) -> None:
    """Nothing a trace added is left on the modules, no lock is held, no thread lingers."""
    for module in net.modules():
        assert "forward" not in module.__dict__
        assert not module._forward_hooks
        assert not module._forward_pre_hooks
    assert lock_of(net).owner is None
    assert not _WAITING
    assert not SAVED.active
    assert "grad" not in torch.Tensor.__dict__
    assert set(threading.enumerate()) <= before


def _plain(net: Any, x: torch.Tensor, *, zero_fc1: bool = False, double_0: bool = False) -> Any:
    """``net(x)`` and its first layer's output, with the trace's edits done by hand."""
    with torch.no_grad():
        h0 = net.layers[0](net.embed(x))
        h = h0 * 2 if double_0 else h0
        layer = net.layers[1]
        h = h if zero_fc1 else layer(h)  # a zeroed fc adds relu(0) = 0 to the residual
        h = net.layers[2](h)
        return h0, net.head(h)


def _trace_mix(model: NNsight, net: Any, seed: int, count: int) -> None:
    """``count`` traces of ``model`` mixing saves, edits, exceptions, stops and invokes."""
    generator = torch.Generator().manual_seed(seed)
    for i in range(count):
        x = torch.randn(2, 4, generator=generator)
        kind = i % 6
        if kind == 0:  # saves
            with model.trace(x):
                h0 = model.layers[0].output.save()
                out = model.output.save()
            want_h0, want = _plain(net, x)
            torch.testing.assert_close(h0, want_h0)
            torch.testing.assert_close(out, want)
        elif kind == 1:  # an in-place edit
            with model.trace(x):
                model.layers[1].fc.output[:] = 0
                out = model.output.save()
            torch.testing.assert_close(out, _plain(net, x, zero_fc1=True)[1])
        elif kind == 2:  # a replaced value
            with model.trace(x):
                model.layers[0].output = model.layers[0].output * 2
                out = model.output.save()
            torch.testing.assert_close(out, _plain(net, x, double_0=True)[1])
        elif kind == 3:  # an exception in the block
            with pytest.raises(ValueError, match=f"boom {seed} {i}$"):
                with model.trace(x):
                    model.layers[0].output.save()
                    raise ValueError(f"boom {seed} {i}")
        elif kind == 4:  # a stop
            after = []
            with model.trace(x) as tracer:
                h0 = model.layers[0].output.save()
                tracer.stop()
                after.append(1)
            assert after == []
            torch.testing.assert_close(h0, _plain(net, x)[0])
        else:  # two invokes, each with its own rows
            with model.trace() as tracer:
                with tracer.invoke(x[:1]):
                    first = model.output.save()
                with tracer.invoke(x[1:]):
                    second = model.output.save()
            torch.testing.assert_close(first, _plain(net, x[:1])[1])
            torch.testing.assert_close(second, _plain(net, x[1:])[1])


def test_four_threads_trace_one_module_through_two_wrappers(net: Any) -> None:
    before = set(threading.enumerate())
    models = [NNsight(net), NNsight(net)]
    errors = _run_threads(
        [lambda k=k: _trace_mix(models[k % 2], net, seed=k, count=200) for k in range(4)]
    )
    assert errors == []
    _assert_clean(net, before)


def test_overlapping_trees_take_turns(net: Any) -> None:
    """A wrapper of a submodule and one of the whole model share the submodule's
    wrappers and hooks: their traces must not overlap either."""
    before = set(threading.enumerate())
    whole, part = NNsight(net), NNsight(net.layers[1])

    def trace_part() -> None:
        generator = torch.Generator().manual_seed(7)
        for _ in range(100):
            h = torch.randn(2, 8, generator=generator)
            with part.trace(h):
                fc = part.fc.output.clone().save()
                part.fc.output[:] = 0
                out = part.output.save()
            with torch.no_grad():
                torch.testing.assert_close(fc, net.layers[1].fc(h))
            torch.testing.assert_close(out, h)

    errors = _run_threads([lambda: _trace_mix(whole, net, 3, 100), trace_part])
    assert errors == []
    _assert_clean(net, before)


def test_a_trace_inside_a_trace_of_the_same_model_goes_through(net: Any, x: torch.Tensor) -> None:
    model = NNsight(net)
    inside = threading.Event()
    other_done = threading.Event()

    def other() -> None:
        inside.wait(GUARD)
        with model.trace(x):
            out = model.output.save()
        torch.testing.assert_close(out, _plain(net, x)[1])
        other_done.set()

    alone: list[bool] = []

    def outer() -> None:
        with model.trace(x):
            first = model.layers[0].output.save()
            inside.set()  # the other thread now waits for this trace
            with model.trace(x * 2):
                nested = model.layers[0].output.save()
            alone.append(not other_done.is_set())  # the other trace waits for this one
        assert alone == [True]
        torch.testing.assert_close(first, _plain(net, x)[0])
        torch.testing.assert_close(nested, _plain(net, x * 2)[0])

    errors = _run_threads([outer, other])
    assert errors == []
    assert other_done.is_set()


def test_another_model_is_not_held_up(net: Any, x: torch.Tensor) -> None:
    """While one thread's trace of a model waits inside its block, another thread
    traces another model to the end."""
    torch.manual_seed(5)
    other_net = type(net)().eval()
    model, other = NNsight(net), NNsight(other_net)
    inside = threading.Event()
    done = threading.Event()
    seen: list[bool] = []

    def long_trace() -> None:
        with model.trace(x):
            h = model.layers[0].output.save()
            inside.set()
            seen.append(done.wait(GUARD))  # True only if the other trace finished
        torch.testing.assert_close(h, _plain(net, x)[0])

    def short_trace() -> None:
        inside.wait(GUARD)
        with other.trace(x):
            out = other.output.save()
        torch.testing.assert_close(out, _plain(other_net, x)[1])
        done.set()

    errors = _run_threads([long_trace, short_trace])
    assert errors == []
    assert seen == [True]


def test_crossed_nested_traces_raise_instead_of_deadlocking(net: Any, x: torch.Tensor) -> None:
    """Thread 1 opens a trace of B inside its trace of A, thread 2 one of A inside
    its trace of B: one of them is told, the other finishes."""
    torch.manual_seed(6)
    a, b = NNsight(net), NNsight(type(net)().eval())
    held = threading.Barrier(2)
    outputs: list[torch.Tensor] = []

    def crossed(first: NNsight, second: NNsight) -> Callable[[], None]:
        def run() -> None:
            with first.trace(x):
                first.layers[0].output.save()
                held.wait(GUARD)  # both hold their first model now
                with second.trace(x):
                    out = second.output.save()
            outputs.append(out)

        return run

    errors = _run_threads([crossed(a, b), crossed(b, a)])
    assert len(errors) == 1 and isinstance(errors[0], TraceDeadlockError), errors
    assert "Open nested traces of several models in the same order" in str(errors[0])
    assert len(outputs) == 1
    assert not _WAITING
    assert lock_of(net).owner is None


class _Gate(torch.nn.Module):
    """Identity; on the tracing thread it stops inside its forward until told to go
    on (the trace's computation is then between two points, its code waiting)."""

    def __init__(self) -> None:
        super().__init__()
        self.tracing: threading.Thread | None = None
        self.inside = threading.Event()
        self.go = threading.Event()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if threading.current_thread() is self.tracing:
            self.inside.set()
            self.go.wait(GUARD)
        return h


def test_plain_calls_from_other_threads_are_not_served(x: torch.Tensor) -> None:
    """A plain call of the model from another thread while a trace's forward runs
    goes untouched, and the trace never sees its values."""
    torch.manual_seed(8)
    gate = _Gate()
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), gate, torch.nn.Linear(8, 2)).eval()
    model = NNsight(net)
    plain: list[torch.Tensor] = []
    traced: list[torch.Tensor] = []

    def trace() -> None:
        gate.tracing = threading.current_thread()
        with model.trace(x):
            model[0].output[:] = 0
            traced.append(model[2].output.save())  # waits while the gate holds the forward

    def call() -> None:
        gate.inside.wait(GUARD)
        with torch.no_grad():
            plain.append(net(x * 3))
        gate.go.set()

    errors = _run_threads([trace, call])
    assert errors == []
    with torch.no_grad():
        torch.testing.assert_close(traced[0], net[2](torch.zeros(3, 8)))
        torch.testing.assert_close(plain[0], net[2](net[0](x * 3)))


def test_the_lock_is_shared_by_trees_with_a_module_in_common(net: Any) -> None:
    part = lock_of(net.layers[0])
    whole = lock_of(net)
    assert lock_of(net.layers[0])._root() is whole._root()
    assert part._root() is whole._root()
    alone = lock_of(torch.nn.Linear(2, 2))
    assert alone._root() is not whole._root()


def test_a_tree_spanning_two_locked_trees_merges_their_locks(net: Any) -> None:
    first, second = lock_of(net.layers[0]), lock_of(net.layers[2])
    assert first._root() is not second._root()
    whole = lock_of(net)
    assert first._root() is whole._root() and second._root() is whole._root()
    assert lock_of(net.layers[2].fc) is whole
