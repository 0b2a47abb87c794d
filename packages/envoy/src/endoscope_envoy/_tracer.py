"""Traces and invokes: capture the user's block, run it beside the model's forward.

``with model.trace(x):`` captures its body (endoscope-tracing) and, on leaving the
``with``, runs it as one intervention (a mediator) beside ``model(x)``.
``with model.trace() as tracer:`` instead runs its body at once; each
``with tracer.invoke(x):`` inside captures its own body as a mediator, and after
the body the inputs of every invoke are batched into one forward pass.

Invokes of one trace share variables: each one's body runs with globals that are
a per-trace copy of the caller's, into which every invoke publishes its variables
whenever it hands control back to the model, so a later invoke reading a value
after the earlier invoke produced it sees it (activation patching, no barrier).

A later invoke may also read such a value *before* the earlier invoke made it:
when an invoke is captured, the names its body may read before binding them
itself that an earlier invoke of the trace may assign are compiled to call
:meth:`Invoker.before_read` first (every other read stays a plain read). The
first such read waits, while the model runs on, until the nearest earlier invoke
that may assign the name has assigned it (or has ended), as if the invokes ran
one after another in the order written.
"""

from __future__ import annotations

import ast
import builtins
import sys
from collections.abc import Callable
from contextvars import ContextVar
from types import FrameType
from typing import TYPE_CHECKING, Any

from endoscope_interleaver import Barrier, Mediator, eproperty
from endoscope_tracing import SAVED, Tracer, UnsavedName, write_locals

from ._batching import BatchingError, TorchBatcher
from ._interleaving import EnvoyInterleaver
from ._iteration import IterationIndexer, IterationLoop, end_loops_gracefully, loop_ended

if TYPE_CHECKING:
    from ._nnsight import NNsight

__all__ = ["InterleavingTracer", "Invoker", "body_without_run"]

_PRIVATE = "__endoscope_"
_ABSENT = object()

# Traces whose own code runs now, in this thread, before their model does
# (`with model.trace() as tracer:` outside its invokes), innermost last.
_BODIES: ContextVar[tuple[InterleavingTracer, ...]] = ContextVar("endoscope_bodies", default=())


def body_without_run(model: NNsight) -> InterleavingTracer | None:
    """The trace of ``model`` whose code outside invokes runs now, if any: a read of
    a module value there cannot be served (the model has not started)."""
    for tracer in reversed(_BODIES.get()):
        if tracer.model._root is model:
            return tracer
    return None


