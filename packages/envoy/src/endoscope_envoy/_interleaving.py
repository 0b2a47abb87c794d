"""Telling an out-of-order read from a value that never comes.

Hooks are installed on demand, so when an intervention asks for a module the
model has already passed, no hook saw that module run and the request simply
waits until the forward ends. To still name the mistake, each model learns the
order its points run in (``<path>.input`` / ``<path>.output``) from its first
trace, using torch's global module hooks for that one forward only. A request
left waiting at the end whose point comes, in that order, before the point where
it was asked becomes an :class:`OutOfOrderError` instead of a
:class:`MissedProviderError`. The learned order only labels errors: it never
changes what a valid program does.

The same knowledge numbers the calls of a module whose hook arrives late: the
interleaver counts a module's calls from the moment its hook exists, so a hook
installed after the module already ran (in this forward, or in an earlier
forward of a generation) starts from the number of calls that went by unseen:
counted live on the learning trace, else from the learned order, the calls per
forward and the number of forwards so far.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from endoscope_interleaver import Interleaver, Mediator, MissedProviderError, OutOfOrderError

from ._iteration import IterationLoop, ended_loop_error, iteration_of, waiting_loop

if TYPE_CHECKING:
    from ._nnsight import NNsight

__all__ = ["EnvoyInterleaver", "PointOrder", "counting_forwards", "recording_point_order"]


def _position(order: dict[str, int], point: str | None) -> int | None:
    """Where ``point`` is in a learned order. The order has module points only: an
    operation of a module's forward (``<module>.source.<op>...``) is placed at its
    module's input, the start of the call it runs in."""
    if point is None:
        return None
    position = order.get(point)
    if position is None:
        module, sep, _ = point.partition(".source.")
        if sep:
            position = order.get(f"{module}.input")
    return position


def _base(requester: str | None) -> str | None:
    if requester is None:
        return None
    head, sep, tail = requester.rpartition(".i")
    return head if sep and tail.isdigit() else requester


class PointOrder:
    """What a model's first trace taught: the order of its points and calls per forward.

    Attributes:
        order: ``"<path>.input"`` / ``"<path>.output"`` -> position of its first call.
        per_forward: point -> how many times it runs per call of the root module.
    """

    def __init__(self, order: dict[str, int], per_forward: dict[str, int]) -> None:
        self.order = order
        self.per_forward = per_forward


