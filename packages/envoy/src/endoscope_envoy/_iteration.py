"""Iterations: modules called several times in one run (generation steps, loops).

Every call of a module in a run has an index (``.i0``, ``.i1``, ... kept by the
interleaver). Reads mean the first call unless something says otherwise:

- ``for step in tracer.iter[1:3]:`` pins every read in the loop body to call
  ``step``; ``tracer.iter[:]`` / ``tracer.all()`` run until the computation ends;
- ``tracer.next()`` moves every later read of this invoke one call forward;
- ``model.cell.next()`` moves later reads of one module one call forward.

An unbounded loop learns that the computation ended when a read in it is never
served. The read then raises :class:`IterationEnded`; a ``for`` loop over
``tracer.iter[...]`` or ``tracer.all()`` written in a traced block is rewritten
once per call site (:func:`end_loops_gracefully`) to catch exactly that error
and leave the loop, so the code after the loop runs.
"""

from __future__ import annotations

import ast
import itertools
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from endoscope_interleaver import Mediator, MissedProviderError
from endoscope_tracing import Tracer

if TYPE_CHECKING:
    from ._tracer import InterleavingTracer

__all__ = [
    "IterationEnded",
    "IterationIndexer",
    "IterationLoop",
    "end_loops_gracefully",
    "iteration_of",
    "loop_ended",
    "waiting_loop",
]

_LOOP_PREFIX = "__endoscope_loop_"
_ERROR_PREFIX = "__endoscope_error_"


class IterationEnded(MissedProviderError):
    """An unbounded ``tracer.iter[...]`` loop asked for a call that never came.

    Raised at the read inside the loop; a loop written directly as ``for step in
    tracer.iter[...]:`` ends quietly instead.

    Attributes:
        loop: the loop that ran out.
        steps: how many steps of the loop completed.
    """

    def __init__(self, loop: IterationLoop, requester: str) -> None:
        steps = loop.step - loop.start
        super().__init__(
            requester,
            f"{loop.describe()} ran out after {steps} step{'s' if steps != 1 else ''}: "
            f"{requester} never came before the computation ended.",
            "Write the loop as `for step in tracer.iter[...]:` directly in the traced "
            "block so endoscope can end it, or give it a bound (tracer.iter[a:b]).",
        )
        self.loop = loop
        self.steps = steps


def iteration_of(requester: str) -> int | None:
    """``"model.fc.output.i3"`` -> ``3``; ``None`` without an iteration suffix."""
    _, sep, tail = requester.rpartition(".i")
    return int(tail) if sep and tail.isdigit() else None


