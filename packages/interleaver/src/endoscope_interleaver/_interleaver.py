"""Interleaver: runs mediators beside a computation and serves them values.

Usage (what a caller such as endoscope-envoy does)::

    interleaver = Interleaver([Mediator(intervention_a), Mediator(intervention_b)])
    with interleaver:                      # start every intervention
        output = model(inputs)             # hooks call interleaver.handle(...)
    # leaving the block: pending requests fail loudly, workers and hooks are gone

Hooks inside the computation call ``value = interleaver.handle(provider, value)``.
The first thing ``handle`` does is one dict lookup: a provider nobody waits for
returns at once. Only when a mediator waits for it does the slow path run, serving
the waiting mediators in their fixed order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Protocol, TypeVar, runtime_checkable

from ._errors import EarlyStopException, MissedProviderError, OutOfOrderError, SkipException
from ._events import Events, Signal
from ._mediator import HookHandle, Mediator
from ._scheduler import Scheduler, Worker, default_scheduler

__all__ = ["Barrier", "Batcher", "Gate", "Interleaver"]

T = TypeVar("T")

_VALUE = Events.VALUE


@runtime_checkable
class Batcher(Protocol):
    """Maps whole values to a mediator's share of them and back.

    The interleaver never looks inside values; when several mediators share one
    batched computation, a batcher (endoscope-envoy's torch batcher, for one) does
    the slicing. It is only called for mediators whose ``batch_group`` is not
    ``None``; the others see and replace whole values.
    """

    def narrow(self, value: Any, batch_group: Any) -> Any:
        """Return the part of ``value`` that belongs to ``batch_group``."""
        ...

    def swap(self, value: Any, replacement: Any, batch_group: Any) -> Any:
        """Return ``value`` with ``batch_group``'s part replaced by ``replacement``.

        May build a new object or edit ``value`` in place and return it.
        """
        ...


# Requesters split so far: a model has a bounded set of points, and the limit
# bounds the memo when callers make endless strings (steps of a long generation).
_SPLITS: dict[str, tuple[str, int]] = {}
_SPLITS_LIMIT = 4096


def _split_iteration(requester: str) -> tuple[str, int] | None:
    """``"a.output.i3"`` -> ``("a.output", 3)``; ``None`` without an iteration suffix."""
    split = _SPLITS.get(requester)
    if split is None:
        base, sep, tail = requester.rpartition(".i")
        if not (sep and tail.isdigit()):
            return None
        if len(_SPLITS) >= _SPLITS_LIMIT:
            _SPLITS.clear()
        split = _SPLITS[requester] = (base, int(tail))
    return split


def _by_index(mediator: Mediator) -> int:
    return mediator.index


class _Everything(dict[str, int]):
    """A wanted-set that contains every provider: sends all handle() calls to the
    slow path, which is how a stop requested before the first provider is honoured
    without a per-call flag check on the fast path."""

    def __contains__(self, key: object) -> bool:
        return True


@runtime_checkable
class Gate(Protocol):
    """Something an intervention waits for that other interventions bring about.

    An intervention calls :meth:`Mediator.wait` with a gate; its mediator then
    waits (the computation goes on, as when it waits for a provider) until
    ``ready()`` says so. The interleaver asks again whenever another
    intervention has run. When the gate can no longer open (the run ended, or
    every live intervention is blocked on a gate or a barrier, so none can act),
    the waiting intervention raises ``never(mediator)``'s error at its line.
    """

    def ready(self) -> bool:
        """Whether the waiting intervention may go on (model side; keep it cheap)."""
        ...

    def never(self, mediator: Mediator) -> BaseException:
        """The error for ``mediator``, whose wait can no longer end."""
        ...


class Barrier:
    """A rendezvous for ``participants`` mediators of one run.

    Created with :meth:`Interleaver.barrier`; calling it from inside an
    intervention blocks that intervention until ``participants`` of them have
    called it. They are then released in mediator order, at the provider where
    the last one arrived, so values one of them set there are visible to the next.
    """

    def __init__(self, interleaver: Interleaver, participants: int) -> None:
        if participants < 1:
            raise ValueError(f"a barrier needs at least 1 participant, got {participants}")
        self.interleaver = interleaver
        self.participants = participants
        self._arrived: list[Mediator] = []

    def __repr__(self) -> str:
        return f"<Barrier {len(self._arrived)}/{self.participants}>"

    def __call__(self) -> None:
        """Wait here until every participant arrives (call from an intervention)."""
        mediator = self.interleaver.current
        if mediator is None:
            raise RuntimeError("call a barrier from inside an intervention, not from outside")
        mediator.barrier(self)

    def _arrive(self, mediator: Mediator, provider: str | None) -> None:
        mediator._barrier = self
        self._arrived.append(mediator)
        if len(self._arrived) < self.participants:
            if self.interleaver._gated:
                self.interleaver._check_stuck()
            return
        released = sorted(self._arrived, key=lambda m: m.index)
        self._arrived = []
        for participant in released:
            participant._barrier = None
        for participant in released:
            if participant.alive:
                participant.respond(None)
                participant._process(provider)
        if self.interleaver._gated:
            self.interleaver._open_gates(provider)

    def _leave(self, mediator: Mediator) -> None:
        if mediator in self._arrived:
            self._arrived.remove(mediator)

    def _missed(self) -> MissedProviderError:
        return MissedProviderError(
            "barrier",
            f"A barrier for {self.participants} interventions was reached by only "
            f"{len(self._arrived) + 1} of them before the run ended.",
            "Every intervention that shares a barrier must call it; check that each "
            "one reaches the call, or lower the number of participants.",
        )


class Interleaver:
    """Coordinates a computation with the interventions that watch and edit it.

    Args:
        mediators: the interventions of the next run, in the order they are served.
        batcher: slices values for mediators with a ``batch_group`` (see :class:`Batcher`).
        scheduler: how workers run; :func:`default_scheduler` when omitted.
        tracer: whatever created this interleaver, kept for callers' convenience.

    Attributes:
        mediators: the mediators of the current (or next) run.
        current: the mediator whose worker is running right now, else ``None``.
        calls: per provider path, how many times it was handled with
            ``iterate=True`` in this run (the next call's ``.iN``).
        hooks: run-level hook handles, removed when the run ends.
        thread: the ident of the thread that started the current (or last) run,
            where its computation runs; hooks a caller shares with code of other
            threads tell the run's calls from theirs by it.
        failure: while the run's hooks are removed, the exception that is ending
            the run before the computation finished (an early stop is not one),
            else ``None``; a hook that kept a record of the run can say it is partial.
    """

    def __init__(
        self,
        mediators: Iterable[Mediator] = (),
        *,
        batcher: Batcher | None = None,
        scheduler: Scheduler | None = None,
        tracer: Any = None,
    ) -> None:
        self.scheduler: Scheduler = scheduler if scheduler is not None else default_scheduler()
        self.mediators: list[Mediator] = []
        self.batcher: Batcher | None = None
        self.tracer: Any = None
        self.current: Mediator | None = None
        # A plain dict: Counter's item access costs twice as much on the hot path.
        self.calls: dict[str, int] = {}
        self.hooks: list[HookHandle] = []
        self._hook_keys: set[Hashable] = set()
        self._history: set[str] = set()
        self._wanted: dict[str, int] = {}
        self._live: list[Mediator] = []
        # Mediators waiting on a Gate (not on a provider), in mediator order.
        self._gated: list[Mediator] = []
        # The only live mediator, when there is one and it sees whole values:
        # handle() serves it without _serve's general loop.
        self._solo: Mediator | None = None
        self._provider: str | None = None
        self._value: Any = None
        self._skips: list[tuple[Any, Any]] | None = None
        self._interleaving = False
        self._ended = False
        self._stopping = False
        self.thread: int | None = None
        self.failure: BaseException | None = None
        if mediators:
            self.initialize(mediators, batcher=batcher, tracer=tracer)
        else:
            self.batcher = batcher
            self.tracer = tracer

    def __repr__(self) -> str:
        state = "interleaving" if self._interleaving else "idle"
        return f"<Interleaver {state} mediators={len(self.mediators)} {self.scheduler!r}>"

    def initialize(
        self, mediators: Iterable[Mediator], *, batcher: Batcher | None = None, tracer: Any = None
    ) -> None:
        """Set the mediators, batcher and tracer for the next run."""
        if self._interleaving:
            raise RuntimeError("cannot re-initialize an interleaver while it is running")
        self.mediators = list(mediators)
        for index, mediator in enumerate(self.mediators):
            mediator.index = index
        self.batcher = batcher
        self.tracer = tracer

    @property
    def interleaving(self) -> bool:
        """Whether a run is in progress (between ``__enter__`` and ``__exit__``)."""
        return self._interleaving

    @property
    def provider(self) -> str | None:
        """The provider being served right now (``None`` before the first and at the end)."""
        return self._provider

    @property
    def history(self) -> set[str]:
        """Every provider string that went by in this run (built on demand)."""
        seen = set(self._history)
        for base, count in self.calls.items():
            seen.update(f"{base}.i{n}" for n in range(count))
        return seen

    # -------------------------------------------------------------- lifecycle

    def __enter__(self) -> Interleaver:
        """Start every mediator; each runs up to its first request."""
        if self._interleaving:
            raise RuntimeError("this interleaver is already running; runs cannot nest")
        # The run state is clean: set so by __init__ and by the last run's teardown.
        self._interleaving = True
        self.thread = threading.get_ident()
        try:
            self._live = list(self.mediators)
            for mediator in self.mediators:
                if self._stopping:
                    self._live.remove(mediator)
                    continue
                mediator.start(self)
                try:
                    mediator._process(None)
                except EarlyStopException:
                    self._stop_before_start()
            self._find_solo()
            if self._gated:
                self._check_stuck()
        except BaseException as error:
            self._teardown(error)
            raise
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        """End the run: pending requests fail (if the computation finished), workers
        are canceled, hooks removed. An :class:`EarlyStopException` is absorbed."""
        try:
            if exc is None and not self._stopping:
                try:
                    self._end()
                except EarlyStopException:
                    pass
        finally:
            self._teardown(exc)
        return exc is not None and isinstance(exc, EarlyStopException)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Run ``fn(*args, **kwargs)`` inside this interleaver.

        Returns:
            ``fn``'s result, or ``None`` if an intervention stopped it early.
        """
        with self:
            return fn(*args, **kwargs)
        return None

    def cancel(self) -> None:
        """Cancel every mediator and remove every hook (mediators' and run-level)."""
        errors: list[BaseException] = []
        for mediator in self.mediators:
            try:
                mediator.cancel()
            except BaseException as error:
                errors.append(error)
        hooks, self.hooks = self.hooks, []
        self._hook_keys.clear()
        for handle in hooks:
            try:
                handle.remove()
            except Exception as error:
                errors.append(error)
        self._live = []
        self._gated = []
        self._solo = None
        self._wanted = {}
        if errors:
            raise errors[0]

    def _reset(self) -> None:
        self.current = None
        self.calls = {}
        self._history = set()
        self._wanted = {}
        self._live = []
        self._gated = []
        self._solo = None
        self._provider = None
        self._value = None
        self._skips = None
        self._ended = False
        self._stopping = False

    def _teardown(self, error: BaseException | None = None) -> None:
        if error is not None and not isinstance(error, EarlyStopException):
            self.failure = error
        try:
            self.cancel()
        finally:
            self.failure = None
            self._reset()
            self._interleaving = False
            # Mediators keep no reference back: no cycle outlives the run.
            for mediator in self.mediators:
                mediator.interleaver = None

    def _stop_before_start(self) -> None:
        self._stop()
        self._wanted = _Everything()

    def _stop(self) -> None:
        self._stopping = True
        self._solo = None

    def _find_solo(self) -> None:
        """Set :attr:`_solo` from the live mediators (after any change to them)."""
        live = self._live
        solo = live[0] if len(live) == 1 and not self._stopping else None
        if solo is not None and solo.batch_group is not None and self.batcher is not None:
            solo = None
        self._solo = solo

    def _end(self) -> None:
        """The computation finished: every request still pending has been missed."""
        self._ended = True
        self._provider = None
        self._value = None
        # Interventions waiting on a provider first: a barrier is usually missed
        # because a partner failed, and the partner's error is the useful one.
        if not self._live:
            return
        pending = sorted(self._live, key=lambda m: (m._barrier is not None, m.index))
        for mediator in pending:
            if mediator.alive:
                self._unwait(mediator)
                self._ungate(mediator)
                if mediator._barrier is not None:
                    mediator._barrier._leave(mediator)
                    mediator._barrier = None
                mediator._process(None)

    # ---------------------------------------------------------------- serving

    def handle(self, provider: str, value: Any, iterate: bool = False) -> Any:
        """Provide ``value`` as ``provider`` to every mediator waiting for it.

        Called from the computation's hooks. Waiting mediators are served in
        their fixed order; each may read the value, replace it (a later mediator
        sees the replacement), skip, or wait at a barrier.

        Args:
            provider: the provider string, e.g. ``model.fc.output.i0``. With
                ``iterate=True`` give the path without the iteration suffix
                (``model.fc.output``): the interleaver numbers the calls of each
                path in a run (``.i0``, ``.i1``, ... from :attr:`calls`).
            value: the value computed at this point.
            iterate: whether the interleaver numbers this provider's calls.

        Returns:
            The value to continue with: ``value`` itself, or a replacement.

        Raises:
            SkipException: an intervention asked to skip this point.
            EarlyStopException: an intervention stopped the computation.
            BaseException: whatever an intervention raised, with its traceback.
        """
        if iterate:
            # Counted before serving: while ``.iN`` is served it has gone by (a
            # request for it from anyone not being served is out of order).
            calls = self.calls
            count = calls.get(provider, 0)
            calls[provider] = count + 1
            if provider not in self._wanted:
                return value
            provider = f"{provider}.i{count}"
        else:
            self._history.add(provider)
            if provider not in self._wanted:
                return value
        mediator = self._solo
        if mediator is None or mediator._read != provider or self._provider is not None:
            return self._serve(provider, value, None)
        # Not inlined here: its locals would slow every call of an untouched provider.
        return self._serve_solo(mediator, provider, value)

    def handle_counted(self, requester: str, value: Any) -> Any:
        """:meth:`handle` with ``iterate=True``, after its counting, for a hook that
        counts its provider's calls itself.

        The hook does what ``handle`` does first, with one lookup less per call::

            count = interleaver.calls.get(path, 0)
            interleaver.calls[path] = count + 1
            if path in interleaver.wanted:
                value = interleaver.handle_counted(f"{path}.i{count}", value)

        Args:
            requester: the provider with its iteration suffix (``<path>.i<count>``).
            value: the value computed at this point.

        Returns:
            The value to continue with, as :meth:`handle` does (same exceptions).
        """
        mediator = self._solo
        if mediator is None or mediator._read != requester or self._provider is not None:
            return self._serve(requester, value, None)
        return self._serve_solo(mediator, requester, value)

    @property
    def wanted(self) -> Any:
        """What mediators wait for: provider strings, with and without ``.iN``
        (a container for ``in`` tests only; see :meth:`handle_counted`)."""
        return self._wanted

    def _serve_solo(self, mediator: Mediator, provider: str, value: Any) -> Any:
        """The common case of :meth:`_serve`, in one frame.

        ``mediator`` is the run's only live mediator, waiting to read ``provider``'s
        whole value; it usually asks for a later provider next. Being the only one
        waiting, its keys are all the wanted-set holds; and no value is being
        served (no provider), so there is no state to save but this one.
        """
        self._provider = provider
        self._value = value
        try:
            wanted = self._wanted
            wanted.clear()
            mediator.waiting = mediator._read = None
            worker: Worker = mediator._worker  # type: ignore[assignment]
            previous = self.current
            self.current = mediator
            try:
                reply = worker.resume(value)
            finally:
                self.current = previous
            mediator.event = reply
            event, requester = reply
            # A VALUE event is never a finished worker's last: no need to ask.
            if event is _VALUE:
                # _wait, inlined for a requester whose iteration is still ahead (the
                # provider itself is not: it was counted, or recorded as history).
                split = _SPLITS.get(requester) or _split_iteration(requester)
                if split is None:
                    mediator._process(provider)
                else:
                    base, iteration = split
                    if self.calls.get(base, 0) <= iteration and requester not in self._history:
                        mediator.waiting = mediator._read = requester
                        mediator.asked_at = provider
                        mediator._base = base
                        wanted[requester] = 1
                        wanted[base] = 1
                    else:
                        mediator._process(provider)
            else:
                if worker.finished:
                    mediator._worker = None
                mediator._process(provider)
            value, skips = self._value, self._skips
        except BaseException as error:
            self._provider = self._value = self._skips = None
            # They may hold the intervention's exception, whose traceback will
            # hold this frame: no cycle.
            reply = requester = None
            if isinstance(error, EarlyStopException):
                self._stop()
            raise
        self._provider = self._value = None
        if skips:
            self._skips = None
            raise SkipException(skips)
        return value

    def _serve(self, provider: str, value: Any, only: Mediator | None) -> Any:
        """Serve ``provider`` (already recorded as gone by) to the mediators waiting."""
        if self._stopping:
            raise EarlyStopException("stopped before the computation reached a provider")
        # Save and restore: a hook may fire while an intervention runs (a module
        # called from intervention code), nesting one serve inside another.
        saved = (self._provider, self._value, self._skips)
        self._provider, self._value, self._skips = provider, value, None
        try:
            for mediator in (only,) if only is not None else tuple(self._live):
                if mediator.waiting == provider:
                    reads = mediator._read is not None
                    # _unwait, inlined: this loop runs once per served value.
                    mediator.waiting = mediator._read = None
                    wanted = self._wanted
                    count = wanted.get(provider, 0) - 1
                    if count > 0:
                        wanted[provider] = count
                    else:
                        wanted.pop(provider, None)
                    base = mediator._base
                    if base is not None:
                        count = wanted.get(base, 0) - 1
                        if count > 0:
                            wanted[base] = count
                        else:
                            wanted.pop(base, None)
                    if reads:
                        # The common case of _process, inlined: a read (not a swap
                        # or skip) gets the value (its part of it), and its next
                        # request usually waits for a later provider.
                        batch_group = mediator.batch_group
                        if batch_group is None or self.batcher is None:
                            part = self._value
                        else:
                            try:
                                part = self.batcher.narrow(self._value, batch_group)
                            except Exception as error:
                                part = Signal(error)  # raised at the user's line
                        # respond(), inlined.
                        worker: Worker = mediator._worker  # type: ignore[assignment]
                        previous = self.current
                        self.current = mediator
                        try:
                            reply = worker.resume(part)
                        finally:
                            self.current = previous
                        part = None
                        mediator.event = reply
                        event, payload = reply
                        if event is _VALUE:
                            if payload != provider:
                                # _wait, inlined for a requester still ahead.
                                split = _SPLITS.get(payload) or _split_iteration(payload)
                                if split is not None and not self._ended:
                                    base, iteration = split
                                    if (
                                        self.calls.get(base, 0) <= iteration
                                        and payload not in self._history
                                    ):
                                        mediator.waiting = mediator._read = payload
                                        mediator.asked_at = provider
                                        mediator._base = base
                                        wanted[payload] = wanted.get(payload, 0) + 1
                                        wanted[base] = wanted.get(base, 0) + 1
                                        continue
                                missed = self._wait(mediator, payload, provider, True)
                                if missed is None:
                                    continue
                                mediator.respond(Signal(missed))
                                missed = None
                        elif worker.finished:
                            mediator._worker = None
                        # They may hold the intervention's exception, whose
                        # traceback will hold this frame: no cycle.
                        reply = payload = None
                    mediator._process(provider)
            if self._gated:
                # What the served interventions did may let a waiting one go on,
                # here, where it can still read and edit this provider.
                self._open_gates(provider)
            value, skips = self._value, self._skips
        except EarlyStopException:
            self._stop()
            raise
        finally:
            self._provider, self._value, self._skips = saved
        if skips:
            raise SkipException(skips)
        return value

    def iterate_requester(self, requester: str) -> str:
        """Append the iteration suffix to ``requester`` for the current mediator.

        Inside an explicit iteration context (``mediator.iteration`` is set) that
        iteration is used; otherwise the mediator's
        ``iteration_tracker[requester]``, which is 0 unless something advanced it
        (:meth:`advance`, or a caller's own iteration hooks). So in a plain run
        every read means the first call, and reading a point after it ran is an
        :class:`OutOfOrderError`.
        """
        mediator = self.current
        if mediator is None:
            return f"{requester}.i0"
        iteration = mediator.iteration
        if iteration is None:
            # get(): a Counter's missing-key path costs a Python call.
            iteration = mediator.iteration_tracker.get(requester, 0)
        return f"{requester}.i{iteration}"

    def advance(self, path: str, by: int = 1) -> None:
        """Move every running mediator's ``iteration_tracker[path]`` forward.

        Reads of ``path`` outside an iteration context then mean a later call.
        :meth:`eproperty.provide` advances after each provided value.
        """
        for mediator in self._live:
            mediator.iteration_tracker[path] += by

    def ran(self, requester: str) -> bool:
        """Whether the provider ``requester`` asks for already went by in this run."""
        if requester in self._history:
            return True
        split = _split_iteration(requester)
        return split is not None and self.calls.get(split[0], 0) > split[1]

    def barrier(self, participants: int) -> Barrier:
        """Create a :class:`Barrier` for ``participants`` interventions."""
        return Barrier(self, participants)

    def ensure_hook(self, key: Hashable, install: Callable[[], HookHandle]) -> bool:
        """Install a run-level hook once per run; it is removed when the run ends.

        For callers that hook providers on demand: several mediators asking for
        the same provider must not install the same hook twice (the provider
        would be served, and counted, twice per call).

        Args:
            key: identifies the hook, e.g. ``(module_id, "output")``.
            install: registers the hook and returns its handle.

        Returns:
            ``True`` if ``install`` ran, ``False`` if the key was already hooked.
        """
        if key in self._hook_keys:
            return False
        self.hooks.append(install())
        self._hook_keys.add(key)
        return True

    # ------------------------------------------------- used by mediators

    def _narrow(self, mediator: Mediator) -> Any:
        batch_group = mediator.batch_group
        if batch_group is None or self.batcher is None:
            return self._value
        return self.batcher.narrow(self._value, batch_group)

    def _swap(self, mediator: Mediator, value: Any) -> None:
        batch_group = mediator.batch_group
        if batch_group is None or self.batcher is None:
            self._value = value
        else:
            self._value = self.batcher.swap(self._value, value, batch_group)

    def _skip(self, mediator: Mediator, value: Any) -> None:
        if self._skips is None:
            self._skips = []
        self._skips.append((mediator.batch_group, value))

    def _wait(
        self, mediator: Mediator, requester: str, provider: str | None, read: bool
    ) -> MissedProviderError | None:
        """Register ``mediator`` as waiting for ``requester``, or say why it never can.

        ``read``: whether it waits to read the value (a VALUE event), rather than
        to swap or skip it.
        """
        if self._ended:
            return self.missed_error(requester, mediator.asked_at, mediator)
        split = _SPLITS.get(requester) or _split_iteration(requester)
        base = split[0] if split is not None else None
        if requester in self._history or (
            split is not None and self.calls.get(split[0], 0) > split[1]
        ):
            return self.out_of_order_error(requester, provider, mediator)
        mediator.waiting = requester
        mediator._read = requester if read else None
        mediator.asked_at = provider
        mediator._base = base
        wanted = self._wanted
        wanted[requester] = wanted.get(requester, 0) + 1
        if base is not None:
            # handle(..., iterate=True) looks up the path without its suffix.
            wanted[base] = wanted.get(base, 0) + 1
        return None

    def _unwait(self, mediator: Mediator) -> None:
        requester = mediator.waiting
        if requester is None:
            return
        mediator.waiting = mediator._read = None
        wanted = self._wanted
        for key in (requester, mediator._base):
            if key is None:
                continue
            count = wanted.get(key, 0) - 1
            if count > 0:
                wanted[key] = count
            else:
                wanted.pop(key, None)

    def _finish(self, mediator: Mediator) -> None:
        self._unwait(mediator)
        self._ungate(mediator)
        if mediator in self._live:
            self._live.remove(mediator)
            self._find_solo()
        mediator.remove_hooks()
        if self._gated and mediator.event is not None and mediator.event[0] is Events.END:
            # A gate may wait for this intervention to end; or it was the last
            # that could act.
            self._open_gates(self._provider)
            if self._gated:
                self._check_stuck()

    # ------------------------------------------------------------------ gates

    def _gate(self, mediator: Mediator, gate: Gate) -> None:
        """Make ``mediator`` wait on ``gate`` (model side)."""
        mediator._gate = gate
        gated = self._gated
        gated.append(mediator)
        gated.sort(key=_by_index)
        self._check_stuck()

    def _ungate(self, mediator: Mediator) -> None:
        if mediator._gate is not None:
            mediator._gate = None
            if mediator in self._gated:
                self._gated.remove(mediator)

    def _open_gates(self, provider: str | None) -> None:
        """Let every mediator whose gate is ready go on, in mediator order, at
        ``provider`` (one that goes on may make another gate ready)."""
        opened = True
        while opened and self._gated:
            opened = False
            for mediator in tuple(self._gated):
                gate = mediator._gate
                if gate is not None and gate.ready():
                    self._ungate(mediator)
                    mediator.respond(None)
                    mediator._process(provider)
                    opened = True
                    break

    def _check_stuck(self) -> None:
        """When every live mediator waits on a gate or at a barrier and at least one
        on a gate, none can act until the run ends: a gate can never open. Each
        gated mediator gets its gate's error now, rather than after the run."""
        live = self._live
        if not live or any(m._gate is None and m._barrier is None for m in live):
            return
        for mediator in tuple(self._gated):
            gate = mediator._gate
            if gate is None or not mediator.alive:
                continue
            self._ungate(mediator)
            signal: Signal | None = Signal(gate.never(mediator))
            mediator.respond(signal)
            signal = None  # the error's traceback will hold the intervention's frames
            mediator._process(self._provider)

    def miss(self, mediator: Mediator) -> None:
        """Answer ``mediator``'s pending request now as missed, and run it on.

        For a caller that knows before the run ends that the computation will not
        provide what a mediator waits for: the intervention gets
        :meth:`missed_error`'s error at its line, as it would when the run ends,
        and runs to its next request (which may still be served in this run).
        Does nothing for a mediator that is not waiting.

        Raises:
            BaseException: whatever the intervention raised after that.
        """
        requester = mediator.waiting
        if requester is None or not mediator.alive or mediator.interleaver is not self:
            return
        asked_at = mediator.asked_at
        self._unwait(mediator)
        signal: Signal | None = Signal(self.missed_error(requester, asked_at, mediator))
        mediator.respond(signal)
        signal = None  # the error's traceback will hold the intervention's frames: no cycle
        mediator._process(self._provider)

    def missed_error(
        self, requester: str, asked_at: str | None, mediator: Mediator | None = None
    ) -> MissedProviderError:
        """The error for a request still pending when the computation ended.

        An extension point: a caller that knows more about the computation (for
        example the order its points run in) may override it to return
        :meth:`out_of_order_error` for a point that went by unseen, or an error
        of its own that the intervention expects (such as the end of a loop).

        Args:
            requester: what was asked for.
            asked_at: the provider the computation was at when it was asked
                (``None`` if asked before the first provider).
            mediator: the mediator whose request it was.
        """
        split = _split_iteration(requester)
        ran = ""
        if split is not None:
            count = self.calls.get(split[0], 0)
            if count:
                ran = f" ({split[0]} ran {count} time{'s' if count != 1 else ''}: i0..i{count - 1})"
        return MissedProviderError(
            requester,
            f"{requester} was requested, but the computation ended without providing it{ran}.",
            "Check that this point runs in the computation (is the module called? does "
            "the iteration exist? did stop() end the run first?).",
        )

    def out_of_order_error(
        self, requester: str, provider: str | None, mediator: Mediator | None = None
    ) -> OutOfOrderError:
        """The error for a request of a point the computation already passed.

        An extension point like :meth:`missed_error` (``mediator``: whose request
        it was, when known)."""
        now = f"it is now at {provider}" if provider is not None else "it has finished"
        return OutOfOrderError(
            requester,
            provider,
            f"{requester} was requested after the computation had already run it; {now}.",
            "Request values in the order the computation produces them: move this line "
            "before the request for a later point, or read it in another invoke or trace.",
        )