class Invoker(Tracer):
    """One input (or none) and the intervention code that goes with it.

    Created by :meth:`InterleavingTracer.invoke`; its body is compiled when the
    ``with`` ends and runs later, beside the batched forward pass.
    """

    def __init__(self, tracer: InterleavingTracer, *inputs: Any, **kwargs: Any) -> None:
        super().__init__(*inputs, backend=tracer._defer, **kwargs)
        self.tracer = tracer
        self.mediator: Mediator | None = None
        self.index = 0  # position among the trace's invokes
        self._received: dict[str, Any] = {}  # what _switch_pull last wrote, per name
        # Names this body may read before an earlier invoke assigned them (compiled
        # to call before_read), and those of them it no longer needs to wait for.
        self._awaits: frozenset[str] = frozenset()
        self._ready: set[str] = set()
        # What this invoke assigned, of names a later invoke awaits.
        self._published: dict[str, Any] = {}
        # The last wait: (name, invoke waited for, provider before, provider after).
        self._waited: tuple[str, int, str | None, str | None] | None = None

    @property
    def has_input(self) -> bool:
        """Whether this invoke brings inputs to the batch."""
        return bool(self.args or self.kwargs)

    def _function_globals(self) -> dict[str, Any]:
        info = self._require_info()
        shared = self.tracer._shared_globals(info.frame.f_globals)
        for name in info.block.names:
            # An earlier block's placeholder for a variable it did not save: here a
            # read of it is a read of a variable no invoke has assigned yet.
            if type(shared.get(name)) is UnsavedName:
                del shared[name]
        return shared

    def push(self, state: Any) -> None:
        self.tracer._publish(state, self)
        super().push(state)

    def guarded_reads(self) -> frozenset[str]:
        return self._awaits

    def before_read(self, name: str) -> None:
        """Before a read of ``name``, which an earlier invoke may assign: wait until
        the nearest such invoke has assigned it or has ended, and bind its value
        here, unless this body bound ``name`` itself first.

        Raises:
            NameError: no earlier invoke assigned ``name`` and nothing else defines
                it; or the wait can never end (a deadlock).
        """
        if name in self._ready:
            return
        self._await_name(name)

    def _await_name(self, name: str) -> None:
        frame = _body_frame(self)
        earlier = [
            invoker
            for invoker in self.tracer.invokers[: self.index]
            if invoker.info is not None and name in invoker.info.block.assigned
        ]
        while True:
            if frame is not None and self._bound_here(frame, name):
                break
            value: Any = _ABSENT
            pending: Invoker | None = None
            for candidate in reversed(earlier):  # the nearest earlier invoke first
                if name in candidate._published:
                    value = candidate._published[name]
                    break
                if candidate.mediator is not None and candidate.mediator.alive:
                    pending = candidate
                    break
            if pending is not None:
                assert self.mediator is not None
                interleaver = self.tracer.interleaver
                before = interleaver.provider
                self.mediator.wait(_NameGate(self, pending, name))
                self._waited = (name, pending.index, before, interleaver.provider)
                continue
            if value is not _ABSENT:
                self._bind(frame, name, value)
            elif frame is None or not _defined(frame, name):
                raise _never_assigned(self, name, earlier)
            break
        self._ready.add(name)

    def _bound_here(self, frame: FrameType, name: str) -> bool:
        """Whether this body bound ``name`` itself (not received it from outside)."""
        code = frame.f_code
        if name not in code.co_varnames and name not in code.co_cellvars:
            return False  # read from the trace's shared globals
        current = frame.f_locals.get(name, _ABSENT)
        return (
            current is not _ABSENT
            and current is not self._pulled.get(name, _ABSENT)
            and current is not self._received.get(name, _ABSENT)
        )

    def _bind(self, frame: FrameType | None, name: str, value: Any) -> None:
        if frame is not None and (
            name in frame.f_code.co_varnames or name in frame.f_code.co_cellvars
        ):
            self._received[name] = value
            write_locals(frame, {name: value})
            return
        shared = self.tracer._globals
        if shared is not None and shared.get(name, _ABSENT) is not value:
            shared[name] = value

    def wait_hint(self, requester: str) -> str | None:
        """Why ``requester`` went by unseen, when this invoke waited for a variable."""
        if self._waited is None:
            return None
        name, index, before, after = self._waited
        span = f"from {before} to {after}" if before else f"until {after}"
        return (
            f"This invoke waited for {name!r}, which invoke {index} assigns, {span}; "
            f"{requester} ran meanwhile. One forward pass cannot patch a point with a "
            "value computed after it: compute the value in an earlier trace (saved) "
            f"and patch in a second one, or read {name!r} where the model has not yet "
            "passed the point."
        )

    def transform(self, body: list[ast.stmt], tracer_name: str) -> list[ast.stmt]:
        return end_loops_gracefully(body, tracer_name)

    @staticmethod
    def _loop_ended(loop: Any, error: BaseException) -> bool:
        return loop_ended(loop, error)

    def execute(self, fn: Callable[..., Any]) -> Any:
        try:
            return super().execute(fn)
        except NameError as error:
            self._explain_early_read(error)
            raise

    def _explain_early_read(self, error: NameError) -> None:
        """A variable only a later invoke assigns, read in an earlier one."""
        name = getattr(error, "name", None)
        add_note = getattr(error, "add_note", None)  # Python 3.11+
        if not (add_note and name) or name in self._awaits:
            return
        later = [
            i
            for i in self.tracer.invokers[self.index + 1 :]
            if i.info is not None and name in i.info.block.assigned
        ]
        if later:
            add_note(
                f"{name!r} is assigned by a later invoke (invoke {later[0].index}): an "
                "invoke sees what earlier invokes assign, as if they ran one after "
                "another in the order written, never what later ones do. Assign it in "
                "an earlier invoke, or read it in a later one."
            )