class EnvoyInterleaver(Interleaver):
    """An :class:`Interleaver` that knows the model's order of points.

    Attributes:
        model: the wrapped model.
        open_loops: per mediator id, the ``tracer.iter`` loops it is in (innermost last).
        ended_loops: per mediator id, the unbounded loop that ran out, if any.
        forwards: calls of the root module so far in this run, when counted (a run
            that calls it more than once, such as generation); else ``None``.
        live_calls: on the trace that learns the order, every point's calls so far.
        requests: module values read or written so far in this run.
        lent_late: forward wrappers lent in this run beyond the call site's warm
            ones (what the call site's next run is lent before it starts).
    """

    def __init__(self, *args: Any, model: NNsight, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model = model
        self.open_loops: dict[int, list[IterationLoop]] = {}
        self.ended_loops: dict[int, IterationLoop] = {}
        self.forwards: int | None = None
        self.live_calls: dict[str, int] | None = None
        #: Reads and writes of module values so far (lets a loop see a step that made none).
        self.requests = 0
        #: Forward wrappers lent in this run beyond the call site's warm ones.
        self.lent_late: list[Any] = []

    def missed_error(
        self, requester: str, asked_at: str | None, mediator: Mediator | None = None
    ) -> MissedProviderError:
        ended = ended_loop_error(self.open_loops, mediator, requester)
        if ended is not None:
            self.ended_loops[id(mediator)] = ended.loop
            return ended
        learned = self.model._point_order
        wanted, at = _base(requester), _base(asked_at)
        # The order is of each point's first call: it says nothing about later calls.
        if iteration_of(requester) in (None, 0) and learned is not None:
            order = learned.order
            now = _position(order, at)
            if now is not None and wanted is not None:
                if wanted in order:
                    gone = order[wanted] < now
                else:
                    # An operation of a module's forward runs inside the module's
                    # call: once that call ended, so did the operation.
                    module, sep, _ = wanted.partition(".source.")
                    call_end = order.get(f"{module}.output") if sep else None
                    gone = call_end is not None and call_end <= now
                if gone:
                    return self.out_of_order_error(requester, asked_at, mediator)
        error = super().missed_error(requester, asked_at, mediator)
        hint = self.model._missed_hint(requester, self.tracer)
        if hint is not None:
            error.hint = hint
        self._explain_ended_loop(error, mediator)
        return error

    def out_of_order_error(
        self, requester: str, provider: str | None, mediator: Mediator | None = None
    ) -> OutOfOrderError:
        error = super().out_of_order_error(requester, provider, mediator)
        hint = self.model._out_of_order_hint(requester, self.tracer)
        if hint is not None:
            error.hint = f"{hint}\n{error.hint}"
        self._explain_ended_loop(error, mediator)
        self._explain_wait(error, requester, mediator)
        return error

    def _explain_wait(
        self, error: MissedProviderError, requester: str, mediator: Mediator | None
    ) -> None:
        """A point that went by while the invoke waited for another's variable."""
        waited = getattr(mediator.info, "_waited", None) if mediator is not None else None
        if waited is None:
            return
        learned = self.model._point_order
        if learned is not None and iteration_of(requester) in (None, 0):
            # Unless the point came after the wait began, the wait is not why.
            wanted = _position(learned.order, _base(requester))
            began = _position(learned.order, _base(waited[2]))
            if wanted is not None and began is not None and wanted < began:
                return
        error.hint = mediator.info.wait_hint(requester)  # type: ignore[union-attr]

    def _explain_ended_loop(self, error: MissedProviderError, mediator: Mediator | None) -> None:
        """A request after an unbounded loop that ended: say that the loop is why."""
        loop = self.ended_loops.get(id(mediator))
        if loop is not None:
            error.hint = (
                f"{loop.describe()} before this line ran until the computation ended, so "
                "nothing the model computed after it can be read in the same invoke "
                "(tracer.result can). Read later values in another invoke of this trace "
                "(`with tracer.invoke():` sees the whole batch), or bound the loop."
            )

    def end_unbounded_loops(self) -> None:
        """The model's run returned: end every unbounded ``tracer.iter`` loop waiting
        for a step that will not come, so the code after it runs while values still
        to be provided (``tracer.result``) can be read."""
        if not self.open_loops:
            return  # no loop is running (every trace without one)
        for mediator in list(self._live):
            requester = mediator.waiting
            if requester is not None and waiting_loop(self.open_loops, mediator, requester):
                self.miss(mediator)

    def iterate_requester(self, requester: str) -> str:
        self.requests += 1
        return super().iterate_requester(requester)

    def ensure_hook(self, key: Hashable, install: Callable[[], Any]) -> bool:
        installed = super().ensure_hook(key, install)
        # Before the first provider (provider is None) nothing can have run unseen:
        # the common case of reads made before the forward starts pays nothing here.
        if installed and self.provider is not None and isinstance(key, tuple):
            kind = key[1]
            if kind == "output" or kind == "input":
                path = self.model._path_of_module(key[0])
                if path is not None:
                    self._seed_calls(f"{path}.{kind}")
        return installed

    def _seed_calls(self, point: str) -> None:
        """Number a late hook's calls from the calls of ``point`` that went by unseen."""
        if point in self.calls:
            return
        if self.live_calls is not None:
            ran = self.live_calls.get(point, 0)
        else:
            ran = self._calls_before_now(point)
        if ran:
            self.calls[point] = ran

    def _calls_before_now(self, point: str) -> int:
        learned = self.model._point_order
        if learned is None or point not in learned.order:
            return 0
        forwards = 1 if self.forwards is None else self.forwards
        if forwards == 0:
            return 0
        per_forward = learned.per_forward.get(point, 1)
        now = _base(self.provider)
        passed = now in learned.order and learned.order[point] < learned.order[now]
        # A point that runs several times per forward and already started this
        # forward is counted once here; reading it after later points of the same
        # forward is the out-of-order read the learned order reports.
        return (forwards - 1) * per_forward + (1 if passed else 0)


@contextmanager
def counting_forwards(interleaver: EnvoyInterleaver, root: torch.nn.Module) -> Iterator[None]:
    """Count the root module's calls in a run that calls it several times."""
    from ._hooks import add_forward_pre_hook, theirs

    interleaver.forwards = 0

    def count(module: torch.nn.Module, args: Any) -> None:
        if not theirs(interleaver):
            interleaver.forwards = (interleaver.forwards or 0) + 1

    handle = add_forward_pre_hook(root, count, first=True)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def recording_point_order(model: NNsight, interleaver: EnvoyInterleaver) -> Iterator[None]:
    """Record, for one run, the order of ``model``'s points and their calls per forward.

    While it runs, ``interleaver.live_calls`` counts every point's calls. Calls
    made by other threads (torch's global hooks see every call) are left out.
    """
    thread = threading.get_ident()
    paths = {id(envoy._module): path for path, envoy in model.named_modules()}
    root = id(model._module)
    order: dict[str, int] = {}
    calls: dict[str, int] = {}
    interleaver.live_calls = calls
    forwards = 0

    def pre(module: torch.nn.Module, args: Any) -> None:
        nonlocal forwards
        key = id(module)
        path = paths.get(key)
        if path is not None and threading.get_ident() == thread:
            point = f"{path}.input"
            order.setdefault(point, len(order))
            calls[point] = calls.get(point, 0) + 1
            if key == root:
                forwards += 1

    def post(module: torch.nn.Module, args: Any, output: Any) -> None:
        path = paths.get(id(module))
        if path is not None and threading.get_ident() == thread:
            point = f"{path}.output"
            order.setdefault(point, len(order))
            calls[point] = calls.get(point, 0) + 1

    handles = [
        torch.nn.modules.module.register_module_forward_pre_hook(pre),
        torch.nn.modules.module.register_module_forward_hook(post),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        interleaver.live_calls = None
    if order:
        per_forward = {point: max(1, n // max(1, forwards)) for point, n in calls.items()}
        model._point_order = PointOrder(order, per_forward)
