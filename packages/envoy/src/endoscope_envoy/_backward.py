"""Gradients inside a trace: ``with loss.backward(): g = hidden.grad.save()``.

Inside a trace's code, ``tensor.backward(...)`` written as the head of a ``with``
statement does not run at once: it returns a :class:`BackwardTracer`, whose body
is captured like any traced block. When the block ends, the backward pass runs
beside the body, the way a trace's forward runs beside its invokes: each
``x.grad`` the body reads registers a one-shot tensor hook on ``x`` and waits
until the backward pass reaches it; ``x.grad = g`` replaces the gradient for the
rest of the pass. Gradients arrive in reverse order of the forward, so the body
reads the last layer's first.

A value an invoke sees is its rows of the batch (a view of the module's whole
output); its gradient is the same rows of the whole output's gradient, so one
backward pass over the batch serves every invoke.

``tensor.backward()`` anywhere else (outside traces, or not as a ``with`` head)
behaves exactly as in torch. ``Tensor.grad`` is only redirected while a backward
block runs, and only for code running in that block.
"""

from __future__ import annotations

import contextvars
import inspect
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from endoscope_interleaver import Interleaver, Mediator, MissedProviderError
from endoscope_tracing import Tracer, opens_with

from ._tracebacks import drop_computation_frames

if TYPE_CHECKING:
    from ._nnsight import NNsight

__all__ = [
    "BackwardTracer",
    "backward_in_traces",
    "mount_backward",
    "mount_backward_at_import",
    "running_models",
    "unmount_backward",
]

#: What ``Tensor.backward`` was when endoscope was imported: torch's own, or
#: another library's replacement; plain calls outside backward blocks go there.
_ORIGINAL_BACKWARD: Callable[..., Any] = torch.Tensor.backward
_ORIGINAL_GRAD: Any = torch._C.TensorBase.__dict__["grad"]


def _is_torch_own(function: Any) -> bool:
    # By where its code lives, not by name: functools.wraps copies the name.
    code = getattr(function, "__code__", None)
    return code is not None and code.co_filename == torch._tensor.__file__


def _find_torch_backward(found: Callable[..., Any]) -> Callable[..., Any]:
    """torch's own ``Tensor.backward`` behind ``found``: a replacement made with
    functools.wraps (nnsight's) leads to it; any other is ``found`` itself."""
    try:
        unwrapped = inspect.unwrap(found, stop=_is_torch_own)
    except ValueError:  # a loop of __wrapped__
        return found
    return unwrapped if _is_torch_own(unwrapped) else found


#: What a backward block runs: torch's own, not another library's replacement.
_TORCH_BACKWARD = _find_torch_backward(_ORIGINAL_BACKWARD)

# Context-local, not global: several threads may trace at once, and a trace's
# code (on a greenlet or a worker thread) runs in a copy of its trace's context.
#: Models whose trace is running in this context (innermost last); set by NNsight._interleave.
running_models: contextvars.ContextVar[tuple[NNsight, ...]] = contextvars.ContextVar(
    "endoscope_running_models", default=()
)
#: Backward blocks whose pass is running in this context (innermost last).
_running_backwards: contextvars.ContextVar[tuple[BackwardTracer, ...]] = contextvars.ContextVar(
    "endoscope_running_backwards", default=()
)


class _Patch:
    """A class attribute of torch's replaced while any user in any thread needs it
    (counted), and put back when the last one is done. A context manager; one
    ``with`` per user (every trace enters one: no generator frame)."""

    def __init__(self, owner: Any, name: str, value: Any) -> None:
        self.owner = owner
        self.name = name
        self.value = value
        self._lock = threading.Lock()
        self._users = 0
        # What to put back: None when nothing was replaced, _ABSENT when the
        # owner had no attribute of its own (it is deleted again).
        self._outer: Any = None

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                outer = self.owner.__dict__.get(self.name, _ABSENT)
                self._outer = None if outer is self.value else outer
                if self._outer is not None:
                    setattr(self.owner, self.name, self.value)
            self._users += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._outer is not None:
                if self._outer is _ABSENT:
                    delattr(self.owner, self.name)
                else:
                    setattr(self.owner, self.name, self._outer)
                self._outer = None