class InterleavingTracer(Tracer):
    """A trace of one forward pass of an NNsight model.

    Args:
        model: the wrapped model.
        *inputs: the model's input for a single-invoke trace; none when the body
            uses ``tracer.invoke(...)``.
        **kwargs: keyword inputs for the model.

    Attributes:
        model: the wrapped model.
        interleaver: coordinates the interventions with the forward pass.
        run_method: name of the model method that runs the batched inputs
            (``"_run"``, i.e. the module's forward; ``LanguageModel.generate``
            sets ``"_generate"``).
        run_kwargs: keyword arguments for that method that are not inputs (not
            batched, the same for every invoke), e.g. ``max_new_tokens``.
    """

    def __init__(self, model: NNsight, *inputs: Any, **kwargs: Any) -> None:
        super().__init__(*inputs, **kwargs)
        self.model = model
        self.mediator: Mediator | None = None
        self.run_method = "_run"
        self.run_kwargs: dict[str, Any] = {}
        self.interleaver = EnvoyInterleaver(
            scheduler=model._make_scheduler(), tracer=self, model=model
        )
        self.invokers: list[Invoker] = []
        self._globals: dict[str, Any] | None = None
        self._publishers: dict[str, int] = {}  # shared name -> invoke that assigned it
        self._awaited: set[str] = set()  # names some invoke may have to wait for
        self._assigned: set[str] = set()  # names the invokes so far may assign
        self._source_globals: dict[str, Any] | None = None
        self._ran = False
        self._output: Any = None
        # The compiled body's code: identifies the call site (NNsight's warm-up memo).
        self._site: Any = None

    # ----------------------------------------------------------------- user API

    def invoke(self, *inputs: Any, **kwargs: Any) -> Invoker:
        """Add an input (or, with none, code that sees the whole batch) to this trace.

        Raises:
            ValueError: called while the model runs (inside another invoke, or in
                the body of ``model.trace(x)``, which is one): as in nnsight 0.8.1.
        """
        if self.interleaver.current is not None:
            raise ValueError(
                "Cannot invoke while the model is already running: this "
                "`tracer.invoke(...)` is inside an invoke (the body of "
                "`with model.trace(x):` is one too), whose code runs beside the model. "
                "Open every invoke directly in the body of `with model.trace() as "
                "tracer:`, one after another."
            )
        if self.args or self.kwargs:
            raise RuntimeError(
                "this trace already has an input (model.trace(x)); to use several "
                "inputs, call model.trace() without one and give each input its own "
                "`with tracer.invoke(x):` block."
            )
        return Invoker(self, *inputs, **kwargs)

    def barrier(self, participants: int) -> Barrier:
        """A barrier that ``participants`` invokes call to wait for each other."""
        return self.interleaver.barrier(participants)

    def stop(self) -> None:
        """End the forward pass here; code after this line in the invoke does not run."""
        mediator = self.interleaver.current
        if mediator is None:
            raise RuntimeError("tracer.stop() can only be called inside the trace's code")
        mediator.stop()

    @property
    def iter(self) -> IterationIndexer:
        """Steps of modules called several times: ``for step in tracer.iter[1:3]:``.

        Inside the loop every read and write means call ``step`` of its module
        (generation step ``step``, or the ``step``-th call of a looped module).
        ``tracer.iter[:]`` runs until the computation ends; code after the loop
        then runs. Index with a step, a slice (no negative values) or a list.
        """
        return IterationIndexer(self)

    def all(self) -> IterationLoop:
        """Every step until the computation ends: ``for step in tracer.all():``."""
        return IterationLoop(self, label="tracer.all()")

    def next(self, step: int = 1) -> InterleavingTracer:
        """Move every later read and write of this invoke ``step`` calls forward.

        ``a = lm.lm_head.output; tracer.next(); b = lm.lm_head.output`` reads
        generation steps 0 and 1.
        """
        mediator = self.interleaver.current
        if mediator is None:
            raise RuntimeError("tracer.next() can only be called inside the trace's code")
        current = mediator.iteration if mediator.iteration is not None else 0
        mediator.iteration = current + step
        return self

    def transform(self, body: list[ast.stmt], tracer_name: str) -> list[ast.stmt]:
        return end_loops_gracefully(body, tracer_name)

    @staticmethod
    def _loop_ended(loop: Any, error: BaseException) -> bool:
        return loop_ended(loop, error)

    @eproperty(key="result", iterate=False)
    def result(self) -> Any:
        """The model's return value (read it inside the trace, like any output)."""

    def cache(self, modules: Any = None, **options: Any) -> Any:
        """Record module values during this trace and return the navigable cache.

        Options: ``device="cpu"``, ``dtype=None``, ``detach=True``,
        ``include_output=True``, ``include_inputs=False``, ``directory=None``
        (stream to safetensors shards), ``append=False`` (add to the cache already in
        ``directory``), ``fsync=True``. See :func:`attach_cache`. Called inside an
        invoke that brings an input, it records that invoke's rows of the batch;
        a kind switched off (``include_inputs=False``, say) reads as ``None``.
        """
        from ._caching import attach_cache

        return SAVED.mark(attach_cache(self, modules, **options))

    # --------------------------------------------------------------- execution

    def _defer(self, invoker: Tracer) -> None:
        """Backend of invokes: compile now, run beside the forward pass later."""
        assert isinstance(invoker, Invoker)
        invoker.index = len(self.invokers)
        invoker._awaits = _awaits(invoker, self._assigned)
        self._awaited.update(invoker._awaits)
        if invoker.info is not None:
            self._assigned |= invoker.info.block.assigned
        fn = invoker.compile()
        self.invokers.append(invoker)
        invoker.mediator = Mediator(
            lambda: invoker.execute(fn),
            name=f"invoke {len(self.invokers) - 1}",
            info=invoker,
        )

    def execute(self, fn: Callable[..., Any]) -> Any:
        model = self.model
        self._site = getattr(fn, "__code__", None)
        if self.args or self.kwargs:
            # model.trace(x): the body itself is the one intervention.
            self.invokers = [self]  # type: ignore[list-item]
            self.mediator = Mediator(lambda: Tracer.execute(self, fn), name="trace", info=self)
            mediators = [self.mediator]
            inputs = [model._prepare_inputs(*self.args, **self.kwargs)]
            groups: list[Any] = [None]
            batch_size = None
        else:
            token = _BODIES.set((*_BODIES.get(), self))
            try:
                Tracer.execute(self, fn)
            finally:
                _BODIES.reset(token)
            if not self.invokers:
                raise ValueError(
                    "this trace has no input: pass one to model.trace(x) or open "
                    "`with tracer.invoke(x):` blocks inside it."
                )
            mediators = [invoker.mediator for invoker in self.invokers]  # type: ignore[misc]
            with_input = [i for i in self.invokers if i.has_input]
            if not with_input:
                raise ValueError(
                    "none of this trace's invokes has an input: give at least one "
                    "`tracer.invoke(x)` an input to run the model on."
                )
            prepared = model._prepare_invokes([(i.args, i.kwargs) for i in with_input])
            try:
                args, kwargs, batch_groups, batch_size = model._batch_inputs(prepared)
            except BatchingError as error:
                raise BatchingError(
                    f"{error} To batch inputs of another kind, subclass NNsight and "
                    "override _batch_inputs(inputs), or run each input in its own trace."
                ) from None
            inputs = [(args, kwargs)]
            group_of = dict(zip([id(i) for i in with_input], batch_groups))
            groups = [group_of.get(id(i)) for i in self.invokers]
            if len(with_input) == 1:
                groups = [None] * len(groups)
        for mediator, group in zip(mediators, groups):
            mediator.batch_group = group
        if len(mediators) > 1:
            for invoker, mediator, (push, pull) in zip(
                self.invokers, mediators, _sharing(self.invokers)
            ):
                # Only invokes that share variables pay for sharing them on
                # every switch (a read then takes the mediator's slower path).
                if push:
                    mediator.push = self._switch_push(invoker)
                if pull:
                    mediator.pull = self._switch_pull(invoker)
        if model._edits:
            # Edits run first: the trace's own code sees the edited values.
            mediators = [edit.mediator(i) for i, edit in enumerate(model._edits)] + mediators
        batcher = TorchBatcher(batch_size) if batch_size is not None and any(groups) else None
        self.interleaver.initialize(mediators, batcher=batcher, tracer=self)
        args, kwargs = inputs[0]
        self._output = model._interleave(self, args, kwargs)
        self._ran = True
        return self._output

    def run_untraced(self) -> Any:
        """Run the model on this tracer's inputs with no block of code (what
        ``trace=False`` does): only the model's edits intervene.

        Returns:
            What the run returned.
        """
        try:
            return self.execute(_no_intervention)
        finally:
            self._release()

    def _release(self) -> None:
        """After the block: drop every link that would make a reference cycle, so a
        finished trace is freed as soon as the user drops it (no cycle collector)."""
        super()._release()
        if self._running:
            return
        for invoker in self.invokers:
            if invoker is not self:
                invoker.mediator = None
                invoker._entered = None
                invoker._published = {}
                invoker._received = {}
                _forget_frame(invoker)
        self.invokers = []
        self._awaited = set()
        self._assigned = set()
        self.mediator = None
        self._entered = None
        self._globals = self._source_globals = None
        interleaver = self.interleaver
        if not interleaver.interleaving:
            for mediator in interleaver.mediators:
                # Its last event may hold an exception whose traceback holds frames
                # that hold this tracer.
                mediator.event = None
            interleaver.initialize([], tracer=None)
            interleaver.open_loops.clear()
            interleaver.ended_loops.clear()
        _forget_frame(self)

    def _provide_result(self, output: Any) -> Any:
        # Nobody waits for it (the common case): nothing to serve, and the run
        # ends next, so no later request could need it marked as gone by.
        if "result" not in self.interleaver.wanted:
            return output
        return type(self).result.provide(self, output)

    # ------------------------------------------------------ shared variables

    def _shared_globals(self, caller_globals: dict[str, Any]) -> dict[str, Any]:
        """The globals every invoke of this trace runs with (one copy per trace)."""
        if self._globals is None or self._source_globals is not caller_globals:
            self._source_globals = caller_globals
            self._globals = dict(caller_globals)
        return self._globals

    def _publish(self, state: Any, invoker: Tracer) -> None:
        """Share what ``invoker`` assigned: a variable it only received from the
        enclosing code (a loop variable, say) is not news to the other invokes."""
        shared = self._globals
        if shared is not None:
            assert isinstance(invoker, Invoker)
            pulled = invoker._pulled
            index = invoker.index
            publishers = self._publishers
            awaited = self._awaited
            for name, value in state.items():
                if not name.startswith(_PRIVATE) and pulled.get(name, _ABSENT) is not value:
                    shared[name] = value
                    publishers[name] = index
                    if awaited and name in awaited:
                        invoker._published[name] = value

    def _switch_push(self, invoker: Invoker) -> Callable[[Mediator], None]:
        def push(mediator: Mediator) -> None:
            frame = _body_frame(invoker)
            if frame is not None:
                self._publish(frame.f_locals, invoker)

        return push

    def _switch_pull(self, invoker: Invoker) -> Callable[[Mediator], None]:
        def pull(mediator: Mediator) -> None:
            # As if the invokes ran one after another in the order written: a
            # variable this invoke received from the enclosing code and did not
            # assign itself takes the value an earlier invoke assigned to it.
            shared = self._globals
            publishers = self._publishers
            if shared is None or not publishers:
                return
            frame = _body_frame(invoker)
            if frame is None:
                return
            current = frame.f_locals
            pulled = invoker._pulled
            index = invoker.index
            received = invoker._received
            stale = {}
            for name, value in pulled.items():
                if publishers.get(name, index) >= index:
                    continue
                mine = current.get(name, _ABSENT)
                if (mine is value or mine is received.get(name, _ABSENT)) and (
                    shared[name] is not mine
                ):
                    stale[name] = shared[name]
            if stale:
                received.update(stale)
                write_locals(frame, stale)

        return pull


