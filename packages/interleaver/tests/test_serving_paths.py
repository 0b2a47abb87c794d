"""handle() has two ways to serve a value: a fast one for the run's only live
mediator reading whole values, and the general loop of _serve. Every scenario
here runs three ways and must give the same results:

- ``solo``: one mediator, whole values (the fast way, checked to be taken);
- ``batched``: the same mediator with a batch group and an identity batcher
  (the general way, one mediator);
- ``partner``: the same mediator plus a second one, served after it, that reads
  the last value of the run (the general way until the partner ends).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from endoscope_interleaver import (
    Interleaver,
    Mediator,
    MissedProviderError,
    OutOfOrderError,
    Scheduler,
    SkipException,
)

WAYS = ["solo", "batched", "partner"]


class IdentityBatcher:
    """Batch group ``(0, 1)`` means the whole value: narrow and swap change nothing."""

    def narrow(self, value: Any, batch_group: Any) -> Any:
        return value

    def swap(self, value: Any, replacement: Any, batch_group: Any) -> Any:
        return replacement


def counted_output(interleaver: Interleaver, path: str, value: Any) -> Any:
    """What a hook that counts its own calls does: ``handle(path, value, iterate=True)``
    in the documented protocol of :meth:`Interleaver.handle_counted`."""
    count = interleaver.calls.get(path, 0)
    interleaver.calls[path] = count + 1
    if path not in interleaver.wanted:
        return value
    return interleaver.handle_counted(f"{path}.i{count}", value)


def forward(
    interleaver: Interleaver,
    log: list[Any],
    layers: int = 3,
    steps: int = 1,
    counted: bool = False,
) -> Any:
    """Layers add 1; a layer skipped by an intervention gives the skip value.
    ``counted``: outputs are served by hooks that count their calls themselves."""
    x = 0
    for _ in range(steps):
        for i in range(layers):
            try:
                x = interleaver.handle(f"layer{i}.input", x, iterate=True)
                x = x + 1
            except SkipException as skip:
                x = skip.value
            if counted:
                x = counted_output(interleaver, f"layer{i}.output", x)
            else:
                x = interleaver.handle(f"layer{i}.output", x, iterate=True)
            log.append(("out", i, x))
    # A provider with no iteration suffix, and one numbered by the caller.
    x = interleaver.handle("result", x)
    x = interleaver.handle("final.i0", x)
    return interleaver.handle("tail", x, iterate=True)


def outcome(
    scheduler: Scheduler,
    way: str,
    intervention: Callable[[Mediator, list[Any]], None],
    steps: int = 1,
    monkeypatch: pytest.MonkeyPatch | None = None,
    counted: bool = False,
) -> tuple[Any, list[Any]]:
    """Run ``intervention`` one of the three ways; what it saw and how the run ended."""
    seen: list[Any] = []
    interleaver = Interleaver(scheduler=scheduler)

    def body() -> None:
        mediator = interleaver.current
        assert mediator is not None
        intervention(mediator, seen)

    def partner() -> None:
        mediator = interleaver.current
        assert mediator is not None
        mediator.request("tail.i0")

    main = Mediator(body, name="main")
    mediators = [main]
    batcher = None
    if way == "batched":
        main.batch_group = (0, 1)
        batcher = IdentityBatcher()
    elif way == "partner":
        mediators.append(Mediator(partner, name="partner"))
    interleaver.initialize(mediators, batcher=batcher)

    general: list[str] = []
    serve = interleaver._serve

    def counting_serve(provider: str, value: Any, only: Any) -> Any:
        if main._read == provider:  # waiting to read it
            general.append(provider)
        return serve(provider, value, only)

    interleaver._serve = counting_serve  # type: ignore[method-assign]
    log: list[Any] = []
    result: Any = ("stopped", None)  # the with block absorbs a stop
    try:
        with interleaver:
            result = ("returned", forward(interleaver, log, steps=steps, counted=counted))
    except Exception as error:
        result = (type(error).__name__, str(error).splitlines()[0])
    if way == "solo":
        # The fast way served every value the main mediator waited for (swaps
        # and skips take the general way).
        assert general == [], general
    return result, seen


SCENARIOS: dict[str, tuple[Callable[[Mediator, list[Any]], None], int]] = {}


def scenario(steps: int = 1) -> Callable[[Callable[[Mediator, list[Any]], None]], Any]:
    def register(fn: Callable[[Mediator, list[Any]], None]) -> Any:
        SCENARIOS[fn.__name__] = (fn, steps)
        return fn

    return register


@scenario()
def reads_in_order(m: Mediator, seen: list[Any]) -> None:
    seen.append(m.request("layer0.input.i0"))
    seen.append(m.request("layer0.output.i0"))
    seen.append(m.request("layer2.output.i0"))


@scenario()
def same_value_twice(m: Mediator, seen: list[Any]) -> None:
    seen.append(m.request("layer1.output.i0"))
    seen.append(m.request("layer1.output.i0"))
    seen.append(m.request("layer2.input.i0"))


@scenario()
def read_then_swap(m: Mediator, seen: list[Any]) -> None:
    seen.append(m.request("layer0.output.i0"))
    m.swap("layer1.output.i0", m.request("layer1.output.i0") * 100)
    seen.append(m.request("layer2.output.i0"))


@scenario()
def swap_ahead_then_read(m: Mediator, seen: list[Any]) -> None:
    m.swap("layer1.output.i0", 50)
    seen.append(m.request("layer1.output.i0"))
    seen.append(m.request("layer2.output.i0"))


@scenario()
def skip_a_layer(m: Mediator, seen: list[Any]) -> None:
    seen.append(m.request("layer0.output.i0"))
    m.skip("layer1.input.i0", 40)
    seen.append(m.request("layer1.output.i0"))


@scenario(steps=3)
def iterations(m: Mediator, seen: list[Any]) -> None:
    seen.append(m.request("layer1.output.i0"))
    seen.append(m.request("layer1.output.i2"))
    seen.append(m.request("layer2.output.i2"))


@scenario()
def unsuffixed_and_caller_numbered(m: Mediator, seen: list[Any]) -> None:
    seen.append(m.request("layer2.output.i0"))
    seen.append(m.request("result"))
    m.swap("final.i0", m.request("final.i0") + 1000)


@scenario()
def out_of_order(m: Mediator, seen: list[Any]) -> None:
    seen.append(m.request("layer1.output.i0"))
    try:
        m.request("layer0.output.i0")
    except OutOfOrderError as error:
        seen.append(("out of order", error.requester, error.provider))
    seen.append(m.request("layer2.output.i0"))


@scenario()
def caller_numbered_then_out_of_order(m: Mediator, seen: list[Any]) -> None:
    seen.append(m.request("tail.i0"))
    try:
        m.request("final.i0")
    except OutOfOrderError as error:
        seen.append(("out of order", error.requester, error.provider))


@scenario()
def missed(m: Mediator, seen: list[Any]) -> None:
    seen.append(m.request("layer0.output.i0"))
    m.request("layer7.output.i0")


@scenario()
def missed_then_caught(m: Mediator, seen: list[Any]) -> None:
    seen.append(m.request("layer2.output.i0"))
    try:
        m.request("layer2.output.i5")
    except MissedProviderError as error:
        seen.append(("missed", error.requester))


@scenario()
def stop(m: Mediator, seen: list[Any]) -> None:
    seen.append(m.request("layer1.output.i0"))
    m.stop()


@scenario()
def raises(m: Mediator, seen: list[Any]) -> None:
    seen.append(m.request("layer1.output.i0"))
    raise ValueError("from the intervention")


@scenario()
def nested_handle(m: Mediator, seen: list[Any]) -> None:
    interleaver = m.interleaver
    assert interleaver is not None
    seen.append(m.request("layer0.output.i0"))
    # Intervention code that runs part of the computation (a hook fires inside).
    seen.append(interleaver.handle("side.output", 7, iterate=True))
    seen.append(interleaver.provider)
    seen.append(m.request("layer1.output.i0"))


@scenario()
def provider_seen_while_served(m: Mediator, seen: list[Any]) -> None:
    interleaver = m.interleaver
    assert interleaver is not None
    seen.append((m.request("layer1.input.i0"), interleaver.provider))
    seen.append((m.request("layer2.output.i0"), interleaver.provider, m.waiting))


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_fast_and_general_serving_agree(scheduler: Scheduler, name: str) -> None:
    intervention, steps = SCENARIOS[name]
    results = {way: outcome(scheduler, way, intervention, steps) for way in WAYS}
    assert results["solo"] == results["batched"] == results["partner"], results


@pytest.mark.parametrize("name", sorted(SCENARIOS))
@pytest.mark.parametrize("way", WAYS)
def test_hooks_counting_their_own_calls_serve_like_handle(
    scheduler: Scheduler, name: str, way: str
) -> None:
    intervention, steps = SCENARIOS[name]
    counted = outcome(scheduler, way, intervention, steps, counted=True)
    assert counted == outcome(scheduler, way, intervention, steps)


def test_expected_outcomes(scheduler: Scheduler) -> None:
    """A few of the scenarios' results, spelled out (the comparison alone would
    accept three identical wrong answers)."""
    run = lambda name: outcome(scheduler, "solo", *SCENARIOS[name])  # noqa: E731
    assert run("reads_in_order") == (("returned", 3), [0, 1, 3])
    assert run("read_then_swap") == (("returned", 201), [1, 201])
    assert run("swap_ahead_then_read") == (("returned", 51), [50, 51])
    assert run("skip_a_layer") == (("returned", 41), [1, 40])
    assert run("iterations") == (("returned", 9), [2, 8, 9])
    assert run("unsuffixed_and_caller_numbered") == (("returned", 1003), [3, 3])
    assert run("caller_numbered_then_out_of_order") == (
        ("returned", 3),
        [3, ("out of order", "final.i0", "tail.i0")],
    )
    assert run("same_value_twice") == (("returned", 3), [2, 2, 2])
    assert run("out_of_order") == (
        ("returned", 3),
        [2, ("out of order", "layer0.output.i0", "layer1.output.i0"), 3],
    )
    result, seen = run("missed")
    assert result[0] == "MissedProviderError" and "layer7.output.i0" in result[1]
    assert run("missed_then_caught") == (("returned", 3), [3, ("missed", "layer2.output.i5")])
    assert run("stop") == (("stopped", None), [2])
    assert run("raises") == (("ValueError", "from the intervention"), [2])
    assert run("nested_handle") == (("returned", 3), [1, 7, "layer0.output.i0", 2])
    assert run("provider_seen_while_served") == (
        ("returned", 3),
        [(1, "layer1.input.i0"), (3, "layer2.output.i0", None)],
    )


def test_fast_path_keeps_the_users_line_in_errors(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)

    def intervention() -> None:
        mediator = interleaver.current
        assert mediator is not None
        mediator.request("layer1.output.i0")
        mediator.request("layer0.output.i0")  # the asking line

    line = intervention.__code__.co_firstlineno + 4
    interleaver.initialize([Mediator(intervention)])
    with pytest.raises(OutOfOrderError) as info:
        with interleaver:
            forward(interleaver, [])
    assert f"line {line}" in str(info.value)
    assert "it is now at layer1.output.i0" in str(info.value)


@pytest.mark.parametrize("ending", ["returns", "raises", "stops"])
def test_fast_path_leaves_no_reference_cycle(scheduler: Scheduler, ending: str) -> None:
    import gc
    import weakref

    class Boom(Exception):
        pass

    interleaver = Interleaver(scheduler=scheduler)

    def intervention() -> None:
        mediator.request("layer0.output.i0")
        mediator.request("layer1.output.i0")
        if ending == "raises":
            raise Boom()
        if ending == "stops":
            mediator.stop()

    mediator = Mediator(intervention)
    interleaver.initialize([mediator])
    gc.collect()
    gc.disable()
    try:
        boom: Any = lambda: None  # noqa: E731
        try:
            with interleaver:
                forward(interleaver, [])
        except Boom as error:
            boom = weakref.ref(error)
        assert boom() is None  # freed by reference counting alone
        ref = weakref.ref(interleaver)
        del interleaver
        assert ref() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("way", WAYS)
def test_swapping_the_value_being_read_takes_no_round_trip(
    scheduler: Scheduler, way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``x.output = f(x.output)`` replaces the value in place while it is served:
    the swap sends no event to the model side (every replacement used to cost a
    round trip there and back). A swap of a later value still sends one."""
    sent: list[Any] = []
    send = Mediator.send

    def counting_send(self: Mediator, event: Any, payload: Any = None) -> Any:
        sent.append(payload[0] if isinstance(payload, tuple) else payload)
        return send(self, event, payload)

    monkeypatch.setattr(Mediator, "send", counting_send)

    def swaps(m: Mediator, seen: list[Any]) -> None:
        m.swap("layer0.output.i0", m.request("layer0.output.i0") * 10)
        m.swap("layer2.output.i0", 70)  # not served yet: waits for it

    result, _ = outcome(scheduler, way, swaps)
    assert result == ("returned", 70)
    assert "layer0.output.i0" not in sent
    assert "layer2.output.i0" in sent
