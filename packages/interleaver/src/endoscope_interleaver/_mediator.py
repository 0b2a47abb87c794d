"""Mediator: one intervention function, run by a worker beside the computation.

A mediator has two faces. Its *worker side* (``request``, ``swap``, ``skip``,
``barrier``, ``stop``, ``send``) is called from the intervention code and blocks
the worker until the model side answers. Its *model side* (``start``, ``respond``,
``handle``, ``cancel``) is driven by the :class:`Interleaver` from the
computation's hooks. Between the two travels one event at a time (see
:class:`Events`).
"""

from __future__ import annotations

import contextvars
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ._errors import (
    Cancelation,
    EarlyStopException,
    MissedProviderError,
    note_intervention_traceback,
    user_frame,
)
from ._events import Events, Signal

if TYPE_CHECKING:
    from ._interleaver import Barrier, Gate, Interleaver
    from ._scheduler import Worker

__all__ = ["HookHandle", "Mediator"]


class _Tracker(Counter):
    """A Counter built by dict's own constructor (Counter's costs a Python call)."""

    __init__ = dict.__init__


_VALUE = Events.VALUE
_SWAP = Events.SWAP
_SKIP = Events.SKIP
_BARRIER = Events.BARRIER
_WAIT = Events.WAIT
_END = Events.END
_EXCEPTION = Events.EXCEPTION


@runtime_checkable
class HookHandle(Protocol):
    """Anything with an idempotent ``remove()``, e.g. a torch ``RemovableHandle``."""

    def remove(self) -> None:
        """Unregister the hook; calling it again does nothing."""
        ...