_ABSENT: Any = object()


def _current_model() -> NNsight | None:
    """The model whose trace code is running in this context right now, if any."""
    for model in reversed(running_models.get()):
        interleaver = model._root._interleaver
        if interleaver is not None and interleaver.current is not None:
            return model
    return None


def _backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    if running_models.get():
        model = _current_model()
        if model is not None:
            caller = sys._getframe(1)
            if opens_with(caller):
                return BackwardTracer(model, self, *args, **kwargs)
    return _ORIGINAL_BACKWARD(self, *args, **kwargs)


_backward.__doc__ = _ORIGINAL_BACKWARD.__doc__
_backward.__wrapped__ = _ORIGINAL_BACKWARD  # type: ignore[attr-defined]


_BACKWARD_PATCH = _Patch(torch.Tensor, "backward", _backward)


def backward_in_traces() -> _Patch:
    """A context manager for a trace's run: ``Tensor.backward`` is ours meanwhile
    (another library loaded later may have patched over it; ours falls back to
    torch's own), in every thread, until the last trace running ends."""
    return _BACKWARD_PATCH


def mount_backward() -> None:
    """Let ``with tensor.backward():`` open a backward block inside traces.

    Installs endoscope's ``Tensor.backward`` for every caller; outside traces it
    hands each call to the ``Tensor.backward`` found when endoscope was imported
    (a replacement that looks at its caller's frame then sees ours: see
    :func:`mount_backward_at_import`).
    """
    torch.Tensor.backward = _backward  # type: ignore[method-assign]


def mount_backward_at_import() -> None:
    """What importing endoscope does: :func:`mount_backward`, unless another library
    replaced torch's ``Tensor.backward`` first.

    Such a replacement (nnsight's, for one) may look at its caller's frame for a
    ``with`` statement; called through ours, its caller would be our frame, and
    ``with t.backward():`` in that library's traces would stop working. So it is
    left in place, and each trace puts ours there while it runs
    (:func:`backward_in_traces`), as it does for one loaded after endoscope.
    """
    if _is_torch_own(torch.Tensor.backward):
        mount_backward()


def unmount_backward() -> None:
    """Put back the ``Tensor.backward`` found when endoscope was imported (torch's
    own, unless another library had replaced it)."""
    torch.Tensor.backward = _ORIGINAL_BACKWARD  # type: ignore[method-assign]


class _GradProperty:
    """``Tensor.grad`` while a backward block runs: the body's reads wait for the
    gradient; everyone else gets torch's attribute."""

    def __get__(self, tensor: Any, owner: type | None = None) -> Any:
        if tensor is None:
            return self
        runs = _running_backwards.get()
        run = runs[-1] if runs else None
        if run is not None and run.interleaver.current is not None:
            return run.read_grad(tensor)
        return _ORIGINAL_GRAD.__get__(tensor, owner)

    def __set__(self, tensor: Any, value: Any) -> None:
        runs = _running_backwards.get()
        run = runs[-1] if runs else None
        if run is not None and run.interleaver.current is not None:
            run.write_grad(tensor, value)
            return
        _ORIGINAL_GRAD.__set__(tensor, value)

    def __delete__(self, tensor: Any) -> None:
        _ORIGINAL_GRAD.__delete__(tensor)


_GRAD_PROPERTY = _GradProperty()
_GRAD_PATCH = _Patch(torch.Tensor, "grad", _GRAD_PROPERTY)


def _rows_of(tensor: torch.Tensor) -> tuple[torch.Tensor, slice | None]:
    """The tensor to hook for ``tensor``'s gradient, and which rows of it are ``tensor``.

    An invoke's value is a dim-0 slice of the batched value: hook the whole
    (which is in the graph) and take the invoke's rows of its gradient.
    """
    base = tensor._base
    if (
        base is None
        or base.dim() != tensor.dim()
        or base.shape[1:] != tensor.shape[1:]
        or base.stride() != tensor.stride()
        or base.dim() == 0
    ):
        return tensor, None
    offset = tensor.storage_offset() - base.storage_offset()
    stride = base.stride(0)
    if stride == 0 or offset % stride:
        return tensor, None
    start = offset // stride
    return base, slice(start, start + tensor.shape[0])