def _sharing(invokers: list[Invoker]) -> list[tuple[bool, bool]]:
    """Per invoke, whether it publishes its variables when it switches to the model
    (another invoke may read one it assigns) and whether it takes earlier invokes'
    values when it switches back (it may read one an earlier invoke assigns).

    Judged from the bodies' text (:meth:`CapturedBlock.may_share_with`), erring
    towards sharing. Invokes opened by one call site (a loop over prompts) share
    their block, so pairs are judged per distinct block: linear in the invokes.
    """
    blocks = [invoker.info.block if invoker.info is not None else None for invoker in invokers]
    # Every distinct block once (None: an invoke whose text is unknown), how often.
    uses: dict[int, int] = {}
    distinct: list[Any] = []
    for block in blocks:
        key = id(block)
        if key not in uses:
            uses[key] = 0
            distinct.append(block)
        uses[key] += 1
    pushes: dict[int, bool] = {}
    shares = []
    earlier: list[Any] = []  # distinct blocks before this invoke
    seen: set[int] = set()
    for block in blocks:
        key = id(block)
        if block is None:
            push = pull = True
        else:
            known = pushes.get(key)
            if known is None:
                # Another invoke: any block but this one's, or this one's if it repeats.
                known = pushes[key] = any(
                    other is None or block.may_share_with(other)
                    for other in distinct
                    if other is not block or uses[key] > 1
                )
            push = known
            pull = any(other is None or other.may_share_with(block) for other in earlier)
        shares.append((push, pull))
        if key not in seen:
            seen.add(key)
            earlier.append(block)
    return shares


