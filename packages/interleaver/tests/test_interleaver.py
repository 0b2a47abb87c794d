"""Interleaver: serving values, swaps, skips, order, iterations, stop, errors, cleanup."""

from __future__ import annotations

import sys
import threading
import traceback
from typing import Any

import pytest
from interleaver_testkit import Envoy, Handle, layers, model, run, worker_threads

from endoscope_interleaver import (
    Cancelation,
    EarlyStopException,
    Interleaver,
    Mediator,
    MissedProviderError,
    OutOfOrderError,
    Scheduler,
    SkipException,
)


def next_line() -> int:
    """The line number after the caller's current line."""
    return sys._getframe(1).f_lineno + 1


# ----------------------------------------------------------------- values


def test_value_delivery(scheduler: Scheduler) -> None:
    seen: list[Any] = []

    def intervention(L: list[Envoy]) -> None:
        seen.append(L[0].input)
        seen.append(L[0].output)
        seen.append(L[2].output)

    out, _ = run(scheduler, intervention)
    assert seen == [0, 1, 3]
    assert out == 3


def test_swap_replaces_value_for_rest_of_run(scheduler: Scheduler) -> None:
    def intervention(L: list[Envoy]) -> None:
        L[0].output = 10

    out, _ = run(scheduler, intervention)
    assert out == 12


def test_read_then_swap_same_provider(scheduler: Scheduler) -> None:
    def intervention(L: list[Envoy]) -> None:
        L[1].output = L[1].output * 100

    out, _ = run(scheduler, intervention)
    assert out == 201


def test_swap_then_read_same_provider_sees_swap(scheduler: Scheduler) -> None:
    seen: list[Any] = []

    def intervention(L: list[Envoy]) -> None:
        L[1].output = 50
        seen.append(L[1].output)

    out, _ = run(scheduler, intervention)
    assert seen == [50]
    assert out == 51


