"""Mediator: events from the worker side, barriers, hooks, caches, push/pull."""

from __future__ import annotations

import sys
import traceback
from typing import Any

import pytest
from interleaver_testkit import Envoy, Handle, layers, model

from endoscope_interleaver import (
    EarlyStopException,
    Gate,
    Interleaver,
    Mediator,
    MissedProviderError,
    Scheduler,
)


def next_line() -> int:
    return sys._getframe(1).f_lineno + 1


# ---------------------------------------------------------------- barrier


@pytest.mark.timeout(10)
def test_barrier_lets_a_later_mediator_use_an_earlier_ones_value(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    L = layers(interleaver)
    barrier = interleaver.barrier(2)
    shared: dict[str, Any] = {}
    seen: list[Any] = []

    def source() -> None:
        shared["emb"] = L[0].output
        barrier()

    def target() -> None:
        barrier()  # waits from the start until the source has layer 0's output
        L[0].output = shared["emb"] * 10
        seen.append(L[2].output)

    interleaver.initialize([Mediator(source), Mediator(target)])
    with interleaver:
        out = model(interleaver)
    assert seen == [12]
    assert out == 12


@pytest.mark.timeout(10)
def test_barrier_releases_in_mediator_order_where_last_arrives(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    L = layers(interleaver)
    barrier = interleaver.barrier(3)
    log: list[str] = []

    def make(name: str, layer: int) -> Any:
        def intervention() -> None:
            L[layer].output
            barrier()
            log.append(f"{name} released")
            L[1].output = L[1].output + 1  # all at layer 1, where the last one arrived

        return intervention

    interleaver.initialize([Mediator(make("c", 1)), Mediator(make("a", 0)), Mediator(make("b", 0))])
    with interleaver:
        out = model(interleaver)
    assert log == ["c released", "a released", "b released"]
    assert out == 2 + 3 + 1
    assert repr(barrier) == "<Barrier 0/3>"


@pytest.mark.timeout(10)
def test_barrier_is_reusable(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    L = layers(interleaver)
    barrier = interleaver.barrier(2)
    log: list[str] = []

    def make(name: str) -> Any:
        def intervention() -> None:
            barrier()
            log.append(f"{name}1")
            L[1].output
            barrier()
            log.append(f"{name}2")

        return intervention

    interleaver.initialize([Mediator(make("a")), Mediator(make("b"))])
    with interleaver:
        model(interleaver)
    assert log == ["a1", "b1", "a2", "b2"]


@pytest.mark.timeout(10)
def test_barrier_never_completed_fails_at_end(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    L = layers(interleaver)
    barrier = interleaver.barrier(2)
    lines: list[int] = []

    def lonely() -> None:
        L[0].output
        lines.append(next_line())
        barrier()

    interleaver.initialize([Mediator(lonely), Mediator(lambda: None)])
    with pytest.raises(MissedProviderError) as info:
        with interleaver:
            model(interleaver)
    assert info.value.location == (__file__, lines[0])
    assert str(info.value).splitlines()[0] == (
        "A barrier for 2 interventions was reached by only 1 of them before the run ended."
    )


@pytest.mark.timeout(10)
def test_partner_error_reported_before_barrier_error(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    barrier = interleaver.barrier(2)

    def waits_at_barrier() -> None:
        barrier()

    def misses() -> None:
        interleaver.current.request("never")  # type: ignore[union-attr]
        barrier()

    interleaver.initialize([Mediator(waits_at_barrier), Mediator(misses)])
    with pytest.raises(MissedProviderError) as info:
        with interleaver:
            pass
    assert info.value.requester == "never"


def test_barrier_arguments_and_outside_use(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    with pytest.raises(ValueError, match="at least 1 participant, got 0"):
        interleaver.barrier(0)
    with pytest.raises(RuntimeError, match="from inside an intervention"):
        interleaver.barrier(1)()


@pytest.mark.timeout(10)
def test_barrier_of_one_returns_at_once(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    barrier = interleaver.barrier(1)
    log: list[str] = []
    interleaver.initialize([Mediator(lambda: (barrier(), log.append("through")))])
    with interleaver:
        pass
    assert log == ["through"]


# ------------------------------------------------------------- worker side


@pytest.mark.timeout(10)
def test_exception_event_reraised_on_model_side(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    error = ValueError("sent explicitly")

    def intervention() -> None:
        interleaver.current.request("p")  # type: ignore[union-attr]
        interleaver.current.exception(error)  # type: ignore[union-attr]

    interleaver.initialize([Mediator(intervention)])
    with pytest.raises(ValueError) as info:
        with interleaver:
            interleaver.handle("p", 1)
    assert info.value is error


def test_stop_raises_early_stop_in_the_worker() -> None:
    with pytest.raises(EarlyStopException, match="stopped by intervention 'inv'"):
        Mediator(lambda: None, name="inv").stop()


def test_request_when_not_running_says_so() -> None:
    with pytest.raises(RuntimeError, match="mediator 'inv' is not running"):
        Mediator(lambda: None, name="inv").request("x")


def test_history_needs_a_run() -> None:
    with pytest.raises(RuntimeError, match="has not been started"):
        _ = Mediator(lambda: None, name="inv").history


@pytest.mark.timeout(10)
def test_start_twice_refused(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    mediator = Mediator(lambda: interleaver.current.request("x"))  # type: ignore[union-attr]
    interleaver.initialize([mediator])
    with interleaver:
        with pytest.raises(RuntimeError, match="already running"):
            mediator.start(interleaver)
        interleaver.handle("x", 1)


@pytest.mark.timeout(10)
def test_mediator_handle_serves_only_that_mediator(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    got: dict[str, Any] = {}

    def make(name: str) -> Any:
        def intervention() -> None:
            got[name] = interleaver.current.request("p")  # type: ignore[union-attr]

        return intervention

    a, b = Mediator(make("a")), Mediator(make("b"))
    interleaver.initialize([a, b])
    with interleaver:
        assert b.handle("p", "for b") == "for b"
        assert got == {"b": "for b"}
        assert a.waiting == "p" and b.waiting is None
        assert interleaver.handle("p", "for a") == "for a"
    assert got == {"a": "for a", "b": "for b"}


@pytest.mark.timeout(10)
def test_push_and_pull_wrap_every_switch(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    L = layers(interleaver)
    calls: list[str] = []

    def intervention() -> None:
        calls.append("start")
        L[0].output
        L[1].output = 5

    mediator = Mediator(
        intervention,
        push=lambda m: calls.append(f"push {m.name}"),
        pull=lambda m: calls.append(f"pull {m.name}"),
        name="inv",
    )
    interleaver.initialize([mediator])
    with interleaver:
        model(interleaver)
    assert calls == ["start", "push inv", "pull inv", "push inv", "pull inv"]


@pytest.mark.timeout(10)
def test_state_reset_between_runs(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    L = layers(interleaver)
    seen: list[Any] = []

    def intervention() -> None:
        mediator = interleaver.current
        assert mediator is not None
        seen.append(dict(mediator.iteration_tracker))
        seen.append(mediator.iteration)
        mediator.iteration_tracker["model.layer0.output"] += 1
        mediator.iteration = 1
        seen.append(L[0].output)

    mediator = Mediator(intervention)
    interleaver.initialize([mediator])
    for _ in range(2):
        with interleaver:
            model(interleaver, steps=2)
    assert seen == [{}, None, 4, {}, None, 4]


def test_user_cache_and_hooks(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    mediator = Mediator(lambda: None)
    cache: dict[str, Any] = {}
    mediator.set_user_cache(cache)
    assert mediator.user_cache == [cache]
    handles = [Handle(), Handle()]
    mediator.hooks.extend(handles)
    interleaver.initialize([mediator])
    with interleaver:
        pass
    assert [h.removed for h in handles] == [1, 1]
    assert mediator.hooks == []
    mediator.remove_hooks()  # nothing left: a no-op
    assert [h.removed for h in handles] == [1, 1]


def test_remove_hooks_removes_all_then_raises_first_error() -> None:
    class Broken:
        def remove(self) -> None:
            raise OSError("cannot remove")

    mediator = Mediator(lambda: None)
    fine = Handle()
    mediator.hooks.extend([Broken(), fine])
    with pytest.raises(OSError, match="cannot remove"):
        mediator.remove_hooks()
    assert fine.removed == 1
    assert mediator.hooks == []


@pytest.mark.timeout(10)
def test_repr_and_names(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    L = layers(interleaver)

    def intervention() -> None:
        L[1].output

    mediator = Mediator(intervention)
    assert mediator.name == "intervention"
    assert repr(mediator) == "<Mediator intervention idle>"
    interleaver.initialize([mediator])
    with interleaver:
        assert repr(mediator) == "<Mediator intervention waiting for model.layer1.output.i0>"
        assert repr(interleaver).startswith("<Interleaver interleaving mediators=1 ")
        model(interleaver)
    assert repr(mediator) == "<Mediator intervention idle>"
    assert Mediator(print, name="custom").name == "custom"


@pytest.mark.timeout(10)
def test_intervention_arguments(scheduler: Scheduler) -> None:
    got: list[Any] = []
    interleaver = Interleaver(
        [Mediator(lambda a, b=0: got.append((a, b)), args=(1,), kwargs={"b": 2})],
        scheduler=scheduler,
    )
    interleaver.run(lambda: None)
    assert got == [(1, 2)]


def test_envoy_type_is_importable() -> None:
    assert Envoy.output.key == "output"


# ------------------------------------------------------------------- gate


class Flag:
    """A Gate that opens when ``key`` is in ``shared``."""

    def __init__(self, shared: dict[str, Any], key: str) -> None:
        self.shared = shared
        self.key = key

    def __repr__(self) -> str:
        return f"flag {self.key}"

    def ready(self) -> bool:
        return self.key in self.shared

    def never(self, mediator: Mediator) -> BaseException:
        return LookupError(f"{mediator.name} waited in vain for {self.key}")


@pytest.mark.timeout(10)
def test_a_gate_opens_where_another_mediator_made_it_ready(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    L = layers(interleaver)
    shared: dict[str, Any] = {}

    def source() -> None:
        shared["v"] = L[1].output

    def target() -> None:
        mediator = interleaver.current
        assert mediator is not None
        mediator.wait(Flag(shared, "v"))
        # Let go at layer 1's output, which can still be replaced.
        L[1].output = shared["v"] * 10

    interleaver.initialize([Mediator(source), Mediator(target, name="target")])
    with interleaver:
        out = model(interleaver)
        assert interleaver.mediators[1].gate is None
    assert out == 2 * 10 + 1


@pytest.mark.timeout(10)
def test_a_waiting_mediator_says_what_it_waits_for(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    L = layers(interleaver)
    shared: dict[str, Any] = {}
    seen: list[Any] = []

    def source() -> None:
        L[2].output
        shared["v"] = 1

    def target() -> None:
        mediator = interleaver.current
        assert mediator is not None
        mediator.wait(Flag(shared, "v"))
        seen.append(L[2].output)

    interleaver.initialize([Mediator(source), Mediator(target, name="target")])
    with interleaver:
        gated = interleaver.mediators[1]
        assert repr(gated) == "<Mediator target waiting for flag v>"
        assert isinstance(gated.gate, Flag) and isinstance(gated.gate, Gate)
        model(interleaver)
    assert seen == [3]  # let go when the source ended, still at layer 2's output


@pytest.mark.timeout(10)
def test_a_gate_no_one_can_open_fails_at_once_at_the_waiting_line(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    L = layers(interleaver)
    barrier = interleaver.barrier(2)
    shared: dict[str, Any] = {}
    log: list[str] = []

    def source() -> None:
        barrier()  # the target reaches it only after its wait: a deadlock
        shared["v"] = L[1].output

    def target() -> None:
        mediator = interleaver.current
        assert mediator is not None
        lines.append(next_line())
        mediator.wait(Flag(shared, "v"))
        barrier()

    lines: list[int] = []
    interleaver.initialize([Mediator(source), Mediator(target, name="target")])
    with pytest.raises(LookupError, match="target waited in vain for v") as caught:
        with interleaver:
            model(interleaver, log=log)
    assert log == []  # found before the computation ran, not at its end
    frames = [f for f in traceback.extract_tb(caught.value.__traceback__) if f.name == "target"]
    assert frames[-1].lineno == lines[0]


@pytest.mark.timeout(10)
def test_a_gate_still_closed_when_the_others_end_fails(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    L = layers(interleaver)
    log: list[str] = []

    def source() -> None:
        L[0].output

    def target() -> None:
        mediator = interleaver.current
        assert mediator is not None
        mediator.wait(Flag({}, "v"))

    interleaver.initialize([Mediator(source), Mediator(target, name="target")])
    with pytest.raises(LookupError, match="target waited in vain"):
        with interleaver:
            model(interleaver, log=log)
    assert log == ["layer0"]  # the source's end left no one able to open it


@pytest.mark.timeout(10)
def test_a_gate_still_closed_at_the_end_of_the_run_fails(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    seen: list[str] = []

    def source() -> None:
        mediator = interleaver.current
        assert mediator is not None
        try:
            mediator.request("never.i0")  # waits until the run ends
        except MissedProviderError:
            seen.append("missed")

    def target() -> None:
        mediator = interleaver.current
        assert mediator is not None
        try:
            mediator.wait(Flag({}, "v"))
        except LookupError as error:
            seen.append(str(error))

    interleaver.initialize([Mediator(source), Mediator(target, name="target")])
    with interleaver:
        model(interleaver)
    assert seen == ["missed", "target waited in vain for v"]