def _awaits(invoker: Invoker, assigned: set[str]) -> frozenset[str]:
    """The names ``invoker``'s body may read before binding them itself that an
    earlier invoke may assign (``assigned``: what the earlier ones' bodies may
    bind): its reads of them wait for that invoke."""
    if invoker.info is None or not assigned:
        return frozenset()
    return frozenset(
        name for name in invoker.info.block.reads_first & assigned if not name.startswith(_PRIVATE)
    )


class _NameGate:
    """What a later invoke waits for: an earlier invoke to assign ``name``, or end."""

    __slots__ = ("candidate", "name", "waiter")

    def __init__(self, waiter: Invoker, candidate: Invoker, name: str) -> None:
        self.waiter = waiter
        self.candidate = candidate
        self.name = name

    def __repr__(self) -> str:
        return f"{self.name!r} from invoke {self.candidate.index}"

    def ready(self) -> bool:
        candidate = self.candidate
        mediator = candidate.mediator
        return self.name in candidate._published or mediator is None or not mediator.alive

    def never(self, mediator: Mediator) -> NameError:
        name, candidate = self.name, self.candidate
        other = candidate.mediator
        index = candidate.index
        if other is not None and other.at_barrier:
            why = (
                f"invoke {index} waits at a barrier this invoke can only reach after "
                f"the read, so neither can go on (a deadlock). Call the barrier in this "
                f"invoke before reading {name!r}, or assign {name!r} in invoke {index} "
                "before its barrier call."
            )
        elif other is not None and other.gate is not None:
            why = (
                f"invoke {index} itself waits for {other.gate!r}, which cannot come "
                "(a deadlock). Assign each shared variable before anything waits on "
                "a later one, or move the read after this invoke's own values."
            )
        elif other is not None and other.waiting is not None:
            why = (
                f"the computation ended while invoke {index} still waited for "
                f"{other.waiting}. Check that invoke {index} can reach its assignment."
            )
        else:
            why = f"invoke {index} had not assigned it when the computation ended."
        error = NameError(
            f"name {name!r} is not defined yet: this invoke (invoke "
            f"{self.waiter.index}) waits for {_describe(candidate, name)} to assign "
            f"it, but {why}"
        )
        error.name = name
        return error


