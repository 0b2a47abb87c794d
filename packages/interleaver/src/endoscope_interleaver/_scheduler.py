"""How a mediator's intervention runs beside the computation: the Scheduler protocol.

A scheduler turns a plain function (the *body*) into a *worker* that runs as a
coroutine of the caller: the model side calls :meth:`Worker.resume` and blocks
until the body calls :meth:`Worker.suspend` (or returns); the body blocks in
``suspend`` until the model side resumes it again. Exactly one side runs at a
time, so nothing here needs locking beyond the hand-off itself.

:class:`ThreadScheduler` runs each body on its own thread with single-slot
hand-offs; ``GreenletScheduler`` (in ``_greenlet.py``) does the same with
greenlets. Any object with the same two small shapes can replace them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

__all__ = ["Scheduler", "ThreadScheduler", "Worker", "default_scheduler"]


@runtime_checkable
class Worker(Protocol):
    """One running body, switched to and from like a coroutine.

    Attributes:
        finished: ``True`` once the body has returned or raised.
    """

    finished: bool

    def resume(self, value: Any) -> Any:
        """Model side: switch to the worker and block until it switches back.

        The first call starts the body (``value`` is then ignored); later calls
        make the pending :meth:`suspend` return ``value``.

        Returns:
            The value the body passed to :meth:`suspend`, or the body's return
            value when it finished. If the body raised, the exception is re-raised.
        """
        ...

    def suspend(self, value: Any) -> Any:
        """Worker side: switch back to the model side and block until resumed.

        Returns:
            The value given to the next :meth:`resume`.
        """
        ...


@runtime_checkable
class Scheduler(Protocol):
    """Creates workers. Implementations must leave nothing running once a worker's
    body has finished and :meth:`Worker.resume` has returned; a bounded number of
    idle threads or greenlets may be kept for the next workers (GreenletScheduler
    keeps up to ``POOL_LIMIT`` per thread), holding nothing of the finished body."""

    def start(self, body: Callable[[], Any], name: str) -> Worker:
        """Create a worker that runs ``body()`` on its first :meth:`Worker.resume`.

        Args:
            body: the function to run; it switches back with :meth:`Worker.suspend`.
            name: a label for debugging (thread names, reprs).
        """
        ...


class _ThreadWorker:
    """A body on its own thread; two locks hand control back and forth."""

    __slots__ = ("_body", "_error", "_slot", "_thread", "_to_model", "_to_worker", "finished")

    def __init__(self, body: Callable[[], Any], name: str) -> None:
        self._body: Callable[[], Any] | None = body
        # Plain locks used as binary semaphores: the cheapest blocking hand-off
        # CPython offers (a Condition or Queue adds a lock and a deque per switch).
        self._to_worker = threading.Lock()
        self._to_worker.acquire()
        self._to_model = threading.Lock()
        self._to_model.acquire()
        self._slot: Any = None
        self._error: BaseException | None = None
        # Daemon: a body stuck in user code must never keep the interpreter alive.
        self._thread: threading.Thread | None = threading.Thread(
            target=self._main, name=name, daemon=True
        )
        self.finished = False

    def resume(self, value: Any) -> Any:
        if self.finished:
            raise RuntimeError("cannot resume a worker whose body has finished")
        self._slot = value
        thread = self._thread
        if thread is not None and thread.ident is None:  # the first resume
            thread.start()
        else:
            self._to_worker.release()
        self._to_model.acquire()
        reply, self._slot = self._slot, None
        if self.finished:
            if thread is not None:
                thread.join()
            self._thread = None
            error, self._error = self._error, None
            if error is not None:
                raise error
        return reply

    def suspend(self, value: Any) -> Any:
        self._slot = value
        self._to_model.release()
        self._to_worker.acquire()
        reply, self._slot = self._slot, None
        return reply

    def _main(self) -> None:
        body = self._body
        self._body = None
        try:
            assert body is not None
            self._slot = body()
        except BaseException as error:
            self._error = error
        finally:
            self.finished = True
            self._to_model.release()

    def __repr__(self) -> str:
        state = "finished" if self.finished else "running"
        name = self._thread.name if self._thread is not None else "-"
        return f"<ThreadWorker {name} {state}>"


class ThreadScheduler:
    """Runs every worker on its own daemon thread (the seed's design).

    Works from any thread: the model side may call ``resume`` from whichever
    thread the computation runs on (e.g. an autograd thread).
    """

    def start(self, body: Callable[[], Any], name: str) -> Worker:
        """Create a thread worker for ``body`` (the thread starts on first resume)."""
        return _ThreadWorker(body, name)

    def __repr__(self) -> str:
        return "ThreadScheduler()"


def default_scheduler() -> Scheduler:
    """The scheduler an :class:`Interleaver` uses when none is given.

    Greenlets when the optional ``greenlet`` package is installed (a round trip
    costs a few percent of a thread hand-off; see the README's benchmark), threads
    otherwise.
    """
    from ._greenlet import GreenletScheduler, greenlet_available

    if greenlet_available():
        return GreenletScheduler()
    return ThreadScheduler()
