"""Sessions and edits: several traces in one block, and interventions that persist.

``with model.session():`` runs its body at once, like plain Python; the traces
inside it run one after another as usual. Every variable a trace makes flows into
the session's body (saved or not), so a later trace can use an earlier one's
values; only saved values (and the ``as`` target) leave the session.

``with model.edit() as (tracer, edited):`` captures its body without running it. The body
is compiled once and runs, as an extra intervention ahead of the trace's own, in
every later trace of ``edited`` (a copy of the model that shares its modules and
Envoy tree) or, with ``inplace=True``, of the model itself.
"""

from __future__ import annotations

import ast
import weakref
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from endoscope_interleaver import Mediator
from endoscope_tracing import Tracer, write_locals

from ._envoy import Envoy

if TYPE_CHECKING:
    from ._nnsight import NNsight

__all__ = ["EditTracer", "Session"]


class Session(Tracer):
    """The block of ``with model.session():``; runs its body when the block ends.

    Attributes:
        model: the model the session was opened on.
    """

    def __init__(self, model: NNsight, *, backend: Any = None) -> None:
        super().__init__(backend=backend)
        self.model = model


def _keep_edit(tracer: Tracer) -> None:
    assert isinstance(tracer, EditTracer)
    tracer.keep()


class EditTracer(Tracer):
    """The block of ``with model.edit() as (tracer, edited):``; kept for later traces.

    As in nnsight 0.8, the ``as`` target is ``(tracer, edited_copy)``, or the
    tracer alone with ``inplace=True`` (the model itself is the edited one).

    Args:
        model: the model being edited.
        inplace: edit ``model`` itself instead of a copy.
    """

    def __init__(self, model: NNsight, *, inplace: bool = False) -> None:
        super().__init__(backend=_keep_edit)
        target = model if inplace else model._edited_copy()
        self.inplace = inplace
        self._entered = target  # held until the block ends and the user holds it
        # The target keeps this edit; a weak link back avoids a cycle.
        self._target = weakref.ref(target)
        self._fn: Callable[..., Any] | None = None
        self._kept: dict[str, tuple[Any, bool]] = {}

    @property
    def target(self) -> NNsight:
        """The model whose traces run this edit."""
        target = self._target()
        if target is None:
            raise ReferenceError("the edited model was garbage-collected")
        return target

    def _enter_value(self) -> Any:
        return self if self.inplace else (self, self.target)

    def keep(self) -> None:
        """Compile the body and attach it to the target (the block's backend)."""
        self._bind_as_target()
        self._fn = self.compile()
        # The body is compiled: do not keep the caller's frame (and its locals) alive.
        if self.info is not None:
            self.info.frame = None  # type: ignore[assignment]
        self.target._edits.append(self)
        self._entered = None
        # The body's variables come back for every run; models and Envoys among
        # them are held weakly (the model holds this edit: no cycle).
        self._kept = {
            name: (weakref.ref(value), True) if isinstance(value, Envoy) else (value, False)
            for name, value in self._pulled.items()
        }
        self._pulled = {}

    def _bind_as_target(self) -> None:
        """``as (tracer, edited)``: the body never runs here, so unpack it now."""
        info = self.info
        if info is None or info.frame is None:
            return
        items = info.node.items
        target = items[-1].optional_vars if items else None
        if not isinstance(target, (ast.Tuple, ast.List)):
            return  # a plain name is bound by the tracing layer already
        value = self._enter_value()
        names = [t.id if isinstance(t, ast.Name) else None for t in target.elts]
        if None in names or not isinstance(value, tuple) or len(value) != len(names):
            raise TypeError(
                "model.edit() binds `as (tracer, edited)` (or `as tracer` with "
                "inplace=True); unpack it into plain names."
            )
        write_locals(info.frame, dict(zip(names, value)))  # type: ignore[arg-type]

    def mediator(self, index: int) -> Mediator:
        """A fresh intervention that runs this edit in one trace."""
        fn = self._fn
        assert fn is not None
        return Mediator(partial(self._run, fn, self.target), name=f"edit {index}", info=self)

    def _run(self, fn: Callable[..., Any], target: NNsight) -> None:
        pulled = {}
        for name, (value, weak) in self._kept.items():
            if weak:
                value = value()
                if value is None:
                    raise ReferenceError(
                        f"the edit uses {name!r}, a model that was garbage-collected"
                    )
            pulled[name] = value
        self._pulled, self._entered = pulled, (self if self.inplace else (self, target))
        try:
            self.execute(fn)
        finally:
            self._pulled, self._entered = {}, None

    def push(self, state: Any) -> None:
        """Edits change the model's values, not the caller's variables."""

    def _release(self) -> None:
        """Keep the pulled variables: the body runs again in every later trace."""
