"""eproperty: requests on read, swaps on write, hooks on demand, pre/post/transform."""

from __future__ import annotations

from functools import wraps
from typing import Any

import pytest
from interleaver_testkit import Envoy, Handle, model

from endoscope_interleaver import IEnvoy, Interleaver, Mediator, Scheduler, eproperty


def test_descriptor_metadata() -> None:
    assert isinstance(Envoy.__dict__["output"], eproperty)
    assert Envoy.output is Envoy.__dict__["output"]
    assert Envoy.output.key == "output"
    assert Envoy.output.name == "output"
    assert Envoy.output.__doc__ == "The layer's output."
    assert Envoy.output.iterate is True
    assert Envoy.output.description is None
    assert repr(Envoy.output) == "<eproperty output key='output'>"


def test_envoy_satisfies_protocol() -> None:
    assert isinstance(Envoy(Interleaver(), "model"), IEnvoy)
    assert not isinstance(object(), IEnvoy)


def test_requester_strings() -> None:
    interleaver = Interleaver()

    class NoPath:
        def __init__(self) -> None:
            self.interleaver = interleaver

        @eproperty(iterate=False, description="result")
        def result(self) -> Any: ...

        @eproperty(key="output")
        def heads(self) -> Any: ...

    envoy = Envoy(interleaver, "model.layer0")
    assert Envoy.output.requester(envoy) == "model.layer0.output.i0"
    assert NoPath.result.requester(NoPath()) == "result"
    assert NoPath.heads.requester(NoPath()) == "output.i0"
    assert NoPath.result.description == "result"


def test_access_outside_an_intervention_is_an_error() -> None:
    envoy = Envoy(Interleaver(), "model.layer0")
    with pytest.raises(RuntimeError, match=r"model\.layer0\.output can only be used inside"):
        _ = envoy.output
    with pytest.raises(RuntimeError, match=r"model\.layer0\.input can only be used inside"):
        envoy.input = 1


def requires_hook(stub: Any) -> Any:
    """Like envoy's requires_output: install a hook before the request blocks."""

    @wraps(stub)
    def setup(self: HookedEnvoy) -> Any:
        mediator = self.interleaver.current
        assert mediator is not None
        self.installed.append(self.interleaver.iterate_requester(f"{self.path}.output"))
        mediator.hooks.append(Handle(self.live))
        return stub(self)

    return setup


class HookedEnvoy:
    def __init__(self, interleaver: Interleaver, path: str) -> None:
        self.interleaver = interleaver
        self.path = path
        self.installed: list[str] = []
        self.live: list[Handle] = []

    @eproperty()
    @requires_hook
    def output(self) -> Any:
        """Hooked output."""


@pytest.mark.timeout(10)
def test_stub_runs_before_each_request_and_hooks_are_removed(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    envoy = HookedEnvoy(interleaver, "model.layer1")
    during: list[int] = []

    def intervention() -> None:
        envoy.output = envoy.output + 10
        during.append(len(envoy.live))

    interleaver.initialize([Mediator(intervention)])
    with interleaver:
        assert model(interleaver) == 13
    assert envoy.installed == ["model.layer1.output.i0", "model.layer1.output.i0"]
    assert during == [2]
    assert envoy.live == []
    assert HookedEnvoy.output.__doc__ == "Hooked output."


class ListEnvoy:
    """Values are lists; ``.rows`` hands out a copy and writes edits back."""

    def __init__(self, interleaver: Interleaver, path: str) -> None:
        self.interleaver = interleaver
        self.path = path

    @eproperty(key="output")
    def rows(self) -> Any: ...

    @rows.preprocess
    def rows(self, value: list[int]) -> list[int]:
        return list(value)

    @rows.transform
    @staticmethod
    def rows(value: list[int]) -> list[int]:
        return [v * 1 for v in value]

    @eproperty(key="output")
    def doubled(self) -> Any: ...

    @doubled.preprocess
    def doubled(self, value: list[int]) -> list[int]:
        return [v * 2 for v in value]

    @doubled.postprocess
    def doubled(self, value: list[int]) -> list[int]:
        return [v // 2 for v in value]

    @eproperty(key="output")
    def raw(self) -> Any: ...

    @raw.transform
    def raw(value: list[int]) -> list[int]:
        return [*value, "appended"]


def run_lists(scheduler: Scheduler, intervention: Any, path: str = "p") -> tuple[Any, Any]:
    interleaver = Interleaver(scheduler=scheduler)
    envoy = ListEnvoy(interleaver, path)
    interleaver.initialize([Mediator(intervention, args=(envoy,))])
    with interleaver:
        first = interleaver.handle("p.output", [1, 2, 3], iterate=True)
        second = interleaver.handle("p.output", [4, 5], iterate=True)
    return first, second


@pytest.mark.timeout(10)
def test_transform_makes_edits_to_a_copy_reach_the_computation(scheduler: Scheduler) -> None:
    def intervention(envoy: ListEnvoy) -> None:
        rows = envoy.rows
        rows[0] = 100  # edits a copy; the transform swaps it back
        with envoy.interleaver.current.iterating(1):  # type: ignore[union-attr]
            rows = envoy.rows
        rows.append(6)  # the intervention ends here: the transform still applies

    first, second = run_lists(scheduler, intervention)
    assert first == [100, 2, 3]
    assert second == [4, 5, 6]


@pytest.mark.timeout(10)
def test_transform_without_preprocess(scheduler: Scheduler) -> None:
    seen: list[Any] = []

    def intervention(envoy: ListEnvoy) -> None:
        seen.append(envoy.raw)

    first, second = run_lists(scheduler, intervention)
    assert seen == [[1, 2, 3]]
    assert first == [1, 2, 3, "appended"]
    assert second == [4, 5]


@pytest.mark.timeout(10)
def test_preprocess_and_postprocess(scheduler: Scheduler) -> None:
    seen: list[Any] = []

    def intervention(envoy: ListEnvoy) -> None:
        seen.append(envoy.doubled)
        envoy.doubled = [10, 20, 30]

    first, _ = run_lists(scheduler, intervention)
    assert seen == [[2, 4, 6]]
    assert first == [5, 10, 15]


class Tracer:
    """A path-less IEnvoy with provided (not hooked) values, like a tracer's result."""

    def __init__(self, interleaver: Interleaver) -> None:
        self.interleaver = interleaver

    @eproperty()
    def logits(self) -> Any:
        """Per-step values pushed by the computation."""

    @eproperty(iterate=False)
    def result(self) -> Any:
        """The final value."""


@pytest.mark.timeout(10)
def test_provide_pushes_values_and_advances_reads(scheduler: Scheduler) -> None:
    interleaver = Interleaver(scheduler=scheduler)
    tracer = Tracer(interleaver)
    seen: list[Any] = []

    def intervention() -> None:
        seen.append(tracer.logits)  # step 0
        seen.append(tracer.logits)  # same step: it is still being served
        seen.append(interleaver.current.request("between"))  # type: ignore[union-attr]
        seen.append(tracer.logits)  # step 0 went by, so this is step 1
        tracer.logits = "edited"
        seen.append(tracer.result)
        tracer.result = "final"

    interleaver.initialize([Mediator(intervention)])
    with interleaver:
        assert Tracer.logits.provide(tracer, "step0") == "step0"
        assert interleaver.handle("between", "b") == "b"
        assert Tracer.logits.provide(tracer, "step1") == "edited"
        assert Tracer.logits.provide(tracer, "step2") == "step2"
        assert Tracer.result.provide(tracer, "out") == "final"
    assert seen == ["step0", "step0", "b", "step1", "out"]