class IterationLoop(Tracer):
    """The steps of one ``tracer.iter[...]`` loop (iterate over it once).

    ``for step in tracer.iter[...]:`` is the way to use it. nnsight's older block
    form, ``with tracer.iter[...]:`` / ``with tracer.all():``, works too, with a
    ``DeprecationWarning`` (as in nnsight 0.8.1): the block is captured and run
    once per step, its variables carried from step to step.

    Attributes:
        start: the first step.
        stop: the step after the last, or ``None`` to run until the computation ends.
        stride: the distance between steps.
        step: the step the loop is at (the last one it yielded).
    """

    def __init__(
        self,
        tracer: InterleavingTracer,
        start: int = 0,
        stop: int | None = None,
        stride: int = 1,
        steps: tuple[int, ...] | None = None,
        label: str = "tracer.iter[:]",
    ) -> None:
        super().__init__(backend=_run_block_per_step)
        self._entered = None  # Tracer's default, itself, would be a cycle
        if start < 0 or (stop is not None and stop < 0) or stride <= 0:
            raise ValueError(
                f"{label}: iteration steps count calls from 0 forward; negative indices "
                "and strides are not supported because the number of calls is not known "
                "before the computation ends."
            )
        self.tracer = tracer
        self.start = start
        self.stop = stop
        self.stride = stride
        self.steps = steps
        self.step = start
        self.label = label
        self.ended = False

    @property
    def unbounded(self) -> bool:
        """Whether the loop runs until the computation ends."""
        return self.steps is None and self.stop is None

    def describe(self) -> str:
        """How the user wrote the loop, e.g. ``tracer.iter[1:]``."""
        return self.label

    def __repr__(self) -> str:
        return f"<IterationLoop {self.label} at step {self.step}>"

    def __iter__(self) -> Iterator[int]:
        interleaver = self.tracer.interleaver
        mediator = interleaver.current
        if mediator is None:
            raise RuntimeError(
                f"{self.label} can only be looped over inside the trace's code, while the "
                "model runs."
            )
        if self.steps is not None:
            steps: Iterator[int] = iter(self.steps)
        elif self.stop is not None:
            steps = iter(range(self.start, self.stop, self.stride))
        else:
            steps = itertools.count(self.start, self.stride)
        return self._run(mediator, steps)

    def _run(self, mediator: Mediator, steps: Iterator[int]) -> Iterator[int]:
        open_loops = self.tracer.interleaver.open_loops
        stack = open_loops.setdefault(id(mediator), [])
        stack.append(self)
        previous = mediator.iteration
        progress = None
        try:
            for step in steps:
                if self.unbounded:
                    progress = self._check_progress(progress)
                self.step = step
                mediator.iteration = step
                yield step
        finally:
            mediator.iteration = previous
            stack.remove(self)
            if not stack:
                open_loops.pop(id(mediator), None)

    # ------------------------------------------------ the deprecated block form

    def transform(self, body: list[ast.stmt], tracer_name: str) -> list[ast.stmt]:
        return end_loops_gracefully(body, tracer_name)

    @staticmethod
    def _loop_ended(loop: Any, error: BaseException) -> bool:
        return loop_ended(loop, error)

    def _run_block(self) -> None:
        """Run the captured ``with`` block once per step (its backend)."""
        info = self._require_info()
        frame = info.frame
        try:
            globals_ = frame.f_globals
            warnings.warn_explicit(
                f"`with {self.label}:` is deprecated (as in nnsight 0.8.1); write "
                f"`for step in {self.label}:` instead.",
                DeprecationWarning,
                info.filename,
                info.block.node.lineno,
                module=globals_.get("__name__", info.filename),
                registry=globals_.setdefault("__warningregistry__", {}),
            )
            for _ in self:
                # Compiled per step: each step pulls what the last one pushed.
                fn = self.compile()
                try:
                    self.execute(fn)
                except BaseException as error:
                    if loop_ended(self, error):
                        break
                    raise
        finally:
            # No cycle through the body's frame, or through itself, once done.
            info.frame = None  # type: ignore[assignment]
            self._entered = None

    def _check_progress(self, before: int | None) -> int:
        """An unbounded loop ends only through a read that is never served: a step
        that read nothing would make it spin forever without letting the model run."""
        now = self.tracer.interleaver.requests
        if before is not None and now == before:
            raise RuntimeError(
                f"step {self.step} of {self.label} read or wrote no module value, so the "
                "model never moved on and the loop could not end. Every step of an "
                "unbounded loop must use a value of the model (for example a module's "
                ".output); for a fixed set of steps use tracer.iter[a:b]."
            )
        return now


class IterationIndexer:
    """``tracer.iter``: index it with a step, a slice or a list of steps."""

    def __init__(self, tracer: InterleavingTracer) -> None:
        self.tracer = tracer

    def __getitem__(self, spec: int | slice | list[int] | tuple[int, ...]) -> IterationLoop:
        tracer = self.tracer
        if isinstance(spec, slice):
            start = 0 if spec.start is None else spec.start
            stride = 1 if spec.step is None else spec.step
            text = ":".join("" if v is None else str(v) for v in (spec.start, spec.stop))
            if spec.step is not None:
                text += f":{spec.step}"
            return IterationLoop(tracer, start, spec.stop, stride, label=f"tracer.iter[{text}]")
        if isinstance(spec, int):
            return IterationLoop(tracer, spec, spec + 1, label=f"tracer.iter[{spec}]")
        if isinstance(spec, (list, tuple)) and all(isinstance(s, int) for s in spec):
            steps = tuple(spec)
            loop = IterationLoop(
                tracer, min(steps, default=0), steps=steps, label=f"tracer.iter[{list(steps)}]"
            )
            if any(s < 0 for s in steps):
                raise ValueError(f"{loop.label}: iteration steps cannot be negative.")
            return loop
        raise TypeError(
            f"tracer.iter[...] takes a step, a slice or a list of steps, got {type(spec).__name__}."
        )