class Mediator:
    """Runs one intervention callable in a worker and answers its requests.

    Args:
        intervention: the function to run, called as ``intervention(*args, **kwargs)``.
        args: positional arguments for ``intervention``.
        kwargs: keyword arguments for ``intervention``.
        name: a label for messages and worker names; defaults to the function's name.
        batch_group: opaque to the interleaver; handed to the :class:`Batcher` to
            narrow values to this mediator's rows. ``None`` sees whole values.
        info: anything the caller wants to keep with the mediator (e.g. tracing info).
        push: called in the worker just before each switch to the model side
            (e.g. to publish the intervention's locals to other mediators).
        pull: called in the worker just after each switch back.

    Attributes:
        interleaver: the interleaver of the current run (set by :meth:`start`).
        hooks: handles registered on this mediator's behalf; all removed by
            :meth:`remove_hooks` when the mediator finishes or the run ends.
        user_cache: caches attached with :meth:`set_user_cache`.
        iteration: the iteration requests are pinned to, or ``None`` to follow
            :attr:`iteration_tracker` (see :meth:`Interleaver.iterate_requester`).
        iteration_tracker: per provider path, the iteration this mediator's reads
            mean outside an iteration context; 0 unless advanced (reset per run).
        event: the pending ``(Events, payload)`` pair, model side.
        waiting: the requester this mediator is blocked on, or ``None``.
        asked_at: the provider the computation was at when :attr:`waiting` was asked.
        index: position in the interleaver's mediator order.
    """

    def __init__(
        self,
        intervention: Callable[..., Any],
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        batch_group: Any = None,
        info: Any = None,
        push: Callable[[Mediator], None] | None = None,
        pull: Callable[[Mediator], None] | None = None,
    ) -> None:
        self.intervention = intervention
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.name = name if name is not None else getattr(intervention, "__name__", "intervention")
        self.batch_group = batch_group
        self.info = info
        self._push = push
        self._pull = pull
        self.interleaver: Interleaver | None = None
        self.hooks: list[HookHandle] = []
        self.user_cache: list[Any] = []
        self.iteration: int | None = None
        self.iteration_tracker: Counter[str] = _Tracker()
        self.event: tuple[Events, Any] | None = None
        self.waiting: str | None = None
        self.asked_at: str | None = None
        self.index = 0
        self._base: str | None = None  # waiting's path without .iN, if any
        self._read: str | None = None  # waiting, when it waits to read the value
        self._worker: Worker | None = None
        self._transform: tuple[str, Callable[[], Any]] | None = None
        self._barrier: Barrier | None = None
        self._gate: Gate | None = None  # what it waits for, when not a provider
        self._canceled = False
        # Whether a read must take send()'s way (see _refresh), in one flag.
        self._detour = push is not None or pull is not None

    def __repr__(self) -> str:
        if self._worker is None:
            state = "idle"
        elif self.waiting is not None:
            state = f"waiting for {self.waiting}"
        elif self._gate is not None:
            state = f"waiting for {self._gate!r}"
        else:
            state = "running" if self.event is None else self.event[0].value
        return f"<Mediator {self.name} {state}>"

    # ------------------------------------------------------------------ state

    @property
    def push(self) -> Callable[[Mediator], None] | None:
        """Called in the worker just before each switch to the model side, or ``None``."""
        return self._push

    @push.setter
    def push(self, push: Callable[[Mediator], None] | None) -> None:
        self._push = push
        self._refresh()

    @property
    def pull(self) -> Callable[[Mediator], None] | None:
        """Called in the worker just after each switch back, or ``None``."""
        return self._pull

    @pull.setter
    def pull(self, pull: Callable[[Mediator], None] | None) -> None:
        self._pull = pull
        self._refresh()

    def _refresh(self) -> None:
        """Recompute :attr:`_detour` (after a change to any state it summarizes)."""
        self._detour = (
            self._transform is not None
            or self._canceled
            or self._push is not None
            or self._pull is not None
        )

    @property
    def gate(self) -> Gate | None:
        """The :class:`Gate` this mediator waits on (see :meth:`wait`), or ``None``."""
        return self._gate

    @property
    def at_barrier(self) -> bool:
        """Whether this mediator waits at a barrier for its other participants."""
        return self._barrier is not None

    @property
    def alive(self) -> bool:
        """Whether the worker has started and not yet finished."""
        return self._worker is not None

    @property
    def history(self) -> set[str]:
        """Providers that have gone by in this run (see :attr:`Interleaver.history`)."""
        return self._run().history

    def _run(self) -> Interleaver:
        if self.interleaver is None:
            raise RuntimeError(f"mediator {self.name!r} has not been started")
        return self.interleaver

    def set_user_cache(self, cache: Any) -> None:
        """Attach a cache to this mediator (kept in :attr:`user_cache`)."""
        self.user_cache.append(cache)

    def remove_hooks(self) -> None:
        """Remove every hook in :attr:`hooks` (each ``remove()`` is idempotent)."""
        if not self.hooks:
            return
        hooks, self.hooks = self.hooks, []
        errors: list[BaseException] = []
        for handle in hooks:
            try:
                handle.remove()
            except Exception as error:  # keep removing the rest
                errors.append(error)
        if errors:
            raise errors[0]

    # ------------------------------------------------------------ worker side

    def send(self, event: Events, payload: Any = None) -> Any:
        """Send an event to the model side and block until it answers (worker side).

        A transform parked by an :class:`eproperty` read is applied first, since
        switching back means the user is done editing that value.

        Returns:
            The model side's reply (the value, for VALUE events).

        Raises:
            OutOfOrderError, MissedProviderError: the request can never be served.
            Cancelation: the run is being torn down.
        """
        if self._transform is not None and event is not _EXCEPTION:
            requester, transform = self._transform
            self._transform = None
            self._refresh()
            self._send(_SWAP, (requester, transform()))
        return self._send(event, payload)

    def _send(self, event: Events, payload: Any) -> Any:
        if self._canceled:
            raise Cancelation(f"intervention {self.name!r} was canceled")
        worker = self._worker
        if worker is None:
            raise RuntimeError(
                f"mediator {self.name!r} is not running; request values only from "
                "inside its intervention while the interleaver runs"
            )
        interleaver = self.interleaver
        if interleaver is not None and interleaver.current is self:
            # While this worker runs, the model side waits in _process(provider)
            # for this mediator's next event. A request for that very provider
            # is answered here, as _process would, without the round trip.
            provider = interleaver._provider
            if provider is not None:
                if event is _VALUE:
                    if payload == provider:
                        return interleaver._narrow(self)
                elif (event is _SWAP or event is _SKIP) and payload[0] == provider:
                    if event is _SWAP:
                        interleaver._swap(self, payload[1])
                    else:
                        interleaver._skip(self, payload[1])
                    return None
        if self._push is not None:
            self._push(self)
        reply = worker.suspend((event, payload))
        if self._pull is not None:
            self._pull(self)
        if type(reply) is Signal:
            error = self._error_of(reply)
            try:
                raise error
            finally:
                del error, reply  # the traceback refers to this frame: no cycle
        return reply

    @staticmethod
    def _error_of(reply: Signal) -> BaseException:
        """The error the model side answered with, located at the user's line."""
        error = reply.error
        if isinstance(error, MissedProviderError):
            error.locate(user_frame(sys._getframe(2)))
        return error

    def request(self, requester: str) -> Any:
        """Block until ``requester`` is provided and return the value (worker side)."""
        worker = self._worker
        if worker is None or self._detour:
            return self.send(_VALUE, requester)
        # The common case of _send, in one frame: every read of a value runs it.
        interleaver: Interleaver = self.interleaver  # type: ignore[assignment]
        if requester == interleaver._provider and interleaver.current is self:
            return interleaver._narrow(self)
        reply = worker.suspend((_VALUE, requester))
        if type(reply) is Signal:
            error = self._error_of(reply)
            try:
                raise error
            finally:
                del error, reply  # the traceback refers to this frame: no cycle
        return reply

    def swap(self, requester: str, value: Any) -> None:
        """Replace the value of ``requester`` when it is provided (worker side)."""
        interleaver = self.interleaver
        if (
            not self._detour
            and interleaver is not None
            and interleaver.current is self
            and requester == interleaver._provider
        ):
            # The common case of _send: the value being served is replaced in
            # place, with no round trip (every ``x.output = ...`` runs it).
            interleaver._swap(self, value)
            return
        self.send(_SWAP, (requester, value))

    def skip(self, requester: str, value: Any) -> None:
        """Skip the computation at ``requester``, using ``value`` instead (worker side).

        The model side's :meth:`Interleaver.handle` raises :class:`SkipException`.
        """
        self.send(_SKIP, (requester, value))

    def barrier(self, barrier: Barrier) -> None:
        """Wait until every participant of ``barrier`` has reached it (worker side)."""
        self.send(_BARRIER, barrier)

    def wait(self, gate: Gate) -> None:
        """Block until ``gate`` is ready: until other interventions have done what
        this one needs (worker side). The computation goes on meanwhile.

        Raises:
            BaseException: ``gate.never(...)``'s error, when the gate can no longer
                open (the run ended, or every live intervention is blocked).
        """
        if gate.ready():
            return
        self.send(_WAIT, gate)

    def stop(self) -> None:
        """End the computation early (worker side); the run finishes without error."""
        raise EarlyStopException(f"stopped by intervention {self.name!r}")

    def exception(self, exception: BaseException) -> None:
        """Hand ``exception`` to the model side, which re-raises it (worker side)."""
        self._send(_EXCEPTION, exception)

    def set_transform(self, requester: str, transform: Callable[[], Any]) -> None:
        """Park a one-shot transform: when the worker next switches back, its result
        replaces ``requester``'s value (worker side; used by :class:`eproperty`)."""
        self._transform = (requester, transform)
        self._detour = True

    @contextmanager
    def iterating(self, iteration: int | None) -> Iterator[None]:
        """Pin requests to ``iteration`` inside the block (worker side)."""
        previous, self.iteration = self.iteration, iteration
        try:
            yield
        finally:
            self.iteration = previous

    def _main(self) -> tuple[Events, Any]:
        """The worker's body: run the intervention, report how it ended."""
        try:
            self.intervention(*self.args, **self.kwargs)
            if self._transform is not None:
                requester, transform = self._transform
                self._transform = None
                self._refresh()
                self._send(_SWAP, (requester, transform()))
        except BaseException as error:
            if self._canceled:
                # Whatever the intervention raised while unwinding from a cancel is
                # noise: the run is already ending for another reason.
                return (_END, None)
            return (_EXCEPTION, error)
        return (_END, None)

    # ------------------------------------------------------------- model side

    def start(self, interleaver: Interleaver) -> None:
        """Start the worker and run the intervention up to its first event (model side).

        The worker runs in a copy of the caller's :mod:`contextvars` context.
        """
        if self._worker is not None:
            raise RuntimeError(f"mediator {self.name!r} is already running")
        self.interleaver = interleaver
        if self.event is not None or self.iteration_tracker or self._canceled:
            # Started before: forget that run (a new mediator is clean already).
            self.event = None
            self.waiting = self._read = None
            self.iteration = None
            self.iteration_tracker = _Tracker()
            self._transform = None
            self._barrier = None
            self._gate = None
            self._canceled = False
            self._refresh()
        context = contextvars.copy_context()
        self._worker = interleaver.scheduler.start(
            partial(context.run, self._main), f"endoscope-{self.name}"
        )
        self.respond(None)

    def respond(self, value: Any) -> tuple[Events, Any]:
        """Resume the worker with ``value`` and store the event it sends next (model side)."""
        # No asserts on this path: it runs twice per value served. Both exist
        # whenever the model side responds (set by start()).
        worker: Worker = self._worker  # type: ignore[assignment]
        interleaver: Interleaver = self.interleaver  # type: ignore[assignment]
        previous = interleaver.current
        interleaver.current = self
        try:
            event = worker.resume(value)
        finally:
            interleaver.current = previous
        self.event = event
        if worker.finished:
            self._worker = None
        return event

    def handle(self, provider: str, value: Any) -> Any:
        """Serve ``value`` as ``provider`` to this mediator only (model side).

        Like :meth:`Interleaver.handle`, restricted to this mediator: for hooks a
        mediator registered for itself.

        Returns:
            The value, possibly swapped by the intervention.
        """
        interleaver = self._run()
        interleaver._history.add(provider)
        return interleaver._serve(provider, value, self)

    def cancel(self) -> None:
        """Stop the worker: its pending request raises :class:`Cancelation` (model side).

        Finishes the worker and removes the mediator's hooks. Safe to call twice.
        """
        try:
            if self._worker is not None:
                self._canceled = True
                self._detour = True
                if self.interleaver is not None:
                    self.interleaver._unwait(self)
                    self.interleaver._ungate(self)
                if self._barrier is not None:
                    self._barrier._leave(self)
                    self._barrier = None
                while self._worker is not None:
                    self.respond(Signal(Cancelation(f"intervention {self.name!r} was canceled")))
        finally:
            self.remove_hooks()

    def _process(self, provider: str | None) -> None:
        """Answer this mediator's events at ``provider`` until it blocks or ends.

        ``provider`` is where the computation is (``None`` at the start and end of
        a run). A request for it is answered at once; a request for something that
        already went by is answered with an error; anything else waits.
        """
        interleaver: Interleaver = self.interleaver  # type: ignore[assignment]
        while True:
            event, payload = self.event  # type: ignore[misc]
            if event is _VALUE:
                if payload == provider:
                    if self.batch_group is None or interleaver.batcher is None:
                        value = interleaver._value
                    else:
                        try:
                            value = interleaver._narrow(self)
                        except Exception as error:
                            self.respond(Signal(error))
                            continue
                    self.respond(value)
                    continue
                # The common way out: wait for a later provider (_block, inlined).
                missed = interleaver._wait(self, payload, provider, True)
                if missed is None:
                    return
                self.respond(Signal(missed))
            elif event is _SWAP or event is _SKIP:
                requester, value = payload
                if requester == provider:
                    try:
                        if event is _SWAP:
                            interleaver._swap(self, value)
                        else:
                            interleaver._skip(self, value)
                    except Exception as error:
                        self.respond(Signal(error))
                        continue
                    self.respond(None)
                    continue
                if self._block(requester, provider):
                    return
            elif event is _BARRIER:
                if interleaver._ended:
                    self.respond(Signal(payload._missed()))
                    continue
                payload._arrive(self, provider)
                return
            elif event is _WAIT:
                if payload.ready():
                    self.respond(None)
                    continue
                if interleaver._ended:
                    self.respond(Signal(payload.never(self)))
                    continue
                interleaver._gate(self, payload)
                return
            elif event is _END:
                interleaver._finish(self)
                return
            else:  # EXCEPTION
                interleaver._finish(self)
                self.event = None
                note_intervention_traceback(payload)
                try:
                    raise payload
                finally:
                    # The traceback refers to this frame: without this, frame and
                    # exception form a cycle that keeps the run's objects alive.
                    del payload

    def _block(self, requester: str, provider: str | None) -> bool:
        """Make this mediator wait for ``requester``; False if answered with an error."""
        interleaver = self.interleaver
        assert interleaver is not None
        error = interleaver._wait(self, requester, provider, False)
        if error is None:
            return True
        self.respond(Signal(error))
        return False