class _BackwardInterleaver(Interleaver):
    def missed_error(
        self, requester: str, asked_at: str | None, mediator: Mediator | None = None
    ) -> MissedProviderError:
        if requester.startswith("grad."):
            return MissedProviderError(
                requester,
                "This gradient never arrived in the backward pass.",
                "Gradients arrive in reverse order of the forward pass: read the last "
                "layer's first. A tensor that the loss does not depend on (or one made "
                "after the loss) gets no gradient.",
            )
        return MissedProviderError(
            requester,
            f"{requester} was requested inside `with ....backward():`, where only "
            "gradients exist: the forward pass has already run.",
            "Read module values before the backward block (h = model.layer.output) and "
            "their gradients inside it (g = h.grad).",
        )


def _run_backward(tracer: Tracer) -> None:
    assert isinstance(tracer, BackwardTracer)
    tracer.run()


class BackwardTracer(Tracer):
    """The block of ``with loss.backward(...):`` inside a trace.

    Args:
        model: the model whose trace is running.
        tensor: what ``backward`` was called on.
        *args, **kwargs: ``Tensor.backward``'s arguments (``gradient``,
            ``retain_graph``, ``create_graph``, ``inputs``).
    """

    def __init__(self, model: NNsight, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, backend=_run_backward, **kwargs)
        self.model = model
        self.tensor = tensor
        self.interleaver = _BackwardInterleaver(scheduler=model._make_scheduler(), tracer=self)

    def run(self) -> None:
        """Run the backward pass beside the captured body (the block's backend)."""
        fn = self.compile()
        mediator = Mediator(lambda: self.execute(fn), name="backward", info=self)
        self.interleaver.initialize([mediator])
        model = self.model._root
        outer = model._interleaver
        # Module reads inside the block go to this interleaver (which explains
        # that only gradients exist here), never to the paused forward's.
        model._interleaver = self.interleaver
        # Before the interleaver starts the body's worker: it runs in a copy of
        # this context.
        token = _running_backwards.set((*_running_backwards.get(), self))
        try:
            with _GRAD_PATCH, self.interleaver:
                _TORCH_BACKWARD(self.tensor, *self.args, **self.kwargs)
        except BaseException as error:
            if drop_computation_frames(error):
                raise error  # with its new traceback
            raise
        finally:
            _running_backwards.reset(token)
            model._interleaver = outer
            # No cycles left behind (interleaver <-> tracer, tracer -> itself, the
            # caller's frame <-> tracer).
            self.interleaver.initialize([], tracer=None)
            self._entered = None
            if self.info is not None:
                self.info.frame = None  # type: ignore[assignment]

    # ------------------------------------------------------------ gradients

    def _provider(self, tensor: torch.Tensor) -> tuple[str, slice | None]:
        hooked, rows = _rows_of(tensor)
        provider = f"grad.{id(hooked)}"
        handle = self.interleaver.handle

        def install() -> Any:
            if not hooked.requires_grad:
                raise RuntimeError(
                    "this tensor does not require grad, so the backward pass gives it no "
                    "gradient; read .grad of values computed from parameters or inputs "
                    "that require grad."
                )
            return hooked.register_hook(lambda grad: handle(provider, grad))

        self.interleaver.ensure_hook(provider, install)
        return provider, rows

    def read_grad(self, tensor: torch.Tensor) -> torch.Tensor:
        """Wait for ``tensor``'s gradient in the running backward pass (body side)."""
        mediator = self.interleaver.current
        assert mediator is not None
        provider, rows = self._provider(tensor)
        grad = mediator.request(provider)
        return grad if rows is None else grad[rows]

    def write_grad(self, tensor: torch.Tensor, value: torch.Tensor) -> None:
        """Replace ``tensor``'s gradient for the rest of the backward pass (body side)."""
        mediator = self.interleaver.current
        assert mediator is not None
        provider, rows = self._provider(tensor)
        if rows is not None:
            whole = mediator.request(provider).clone()
            whole[rows] = value
            value = whole
        mediator.swap(provider, value)