def _run_block_per_step(block: Tracer) -> None:
    assert isinstance(block, IterationLoop)
    block._run_block()


def loop_ended(loop: Any, error: BaseException) -> bool:
    """Whether ``error`` is ``loop`` running out (the rewritten loop then breaks)."""
    return isinstance(error, IterationEnded) and error.loop is loop


def waiting_loop(
    open_loops: dict[int, list[IterationLoop]], mediator: Mediator | None, requester: str
) -> IterationLoop | None:
    """``mediator``'s innermost loop if it is unbounded, at least one of its steps
    completed and ``requester`` is its current step (a step that may never come)."""
    if mediator is None:
        return None
    stack = open_loops.get(id(mediator))
    if not stack:
        return None
    loop = stack[-1]
    if loop.unbounded and loop.step > loop.start and iteration_of(requester) == loop.step:
        return loop
    return None


def ended_loop_error(
    open_loops: dict[int, list[IterationLoop]], mediator: Mediator | None, requester: str
) -> IterationEnded | None:
    """The error that ends ``mediator``'s innermost unbounded loop, if ``requester``
    is that loop's current step and at least one step completed."""
    loop = waiting_loop(open_loops, mediator, requester)
    if loop is None:
        return None
    loop.ended = True
    return IterationEnded(loop, requester)


# ------------------------------------------------------------- loop rewriting


def _is_iteration(node: ast.expr) -> bool:
    """``<x>.iter[...]`` or ``<x>.all()``."""
    if isinstance(node, ast.Subscript):
        value = node.value
        return isinstance(value, ast.Attribute) and value.attr == "iter"
    if isinstance(node, ast.Call) and not node.args and not node.keywords:
        func = node.func
        return isinstance(func, ast.Attribute) and func.attr == "all"
    return False


class _LoopRewriter(ast.NodeTransformer):
    def __init__(self, tracer_name: str) -> None:
        self.tracer_name = tracer_name
        self.count = 0

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        return node  # a function defined in the block is not the block's loop

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        return node

    def visit_For(self, node: ast.For) -> ast.AST:
        self.generic_visit(node)
        if not _is_iteration(node.iter):
            return node
        number = self.count
        self.count += 1
        loop_name, error_name = f"{_LOOP_PREFIX}{number}", f"{_ERROR_PREFIX}{number}"
        # for <target> in (<loop> := <iter>):
        #     try: <body>
        #     except BaseException as <error>:
        #         if <tracer>._loop_ended(<loop>, <error>): break
        #         raise
        node.iter = ast.NamedExpr(target=ast.Name(id=loop_name, ctx=ast.Store()), value=node.iter)
        ended = ast.Call(
            func=ast.Attribute(
                value=ast.Name(id=self.tracer_name, ctx=ast.Load()),
                attr="_loop_ended",
                ctx=ast.Load(),
            ),
            args=[ast.Name(id=loop_name, ctx=ast.Load()), ast.Name(id=error_name, ctx=ast.Load())],
            keywords=[],
        )
        handler = ast.ExceptHandler(
            type=ast.Name(id="BaseException", ctx=ast.Load()),
            name=error_name,
            body=[ast.If(test=ended, body=[ast.Break()], orelse=[]), ast.Raise()],
        )
        guarded = ast.Try(body=node.body, handlers=[handler], orelse=[], finalbody=[])
        for new in (guarded, handler):
            ast.copy_location(new, node)
        node.body = [guarded]
        ast.fix_missing_locations(node)
        return node


def end_loops_gracefully(body: list[ast.stmt], tracer_name: str) -> list[ast.stmt]:
    """Rewrite ``for ... in <x>.iter[...]`` / ``<x>.all()`` loops in a traced body so
    that the loop's own :class:`IterationEnded` ends it instead of the block."""
    rewriter = _LoopRewriter(tracer_name)
    return [rewriter.visit(statement) for statement in body]