def _describe(invoker: Invoker, name: str) -> str:
    info = invoker.info
    if info is None:
        return f"invoke {invoker.index}"
    line = info.block.assignment_line(name)
    where = f", assigned at line {line}" if line is not None else ""
    return f"invoke {invoker.index} (line {info.block.node.lineno}{where})"


def _never_assigned(waiter: Invoker, name: str, earlier: list[Invoker]) -> NameError:
    """The error for a read of ``name`` that no earlier invoke assigned after all."""
    expected = " or ".join(_describe(i, name) for i in reversed(earlier)) or "an earlier invoke"
    error = NameError(
        f"name {name!r} is not defined: this invoke (invoke {waiter.index}) waited for "
        f"{expected} to assign it, but {'it' if len(earlier) < 2 else 'each'} ended "
        f"without assigning it. Make sure {name!r} is assigned on every path (an `if` "
        "that did not run? an error caught?), or define it before the trace."
    )
    error.name = name
    return error


def _defined(frame: FrameType, name: str) -> bool:
    """Whether a read of ``name`` in ``frame`` finds a value (local, global, builtin)."""
    code = frame.f_code
    if name in code.co_varnames or name in code.co_cellvars:
        return frame.f_locals.get(name, _ABSENT) is not _ABSENT
    return name in frame.f_globals or hasattr(builtins, name)


def _no_intervention(*_: Any) -> None:
    """The body of a run without a block (see :meth:`InterleavingTracer.run_untraced`)."""
    return None


def _forget_frame(tracer: Tracer) -> None:
    """Drop ``tracer``'s reference to the caller's frame (which refers back to it)."""
    if tracer.info is not None and tracer.info.frame is not None:
        tracer.info.frame = None  # type: ignore[assignment]


def _body_frame(invoker: Tracer) -> FrameType | None:
    """The running frame of ``invoker``'s compiled body, seen from inside its worker."""
    code = invoker._body_code
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        if frame.f_code is code:
            return frame
        frame = frame.f_back
    return None
