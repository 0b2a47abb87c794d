"""GreenletScheduler: optional dependency handling and greenlet-specific behaviour."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import endoscope_interleaver._greenlet as greenlet_module
from endoscope_interleaver import (
    GreenletScheduler,
    Interleaver,
    Mediator,
    ThreadScheduler,
    default_scheduler,
    greenlet_available,
)

sys.path.insert(0, str(Path(__file__).parent))

from interleaver_testkit import live_greenlets


def test_missing_greenlet_is_a_clear_error_on_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(greenlet_module, "_greenlet", None)
    assert greenlet_available() is False
    with pytest.raises(ImportError) as info:
        GreenletScheduler()
    assert str(info.value) == (
        "GreenletScheduler needs the optional 'greenlet' package. Install it with "
        "pip install 'endoscope-interleaver[greenlet]', or pass "
        "scheduler=ThreadScheduler() to the Interleaver."
    )
    assert isinstance(default_scheduler(), ThreadScheduler)


def test_package_works_without_greenlet_installed() -> None:
    script = textwrap.dedent(
        """
        import sys

        class NoGreenlet:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "greenlet":
                    raise ImportError("greenlet is blocked in this test")

        sys.meta_path.insert(0, NoGreenlet())
        from endoscope_interleaver import Interleaver, Mediator, ThreadScheduler

        seen = []
        interleaver = Interleaver()
        assert isinstance(interleaver.scheduler, ThreadScheduler), interleaver.scheduler
        interleaver.initialize([Mediator(lambda: seen.append(interleaver.current.request("x")))])
        with interleaver:
            interleaver.handle("x", 42)
        assert seen == [42]
        assert "greenlet" not in sys.modules
        print("ok")
        """
    )
    src = str(Path(greenlet_module.__file__).resolve().parent.parent)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": src},
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


def test_repr() -> None:
    scheduler = GreenletScheduler()
    assert repr(scheduler) == "GreenletScheduler()"
    worker = scheduler.start(lambda: None, "endoscope-x")
    assert repr(worker) == "<GreenletWorker running>"
    worker.resume(None)
    assert repr(worker) == "<GreenletWorker finished>"


@pytest.mark.timeout(10)
def test_nested_runs_inside_a_greenlet_worker() -> None:
    """A run started from inside another run's intervention (e.g. a session)."""
    outer = Interleaver(scheduler=GreenletScheduler())
    seen: list[object] = []

    def inner_intervention() -> None:
        seen.append(inner.current.request("inner"))  # type: ignore[union-attr]

    inner = Interleaver([Mediator(inner_intervention)], scheduler=GreenletScheduler())

    def outer_intervention() -> None:
        seen.append(outer.current.request("outer"))  # type: ignore[union-attr]
        with inner:
            seen.append(inner.handle("inner", "from inner run"))
        seen.append(outer.current.request("outer2"))  # type: ignore[union-attr]

    outer.initialize([Mediator(outer_intervention)])
    with outer:
        outer.handle("outer", 1)
        outer.handle("outer2", 2)
    assert seen == [1, "from inner run", "from inner run", 2]


# ------------------------------------------------------------ the idle pool


def run_one(scheduler: GreenletScheduler, body) -> object:
    worker = scheduler.start(body, "endoscope-pool")
    return worker.resume(None)


def test_a_finished_workers_greenlet_runs_the_next_body() -> None:
    scheduler = GreenletScheduler()
    seen: list[object] = []

    def body() -> str:
        seen.append(greenlet_module._greenlet.getcurrent())
        return "done"

    assert run_one(scheduler, body) == "done"
    idle = greenlet_module.idle_greenlets()
    assert idle >= 1
    assert run_one(scheduler, body) == "done"
    # The second body ran in the first one's greenlet, which parked again.
    assert seen[0] is seen[1]
    assert greenlet_module.idle_greenlets() == idle


def test_the_pool_is_bounded() -> None:
    scheduler = GreenletScheduler()
    running = []
    for _ in range(20):
        # Suspended all at once, these 20 workers need 20 greenlets.
        worker = scheduler.start(lambda: running[-1].suspend("paused"), "endoscope-pool")
        running.append(worker)
        assert worker.resume(None) == "paused"
    for worker in running:
        worker.resume(None)
    assert all(worker.finished for worker in running)
    assert greenlet_module.idle_greenlets() == greenlet_module.POOL_LIMIT


def test_a_body_that_raises_reraises_in_resume_and_its_greenlet_is_reused() -> None:
    scheduler = GreenletScheduler()

    def body() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        run_one(scheduler, body)
    assert run_one(scheduler, lambda: 7) == 7


def test_a_parked_greenlet_holds_nothing_of_its_last_body() -> None:
    import gc
    import weakref

    class Payload:
        pass

    scheduler = GreenletScheduler()
    payload = Payload()
    ref = weakref.ref(payload)

    def body(payload: Payload = payload) -> Payload:
        return payload

    assert run_one(scheduler, body) is payload
    del payload, body
    gc.disable()
    try:
        assert ref() is None
    finally:
        gc.enable()


def test_pooled_greenlets_of_an_ended_thread_end_with_it() -> None:
    import threading

    def in_thread() -> None:
        scheduler = GreenletScheduler()
        for _ in range(3):
            assert run_one(scheduler, lambda: 1) == 1

    before = live_greenlets()
    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert live_greenlets() == before