def test_handle_without_run_returns_value(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    assert interleaver.handle("a.output", 5) == 5
    assert interleaver.handle("a.output", 6, iterate=True) == 6
    assert interleaver.interleaving is False


def test_unrequested_providers_pass_through(scheduler: Scheduler) -> None:
    def intervention(L: list[Envoy]) -> None:
        assert L[2].output == 3

    interleaver = Interleaver([], scheduler=scheduler)
    envoys = layers(interleaver)
    interleaver.initialize([Mediator(intervention, args=(envoys,))])
    with interleaver:
        assert interleaver.handle("elsewhere", "untouched") == "untouched"
        assert model(interleaver) == 3
        assert interleaver.ran("elsewhere")
        assert interleaver.ran("model.layer2.output.i0")
        assert not interleaver.ran("model.layer2.output.i1")
    assert "elsewhere" not in interleaver.history


def test_history_lists_providers_of_the_run(scheduler: Scheduler) -> None:
    interleaver = Interleaver([Mediator(lambda: None)], scheduler=scheduler)
    with interleaver:
        model(interleaver, layers=2)
        interleaver.handle("plain", 1)
        assert interleaver.history == {
            "plain",
            "model.layer0.input.i0",
            "model.layer0.output.i0",
            "model.layer1.input.i0",
            "model.layer1.output.i0",
        }
        assert interleaver.calls == {
            "model.layer0.input": 1,
            "model.layer0.output": 1,
            "model.layer1.input": 1,
            "model.layer1.output": 1,
        }


def test_skip_raises_skip_exception_with_value(scheduler: Scheduler) -> None:
    def intervention(L: list[Envoy]) -> None:
        L[1].skip(40)
        assert L[1].output == 40

    interleaver = Interleaver(scheduler=scheduler)
    envoys = layers(interleaver)
    interleaver.initialize([Mediator(intervention, args=(envoys,))])
    ran: list[int] = []
    with interleaver:
        x = 0
        for i in range(3):
            try:
                x = interleaver.handle(f"model.layer{i}.input", x, iterate=True)
                ran.append(i)
                x = x + 1
            except SkipException as skip:
                assert skip.values == [(None, 40)]
                x = skip.value
            x = interleaver.handle(f"model.layer{i}.output", x, iterate=True)
    assert ran == [0, 2]
    assert x == 41


# ------------------------------------------------------------------ order


def test_mediators_served_in_fixed_order(scheduler: Scheduler) -> None:
    order: list[str] = []

    def make(name: str, first: int | None) -> Any:
        def intervention(L: list[Envoy]) -> None:
            if first is not None:
                L[first].output
            L[1].output
            order.append(name)

        return intervention

    # "c" waits on layer 1 from the start, "a" only after being served at layer 0:
    # they are still served in mediator order.
    run(scheduler, make("a", 0), make("b", None), make("c", None))
    assert order == ["a", "b", "c"]


def test_value_set_by_earlier_mediator_visible_to_later(scheduler: Scheduler) -> None:
    seen: list[Any] = []

    def patcher(L: list[Envoy]) -> None:
        L[1].output = 100

    def reader(L: list[Envoy]) -> None:
        seen.append(L[1].output)
        L[1].output = seen[0] + 1

    out, _ = run(scheduler, patcher, reader)
    assert seen == [100]
    assert out == 102


class RowBatcher:
    """Rows of a list: batch_group is ``(start, size)``."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def narrow(self, value: list[Any], batch_group: tuple[int, int]) -> list[Any]:
        self.calls.append("narrow")
        start, size = batch_group
        return value[start : start + size]

    def swap(self, value: list[Any], replacement: list[Any], batch_group: tuple[int, int]) -> Any:
        self.calls.append("swap")
        start, size = batch_group
        if len(replacement) != size:
            raise ValueError(f"expected {size} rows, got {len(replacement)}")
        return value[:start] + list(replacement) + value[start + size :]


def test_batcher_narrows_and_swaps_per_mediator(scheduler: Scheduler) -> None:
    seen: dict[str, Any] = {}

    def first(m: Interleaver) -> None:
        seen["first"] = m.current.request("out")  # type: ignore[union-attr]
        m.current.swap("out", ["A"])  # type: ignore[union-attr]

    def second(m: Interleaver) -> None:
        seen["second"] = m.current.request("out")  # type: ignore[union-attr]
        m.current.swap("out", ["B", "C"])  # type: ignore[union-attr]

    def whole(m: Interleaver) -> None:
        seen["whole"] = m.current.request("out")  # type: ignore[union-attr]

    batcher = RowBatcher()
    interleaver = Interleaver(scheduler=scheduler)
    interleaver.initialize(
        [
            Mediator(first, args=(interleaver,), batch_group=(0, 1)),
            Mediator(second, args=(interleaver,), batch_group=(1, 2)),
            Mediator(whole, args=(interleaver,)),
        ],
        batcher=batcher,
    )
    with interleaver:
        result = interleaver.handle("out", ["a", "b", "c"])
    assert seen == {"first": ["a"], "second": ["b", "c"], "whole": ["A", "B", "C"]}
    assert result == ["A", "B", "C"]
    assert batcher.calls == ["narrow", "swap", "narrow", "swap"]


@pytest.mark.timeout(10)
def test_batcher_error_raised_at_users_line(scheduler: Scheduler) -> None:
    lines: list[int] = []

    def intervention(m: Interleaver) -> None:
        lines.append(next_line())
        m.current.swap("out", ["too", "many"])  # type: ignore[union-attr]

    interleaver = Interleaver(scheduler=scheduler)
    interleaver.initialize(
        [Mediator(intervention, args=(interleaver,), batch_group=(0, 1))], batcher=RowBatcher()
    )
    with pytest.raises(ValueError, match="expected 1 rows, got 2") as info:
        with interleaver:
            interleaver.handle("out", ["a", "b"])
    frames = traceback.extract_tb(info.value.__traceback__)
    assert (frames[-1].name, frames[-1].lineno) == ("swap", frames[-1].lineno)
    assert any(f.name == "intervention" and f.lineno == lines[0] for f in frames)


# ------------------------------------------------------------- iterations


def test_iteration_inside_and_outside_iteration_context(scheduler: Scheduler) -> None:
    seen: list[tuple[str, Any]] = []

    def intervention(L: list[Envoy]) -> None:
        mediator = L[0].interleaver.current
        assert mediator is not None
        seen.append(("outside", L[0].output))  # .i0: the first call
        with mediator.iterating(1):
            seen.append(("step1", L[0].output))
            L[0].output = 100
        with mediator.iterating(2):
            seen.append(("step2", L[2].output))
        seen.append(("outside again", mediator.iteration))

    out, _ = run(scheduler, intervention, steps=3)
    # step 0 ends at 3; step 1: layer0 gives 4 -> 100, ends at 102; step 2 ends at 105
    assert seen == [("outside", 1), ("step1", 4), ("step2", 105), ("outside again", None)]
    assert out == 105


def test_iteration_tracker_advance(scheduler: Scheduler) -> None:
    seen: list[Any] = []

    def intervention(L: list[Envoy]) -> None:
        mediator = L[0].interleaver.current
        assert mediator is not None
        seen.append(L[0].interleaver.iterate_requester("model.layer0.output"))
        seen.append(L[0].output)
        mediator.iteration_tracker["model.layer0.output"] += 2
        seen.append(L[0].interleaver.iterate_requester("model.layer0.output"))
        seen.append(L[0].output)

    run(scheduler, intervention, steps=3)
    assert seen == ["model.layer0.output.i0", 1, "model.layer0.output.i2", 7]


def test_advance_moves_every_live_mediator(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    a = Mediator(lambda: interleaver.current.request("x.i1"))  # type: ignore[union-attr]
    b = Mediator(lambda: interleaver.current.request("x.i1"))  # type: ignore[union-attr]
    interleaver.initialize([a, b])
    with interleaver:
        interleaver.advance("x")
        assert a.iteration_tracker == {"x": 1}
        assert b.iteration_tracker == {"x": 1}
        interleaver.handle("x", 0, iterate=True)
        interleaver.handle("x", 1, iterate=True)
    assert interleaver.calls == {}  # reset after the run


def test_iterate_requester_without_current_mediator(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    assert interleaver.iterate_requester("a.output") == "a.output.i0"


def test_full_provider_strings_without_iterate(scheduler: Scheduler) -> None:
    seen: list[Any] = []

    def intervention(m: Interleaver) -> None:
        seen.append(m.current.request("block.output.i1"))  # type: ignore[union-attr]

    interleaver = Interleaver(scheduler=scheduler)
    interleaver.initialize([Mediator(intervention, args=(interleaver,))])
    with interleaver:
        assert interleaver.handle("block.output.i0", "first") == "first"
        assert interleaver.handle("block.output.i1", "second") == "second"
    assert seen == ["second"]


# ------------------------------------------------------ out of order, missed


@pytest.mark.timeout(10)
def test_out_of_order_names_request_position_and_line(scheduler: Scheduler) -> None:
    lines: list[int] = []

    def intervention(L: list[Envoy]) -> None:
        L[2].output
        lines.append(next_line())
        L[0].output

    with pytest.raises(OutOfOrderError) as info:
        run(scheduler, intervention)
    error = info.value
    assert error.requester == "model.layer0.output.i0"
    assert error.provider == "model.layer2.output.i0"
    assert error.location == (__file__, lines[0])
    assert str(error) == (
        "model.layer0.output.i0 was requested after the computation had already run it; "
        "it is now at model.layer2.output.i0.\n"
        f'Asked at: File "{__file__}", line {lines[0]}, in intervention\n'
        "    L[0].output\n"
        "Request values in the order the computation produces them: move this line "
        "before the request for a later point, or read it in another invoke or trace."
    )
    assert isinstance(error, MissedProviderError)


@pytest.mark.timeout(10)
def test_missed_provider_raised_when_run_ends(scheduler: Scheduler) -> None:
    lines: list[int] = []
    after: list[str] = []

    def intervention(L: list[Envoy]) -> None:
        lines.append(next_line())
        L[0].interleaver.current.request("model.layer9.output.i0")  # type: ignore[union-attr]
        after.append("never")

    with pytest.raises(MissedProviderError) as info:
        run(scheduler, intervention)
    error = info.value
    assert type(error) is MissedProviderError
    assert error.requester == "model.layer9.output.i0"
    assert error.location == (__file__, lines[0])
    assert str(error).splitlines()[0] == (
        "model.layer9.output.i0 was requested, but the computation ended without providing it."
    )
    assert after == []


def test_missed_error_is_an_extension_point(scheduler: Scheduler) -> None:
    # A caller that knows the computation's order can relabel a late read that no
    # provider announced (here: layer9 never reports, but "ran" before layer1).
    seen: list[tuple[str, str | None, str | None]] = []

    class Knowing(Interleaver):
        def missed_error(
            self, requester: str, asked_at: str | None, mediator: Mediator | None = None
        ) -> MissedProviderError:
            seen.append((requester, asked_at, mediator.name if mediator else None))
            return self.out_of_order_error(requester, asked_at)

    def intervention(L: list[Envoy]) -> None:
        L[1].output
        L[0].interleaver.current.request("model.layer9.output.i0")  # type: ignore[union-attr]

    interleaver = Knowing(scheduler=scheduler)
    interleaver.initialize([Mediator(intervention, args=(layers(interleaver),), name="knowing")])
    with pytest.raises(OutOfOrderError) as info:
        with interleaver:
            model(interleaver, 3)
    assert seen == [("model.layer9.output.i0", "model.layer1.output.i0", "knowing")]
    assert info.value.provider == "model.layer1.output.i0"


@pytest.mark.timeout(10)
def test_missed_iteration_says_how_often_it_ran(scheduler: Scheduler) -> None:
    def intervention(L: list[Envoy]) -> None:
        with L[0].interleaver.current.iterating(5):  # type: ignore[union-attr]
            L[1].output

    with pytest.raises(MissedProviderError) as info:
        run(scheduler, intervention, steps=3)
    assert str(info.value).splitlines()[0] == (
        "model.layer1.output.i5 was requested, but the computation ended without providing "
        "it (model.layer1.output ran 3 times: i0..i2)."
    )


@pytest.mark.timeout(10)
def test_missed_error_caught_by_user_then_more_requests(scheduler: Scheduler) -> None:
    caught: list[str] = []

    def intervention(L: list[Envoy]) -> None:
        for _ in range(2):
            try:
                L[0].interleaver.current.request("nowhere")  # type: ignore[union-attr]
            except MissedProviderError as error:
                caught.append(error.requester)

    run(scheduler, intervention)
    assert caught == ["nowhere", "nowhere"]


@pytest.mark.timeout(10)
def test_first_pending_error_wins_and_others_are_canceled(scheduler: Scheduler) -> None:
    finally_ran: list[str] = []

    def a(L: list[Envoy]) -> None:
        try:
            L[0].interleaver.current.request("missing.a")  # type: ignore[union-attr]
        finally:
            finally_ran.append("a")

    def b(L: list[Envoy]) -> None:
        try:
            L[0].interleaver.current.request("missing.b")  # type: ignore[union-attr]
        except Cancelation:
            finally_ran.append("b canceled")
            raise

    with pytest.raises(MissedProviderError) as info:
        run(scheduler, a, b)
    assert info.value.requester == "missing.a"
    assert finally_ran == ["a", "b canceled"]


# ------------------------------------------------------------- exceptions


@pytest.mark.timeout(10)
def test_worker_exception_reraised_with_original_traceback(scheduler: Scheduler) -> None:
    lines: list[int] = []
    log: list[str] = []

    def intervention(L: list[Envoy]) -> None:
        value = L[1].output
        lines.append(next_line())
        raise KeyError(f"bad {value}")

    interleaver = Interleaver(scheduler=scheduler)
    envoys = layers(interleaver)
    mediator = Mediator(intervention, args=(envoys,))
    hook = Handle()
    mediator.hooks.append(hook)
    interleaver.initialize([mediator])
    with pytest.raises(KeyError, match="bad 2") as info:
        with interleaver:
            model(interleaver, log=log)
    assert hook.removed == 1
    frames = traceback.extract_tb(info.value.__traceback__)
    assert (frames[-1].name, frames[-1].lineno) == ("intervention", lines[0])
    assert any(f.name == "model" for f in frames)  # raised where the model was
    assert log == ["layer0", "layer1"]  # the model stopped at layer 1's output
    assert interleaver.interleaving is False


@pytest.mark.timeout(10)
def test_worker_exception_at_start_raised_from_enter(scheduler: Scheduler) -> None:
    started: list[str] = []

    def broken() -> None:
        raise RuntimeError("broken before any request")

    def other() -> None:
        started.append("other")

    interleaver = Interleaver([Mediator(broken), Mediator(other)], scheduler=scheduler)
    with pytest.raises(RuntimeError, match="broken before any request"):
        with interleaver:
            pytest.fail("the body must not run")
    assert started == []
    assert interleaver.interleaving is False


@pytest.mark.timeout(10)
def test_model_exception_cancels_workers(scheduler: Scheduler) -> None:
    unwound: list[str] = []

    def intervention(L: list[Envoy]) -> None:
        try:
            L[2].output
        except Cancelation:
            unwound.append("canceled")
            raise

    interleaver = Interleaver(scheduler=scheduler)
    envoys = layers(interleaver)
    hook = Handle()
    mediator = Mediator(intervention, args=(envoys,))
    interleaver.initialize([mediator])
    with pytest.raises(ZeroDivisionError):
        with interleaver:
            mediator.hooks.append(hook)
            model(interleaver, layers=1)
            1 / 0
    assert unwound == ["canceled"]
    assert hook.removed == 1
    assert mediator.hooks == []
    assert not mediator.alive


@pytest.mark.timeout(10)
def test_exception_raised_while_unwinding_a_cancel_is_ignored(scheduler: Scheduler) -> None:
    def intervention(L: list[Envoy]) -> None:
        try:
            L[2].output
        finally:
            raise ValueError("noise during cancel")

    interleaver = Interleaver(scheduler=scheduler)
    interleaver.initialize([Mediator(intervention, args=(layers(interleaver),))])
    with pytest.raises(ZeroDivisionError):
        with interleaver:
            1 / 0


# ------------------------------------------------------------ early stop


@pytest.mark.timeout(10)
def test_stop_ends_the_computation_quietly(scheduler: Scheduler) -> None:
    log: list[str] = []
    seen: list[Any] = []
    unwound: list[str] = []

    def stopper(L: list[Envoy]) -> None:
        seen.append(L[0].output)
        L[0].interleaver.current.stop()  # type: ignore[union-attr]

    def waiter(L: list[Envoy]) -> None:
        try:
            L[2].output
        except Cancelation:
            unwound.append("waiter canceled")
            raise

    interleaver = Interleaver(scheduler=scheduler)
    envoys = layers(interleaver)
    hook = Handle()
    first = Mediator(stopper, args=(envoys,))
    first.hooks.append(hook)
    interleaver.initialize([first, Mediator(waiter, args=(envoys,))])
    result = interleaver.run(model, interleaver, 3, 1, 0, log)
    assert result is None
    assert seen == [1]
    assert log == ["layer0"]
    assert unwound == ["waiter canceled"]
    assert hook.removed == 1


@pytest.mark.timeout(10)
def test_stop_before_first_provider(scheduler: Scheduler) -> None:
    log: list[str] = []
    interleaver = Interleaver(scheduler=scheduler)
    later: list[str] = []

    def stopper() -> None:
        interleaver.current.stop()  # type: ignore[union-attr]

    interleaver.initialize([Mediator(stopper), Mediator(lambda: later.append("ran"))])
    with interleaver:
        model(interleaver, log=log)
        pytest.fail("the model must stop at its first provider")
    assert log == []
    assert later == []


@pytest.mark.timeout(10)
def test_stop_before_start_without_any_provider(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    interleaver.initialize([Mediator(lambda: interleaver.current.stop())])  # type: ignore[union-attr]
    assert interleaver.run(lambda: "done") == "done"


@pytest.mark.timeout(10)
def test_early_stop_caught_by_the_computation(scheduler: Scheduler) -> None:
    def stopper(L: list[Envoy]) -> None:
        L[0].output
        raise EarlyStopException("enough")

    def waiter(L: list[Envoy]) -> None:
        L[2].output

    interleaver = Interleaver(scheduler=scheduler)
    envoys = layers(interleaver)
    interleaver.initialize([Mediator(stopper, args=(envoys,)), Mediator(waiter, args=(envoys,))])
    with interleaver:
        try:
            model(interleaver)
        except EarlyStopException:
            pass
    # no MissedProviderError for the waiter: the run was stopped


# ----------------------------------------------------------------- cancel


@pytest.mark.timeout(10)
def test_cancel_mid_run(scheduler: Scheduler) -> None:
    unwound: list[str] = []

    def intervention(L: list[Envoy]) -> None:
        try:
            L[1].output
        except Cancelation as error:
            unwound.append(str(error))
            raise

    interleaver = Interleaver(scheduler=scheduler)
    mediator = Mediator(intervention, args=(layers(interleaver),), name="inv0")
    hook = Handle()
    interleaver.initialize([mediator])
    with interleaver:
        mediator.hooks.append(hook)
        interleaver.handle("model.layer0.output", 1, iterate=True)
        interleaver.cancel()
        assert not mediator.alive
        assert model(interleaver) == 3  # nothing waits any more
    assert unwound == ["intervention 'inv0' was canceled"]
    assert hook.removed == 1


@pytest.mark.timeout(10)
def test_canceled_intervention_that_swallows_cancelation(scheduler: Scheduler) -> None:
    attempts: list[str] = []

    def stubborn(L: list[Envoy]) -> None:
        for _ in range(3):
            try:
                L[2].output
            except Cancelation:
                attempts.append("swallowed")

    interleaver = Interleaver(scheduler=scheduler)
    interleaver.initialize([Mediator(stubborn, args=(layers(interleaver),))])
    with interleaver:
        interleaver.cancel()
    assert attempts == ["swallowed"] * 3


# -------------------------------------------------------------- lifecycle


def test_runs_cannot_nest_and_interleaver_is_reusable(scheduler: Scheduler) -> None:
    seen: list[Any] = []

    def intervention(L: list[Envoy]) -> None:
        seen.append(L[0].output)

    interleaver = Interleaver(scheduler=scheduler)
    envoys = layers(interleaver)
    interleaver.initialize([Mediator(intervention, args=(envoys,))])
    with interleaver:
        with pytest.raises(RuntimeError, match="already running"):
            interleaver.__enter__()
        with pytest.raises(RuntimeError, match="re-initialize"):
            interleaver.initialize([])
        model(interleaver)
    with interleaver:
        model(interleaver, x=10)
    assert seen == [1, 11]


def test_mediator_without_requests_and_empty_run(scheduler: Scheduler) -> None:
    ran: list[str] = []
    interleaver = Interleaver([Mediator(lambda: ran.append("x"))], scheduler=scheduler)
    assert interleaver.run(model, interleaver) == 3
    assert ran == ["x"]
    assert Interleaver([], scheduler=scheduler).run(model, Interleaver()) == 3


def test_ensure_hook_installs_once_and_removes_at_end(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    installed: list[Handle] = []

    def install() -> Handle:
        return Handle(installed)

    interleaver.initialize([Mediator(lambda: None)])
    with interleaver:
        assert interleaver.ensure_hook(("layer0", "output"), install) is True
        assert interleaver.ensure_hook(("layer0", "output"), install) is False
        assert interleaver.ensure_hook(("layer1", "output"), install) is True
        assert len(installed) == 2
    assert installed == []
    assert interleaver.hooks == []
    with interleaver:  # a new run installs again
        assert interleaver.ensure_hook(("layer0", "output"), install) is True
    assert installed == []


def test_hooks_removed_after_normal_run(scheduler: Scheduler) -> None:
    handles: list[Handle] = []

    def intervention(L: list[Envoy]) -> None:
        mediator = L[0].interleaver.current
        assert mediator is not None
        mediator.hooks.append(Handle(handles))
        L[1].output
        mediator.hooks.append(Handle(handles))

    run(scheduler, intervention)
    assert handles == []


def test_hooks_see_the_error_that_ends_the_run_early_while_they_are_removed(
    scheduler: Scheduler,
) -> None:
    """``failure`` is the exception ending the run while run-level hooks are removed:
    None after a finished run, after an early stop and once the teardown is over."""
    seen: list[Any] = []

    class Reporter:
        def __init__(self, interleaver: Interleaver) -> None:
            self.interleaver = interleaver

        def remove(self) -> None:
            seen.append(self.interleaver.failure)

    def reading(L: list[Envoy]) -> None:
        L[0].interleaver.hooks.append(Reporter(L[0].interleaver))
        L[1].output

    _, interleaver = run(scheduler, reading)
    assert seen == [None] and interleaver.failure is None

    def failing(L: list[Envoy]) -> None:
        L[0].interleaver.hooks.append(Reporter(L[0].interleaver))
        L[1].output
        raise KeyError("bad read")

    seen.clear()
    with pytest.raises(KeyError, match="bad read") as raised:
        run(scheduler, failing)
    assert seen == [raised.value]

    def stopping(L: list[Envoy]) -> None:
        L[0].interleaver.hooks.append(Reporter(L[0].interleaver))
        L[1].output
        raise EarlyStopException()

    seen.clear()
    assert run(scheduler, stopping)[0] is None
    assert seen == [None]

    interleaver = Interleaver(scheduler=scheduler)
    interleaver.hooks.append(Reporter(interleaver))
    interleaver.initialize([Mediator(lambda: (_ for _ in ()).throw(ValueError("at start")))])
    seen.clear()
    with pytest.raises(ValueError, match="at start"), interleaver:
        pass
    assert len(seen) == 1 and isinstance(seen[0], ValueError)
    assert interleaver.failure is None


def test_contextvars_of_the_caller_are_visible(scheduler: Scheduler) -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []

    def intervention(L: list[Envoy]) -> None:
        seen.append(var.get())
        L[0].output
        seen.append(var.get())

    token = var.set("from caller")
    try:
        run(scheduler, intervention)
    finally:
        var.reset(token)
    assert seen == ["from caller", "from caller"]


def test_nested_handle_from_inside_an_intervention(scheduler: Scheduler) -> None:
    """A hook firing while an intervention runs (an ad-hoc call) nests cleanly."""
    seen: list[Any] = []
    interleaver = Interleaver(scheduler=scheduler)

    def caller() -> None:
        mediator = interleaver.current
        assert mediator is not None
        seen.append(mediator.request("outer"))
        seen.append(interleaver.handle("inner", "from a"))
        seen.append(mediator.request("after"))

    def listener() -> None:
        mediator = interleaver.current
        assert mediator is not None
        seen.append(mediator.request("inner"))
        mediator.swap("inner", "swapped by b")

    interleaver.initialize([Mediator(caller), Mediator(listener)])
    with interleaver:
        assert interleaver.handle("outer", "o") == "o"
        assert interleaver.handle("after", "a") == "a"
    assert seen == ["o", "from a", "swapped by b", "a"]


@pytest.mark.timeout(10)
def test_thread_scheduler_serves_from_another_thread() -> None:
    from endoscope_interleaver import ThreadScheduler

    seen: list[Any] = []

    def intervention(L: list[Envoy]) -> None:
        seen.append(L[2].output)

    interleaver = Interleaver(scheduler=ThreadScheduler())
    interleaver.initialize([Mediator(intervention, args=(layers(interleaver),))])
    with interleaver:
        other = threading.Thread(target=model, args=(interleaver,))
        other.start()
        other.join()
    assert seen == [3]
    assert worker_threads() == []


@pytest.mark.timeout(10)
def test_no_reference_cycle_survives_a_run(scheduler: Scheduler) -> None:
    import gc
    import weakref

    got: list[Any] = []
    interleaver = Interleaver(scheduler=scheduler)
    mediator = Mediator(lambda: got.append(mediator.request("p")))
    interleaver.initialize([mediator])
    with interleaver:
        interleaver.handle("p", 1)
    assert mediator.interleaver is None
    ref = weakref.ref(interleaver)
    gc.disable()
    try:
        del interleaver
        assert ref() is None  # freed by reference counting alone
    finally:
        gc.enable()
    assert got == [1]


def test_miss_raises_what_the_intervention_does_not_catch(scheduler: Scheduler) -> None:
    def intervention() -> None:
        mediator = interleaver.current
        assert mediator is not None
        mediator.request("never.i0")

    interleaver = Interleaver([Mediator(intervention)], scheduler=scheduler)
    with pytest.raises(MissedProviderError, match="never.i0") as caught:
        with interleaver:
            assert interleaver.handle("first", 1, iterate=True) == 1
            interleaver.miss(interleaver.mediators[0])
    assert 'in intervention\n    mediator.request("never.i0")' in str(caught.value)
    assert interleaver.mediators[0].alive is False


def test_miss_lets_the_intervention_go_on_to_a_value_still_coming(scheduler: Scheduler) -> None:
    seen: list[Any] = []

    def intervention() -> None:
        mediator = interleaver.current
        assert mediator is not None
        try:
            mediator.request("never.i0")
        except MissedProviderError:
            seen.append("missed")
        seen.append(mediator.request("later.i0"))

    interleaver = Interleaver([Mediator(intervention)], scheduler=scheduler)
    with interleaver:
        interleaver.miss(interleaver.mediators[0])
        assert interleaver.handle("later", 7, iterate=True) == 7
    assert seen == ["missed", 7]
    idle = Interleaver([Mediator(lambda: None)], scheduler=scheduler)
    with idle:
        idle.miss(idle.mediators[0])  # finished, not waiting: nothing to do
