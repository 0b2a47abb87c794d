"""Scheduler protocol: both built-in schedulers, and a third one written here."""

from __future__ import annotations

import queue
import threading
import traceback
from collections.abc import Callable
from typing import Any

import pytest
from interleaver_testkit import Envoy, layers, model, run

from endoscope_interleaver import (
    Cancelation,
    GreenletScheduler,
    Interleaver,
    Mediator,
    MissedProviderError,
    OutOfOrderError,
    Scheduler,
    ThreadScheduler,
    Worker,
    default_scheduler,
    greenlet_available,
)

# ------------------------------------------------------ the protocol itself


def test_builtins_satisfy_the_protocols(scheduler: Scheduler) -> None:
    assert isinstance(scheduler, Scheduler)
    worker = scheduler.start(lambda: None, "endoscope-test")
    assert isinstance(worker, Worker)
    assert worker.finished is False
    assert worker.resume(None) is None
    assert worker.finished is True


def test_ping_pong(scheduler: Scheduler) -> None:
    trace: list[Any] = []
    holder: list[Worker] = []

    def body() -> str:
        trace.append("started")
        got = holder[0].suspend("first")
        trace.append(got)
        got = holder[0].suspend("second")
        trace.append(got)
        return "returned"

    worker = scheduler.start(body, "endoscope-test")
    holder.append(worker)
    assert worker.resume("ignored") == "first"
    assert worker.resume("a") == "second"
    assert worker.resume("b") == "returned"
    assert trace == ["started", "a", "b"]
    assert worker.finished
    with pytest.raises(RuntimeError, match="has finished"):
        worker.resume(None)


def test_body_exception_raised_from_resume(scheduler: Scheduler) -> None:
    def body() -> None:
        raise LookupError("from the body")

    worker = scheduler.start(body, "endoscope-test")
    with pytest.raises(LookupError, match="from the body"):
        worker.resume(None)
    assert worker.finished


def test_thread_worker_names_its_thread() -> None:
    names: list[str] = []
    worker = ThreadScheduler().start(
        lambda: names.append(threading.current_thread().name), "endoscope-named"
    )
    assert repr(worker) == "<ThreadWorker endoscope-named running>"
    worker.resume(None)
    assert names == ["endoscope-named"]
    assert repr(worker) == "<ThreadWorker - finished>"
    assert repr(ThreadScheduler()) == "ThreadScheduler()"


def test_default_scheduler_is_greenlet_when_available() -> None:
    assert greenlet_available()  # the test environment installs the extra
    assert isinstance(default_scheduler(), GreenletScheduler)
    assert isinstance(Interleaver().scheduler, GreenletScheduler)


# --------------------------------------------------- a third scheduler

# The seed's original design, written independently of the package: one thread
# per worker and two single-slot queues. If the protocol is enough, every
# behaviour below holds with it too.


class QueueWorker:
    def __init__(self, body: Callable[[], Any], name: str) -> None:
        self.body = body
        self.to_worker: queue.Queue[Any] = queue.Queue(maxsize=1)
        self.to_model: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)
        self.thread = threading.Thread(target=self.main, name=name, daemon=True)
        self.finished = False

    def main(self) -> None:
        self.to_worker.get()
        try:
            result: tuple[bool, Any] = (True, self.body())
        except BaseException as error:
            result = (False, error)
        self.finished = True
        self.to_model.put(result)

    def resume(self, value: Any) -> Any:
        if not self.thread.is_alive() and not self.finished:
            self.thread.start()
        self.to_worker.put(value)
        ok, reply = self.to_model.get()
        if self.finished:
            self.thread.join()
            if not ok:
                raise reply
        return reply

    def suspend(self, value: Any) -> Any:
        self.to_model.put((True, value))
        return self.to_worker.get()


class QueueScheduler:
    def start(self, body: Callable[[], Any], name: str) -> Worker:
        return QueueWorker(body, name)


@pytest.fixture
def third() -> Scheduler:
    scheduler = QueueScheduler()
    assert isinstance(scheduler, Scheduler)
    return scheduler


@pytest.mark.timeout(10)
def test_third_scheduler_values_swaps_and_order(third: Scheduler) -> None:
    seen: list[Any] = []

    def first(L: list[Envoy]) -> None:
        seen.append(L[0].output)
        L[1].output = 100

    def second(L: list[Envoy]) -> None:
        seen.append(L[1].output)

    out, _ = run(third, first, second)
    assert seen == [1, 100]
    assert out == 101


@pytest.mark.timeout(10)
def test_third_scheduler_errors_and_cleanup(third: Scheduler) -> None:
    def out_of_order(L: list[Envoy]) -> None:
        L[2].output
        L[0].output

    with pytest.raises(OutOfOrderError):
        run(third, out_of_order)

    def missed(L: list[Envoy]) -> None:
        L[0].interleaver.current.request("nowhere")  # type: ignore[union-attr]

    with pytest.raises(MissedProviderError):
        run(third, missed)

    def raises(L: list[Envoy]) -> None:
        L[0].output
        raise ArithmeticError("in the third scheduler")

    with pytest.raises(ArithmeticError) as info:
        run(third, raises)
    assert traceback.extract_tb(info.value.__traceback__)[-1].name == "raises"


@pytest.mark.timeout(10)
def test_third_scheduler_stop_barrier_cancel(third: Scheduler) -> None:
    interleaver = Interleaver(scheduler=third)
    L = layers(interleaver)
    barrier = interleaver.barrier(2)
    log: list[str] = []

    def a() -> None:
        log.append(f"a {L[0].output}")
        barrier()

    def b() -> None:
        barrier()
        log.append(f"b {L[0].output}")
        interleaver.current.stop()  # type: ignore[union-attr]

    def c() -> None:
        try:
            L[2].output
        except Cancelation:
            log.append("c canceled")
            raise

    interleaver.initialize([Mediator(a), Mediator(b), Mediator(c)])
    assert interleaver.run(model, interleaver) is None
    assert log == ["a 1", "b 1", "c canceled"]


# ----------------------------------------------------------- greenlet specifics


@pytest.mark.timeout(10)
def test_greenlet_resumed_from_another_thread_is_a_clear_error() -> None:
    interleaver = Interleaver(scheduler=GreenletScheduler())
    L = layers(interleaver)
    errors: list[BaseException] = []

    def intervention() -> None:
        L[1].output

    def other_thread() -> None:
        try:
            model(interleaver)
        except BaseException as error:
            errors.append(error)

    interleaver.initialize([Mediator(intervention)])
    # The value never reached the intervention, so the run ends with it missed.
    with pytest.raises(MissedProviderError):
        with interleaver:
            thread = threading.Thread(target=other_thread)
            thread.start()
            thread.join()
    assert len(errors) == 1
    assert isinstance(errors[0], RuntimeError)
    assert "greenlets cannot cross threads" in str(errors[0])
    assert "Use ThreadScheduler" in str(errors[0])
