"""GreenletScheduler: workers as greenlets on the model's own thread.

``greenlet`` is an optional dependency (``endoscope-interleaver[greenlet]``). This
module imports without it; constructing a :class:`GreenletScheduler` then raises
an ImportError that says how to install it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ._scheduler import Worker


def _load_greenlet() -> Any:
    try:
        import greenlet
    except ImportError:  # the extra is not installed
        return None
    return greenlet


_greenlet: Any = _load_greenlet()

__all__ = ["POOL_LIMIT", "GreenletScheduler", "greenlet_available", "idle_greenlets"]


def greenlet_available() -> bool:
    """Whether the optional ``greenlet`` package can be used."""
    return _greenlet is not None


def _unresumed(value: Any) -> Any:
    raise RuntimeError("a greenlet worker can only suspend while it runs (after a resume)")


# Starting a new greenlet costs about 30 times a switch into a parked one, and
# every intervention of every run needs one: a finished worker's greenlet parks
# in its thread's pool and runs the next worker's body. Bounded, so a burst of
# concurrent workers leaves at most this many idle greenlets per thread.
POOL_LIMIT = 8
_pools = threading.local()


def _pool() -> list[Any]:
    pool: list[Any] | None = getattr(_pools, "idle", None)
    if pool is None:
        pool = _pools.idle = []
    return pool


def idle_greenlets() -> int:
    """How many finished workers' greenlets wait for reuse on this thread."""
    return len(_pool())


def _run_bodies(worker: _GreenletWorker) -> Any:
    """A pooled greenlet's life: run a worker's body, park, run the next one's."""
    pool = _pool()
    while True:
        body = worker._body
        worker._body = None
        try:
            assert body is not None
            worker._outcome = (True, body())
        except _greenlet.GreenletExit:
            worker.finished = True
            raise  # the greenlet is being killed (its thread ended): let it die
        except BaseException as error:
            worker._outcome = (False, error)
        worker.finished = True
        if len(pool) >= POOL_LIMIT:
            return None
        # Park with nothing of the last run on this frame; the next worker to
        # need a greenlet switches it back in with itself.
        body = worker = None  # type: ignore[assignment]
        glet = _greenlet.getcurrent()
        pool.append(glet)
        worker = glet.parent.switch(None)
        del glet


class _GreenletWorker:
    """A body in a greenlet whose parent is whoever resumed it last.

    The greenlet comes from the thread's pool of parked ones when there is one,
    else it is created; when the body ends it parks for the next worker (see
    :data:`POOL_LIMIT`).
    """

    __slots__ = ("_body", "_caller", "_glet", "_outcome", "finished", "suspend")

    def __init__(self, body: Callable[[], Any]) -> None:
        self._body: Callable[[], Any] | None = body
        self._glet: Any = None
        self._caller: Any = None
        self._outcome: tuple[bool, Any] | None = None
        self.finished = False
        # Worker.suspend: the resumer's own switch, bound when the resumer changes
        # (a read costs no Python frame for it).
        self.suspend: Callable[[Any], Any] = _unresumed

    def resume(self, value: Any) -> Any:
        # The same resumer as last time (the common case): its greenlet is this
        # greenlet's parent already, set when it became the resumer.
        if _greenlet.getcurrent() is not self._caller:
            return self._resume_from(_greenlet.getcurrent(), value)
        reply = self._glet.switch(value)
        if self.finished:
            return self._end()
        return reply

    def _resume_from(self, caller: Any, value: Any) -> Any:
        """:meth:`resume` by a new resumer (the first, or another greenlet)."""
        glet = self._glet
        if glet is None:
            glet, value = self._attach(caller), self
        elif glet.parent is not caller:
            self._reparent(glet, caller)
        self._caller = caller
        self.suspend = caller.switch
        reply = glet.switch(value)
        if self.finished:
            return self._end()
        return reply

    def _end(self) -> Any:
        outcome = self._outcome
        self._outcome = None
        self._glet = self._caller = None
        self.suspend = _unresumed
        if outcome is None:  # the greenlet was killed
            raise RuntimeError("the worker's greenlet ended without finishing its body")
        ok, result = outcome
        if ok:
            return result
        try:
            raise result
        finally:
            del result, outcome  # the traceback refers to this frame: no cycle

    def _attach(self, caller: Any) -> Any:
        """The greenlet to run the body in: a parked one of this thread, or a new one,
        parented to ``caller`` (whose switch the body's return comes back to)."""
        if self.finished:
            raise RuntimeError("cannot resume a worker whose body has finished")
        pool = _pool()
        glet = pool.pop() if pool else _greenlet.greenlet(_run_bodies)
        self._reparent(glet, caller)
        self._glet = glet
        return glet

    @staticmethod
    def _reparent(glet: Any, caller: Any) -> None:
        # A different resumer than last time (a nested run, another greenlet)
        # becomes the parent: the body's return must come back to it.
        try:
            glet.parent = caller
        except ValueError as error:
            raise RuntimeError(
                "GreenletScheduler: the computation resumed this worker from a different "
                "thread than the one it started on; greenlets cannot cross threads. "
                "Use ThreadScheduler for computations that call back from other threads."
            ) from error

    def __repr__(self) -> str:
        return f"<GreenletWorker {'finished' if self.finished else 'running'}>"


class GreenletScheduler:
    """Runs every worker as a greenlet on the thread that runs the computation.

    A switch is a stack swap inside one thread, with no kernel hand-off, so a
    request/response round trip is far cheaper than with threads. All switches
    must happen on one thread.

    Raises:
        ImportError: on construction, if ``greenlet`` is not installed.
    """

    def __init__(self) -> None:
        if _greenlet is None:
            raise ImportError(
                "GreenletScheduler needs the optional 'greenlet' package. Install it with "
                "pip install 'endoscope-interleaver[greenlet]', or pass "
                "scheduler=ThreadScheduler() to the Interleaver."
            )

    def start(self, body: Callable[[], Any], name: str) -> Worker:
        """Create a greenlet worker for ``body`` (created on first resume)."""
        return _GreenletWorker(body)

    def __repr__(self) -> str:
        return "GreenletScheduler()"
