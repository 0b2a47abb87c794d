"""Frame plumbing: which frames are endoscope's, caller locals in and out, body skipping.

Everything here that depends on the CPython version is in this module:

* Writing locals back. From 3.13 ``frame.f_locals`` of a function frame is a
  write-through proxy (PEP 667). Before, it is a snapshot dict that
  ``PyFrame_LocalsToFast`` copies back into the frame's fast slots and cells.
* Telling a call that opens a ``with`` statement from any other call
  (:func:`opens_with`) reads the caller's bytecode: ``SETUP_WITH`` before 3.11,
  ``BEFORE_WITH`` from 3.11.
* Skipping the body. ``__enter__`` installs a trace function on the caller's frame
  with opcode events on, so the very first instruction after ``__enter__`` returns
  (even on a one-line ``with x: body``) raises :class:`ExitTracingException`, which
  lands inside the ``with`` and reaches its ``__exit__``. The previous global and
  frame trace functions are restored before raising, so a debugger or coverage
  running around a trace keeps working.
* Leaving the ``with`` statement's exception handler: ``__exit__`` runs while that
  exception is being handled, so :func:`forget_handled_exception` sets the
  handled exception back through the C API (``PyErr_SetHandledException`` from
  3.11, ``PyErr_SetExcInfo`` before).
"""

from __future__ import annotations

import ctypes
import dis
import sys
import weakref
from collections.abc import Callable, Mapping
from functools import partial
from types import CodeType, FrameType
from typing import Any

from ._errors import ExitTracingException

__all__ = [
    "INTERNAL_MODULES",
    "INTERNAL_PACKAGES",
    "forget_handled_exception",
    "is_internal_frame",
    "opens_with",
    "register_internal_module",
    "register_internal_package",
    "skip_body",
    "user_frame",
    "write_locals",
]

# Top-level package names whose frames count as endoscope's own: skipped when
# looking for the user's frame, hidden from tracebacks unless debugging.
INTERNAL_PACKAGES: set[str] = {"endoscope_tracing"}


def register_internal_package(name: str) -> None:
    """Mark a top-level package's frames as internal.

    Packages that build tracers on top of this one (and may call
    ``Tracer.__enter__`` from their own code) register themselves so capture finds
    the user's frame above theirs and tracebacks hide their frames.

    Args:
        name: the top-level import name, e.g. ``"endoscope_envoy"``.
    """
    INTERNAL_PACKAGES.add(name.partition(".")[0])


# Single modules whose frames count as endoscope's own, for a package that also
# holds code running traces of its own (whose frames must stay "the user's").
INTERNAL_MODULES: set[str] = set()


def register_internal_module(name: str) -> None:
    """Mark one module's frames as internal (not its submodules, not its package).

    For a package that cannot be internal as a whole because some of its modules
    open traces as a user would (a demo job, say): its other modules register
    one by one.

    Args:
        name: the module's ``__name__``, e.g. ``"endoscope._language_model"``.
    """
    INTERNAL_MODULES.add(name)


def is_internal_frame(frame: FrameType) -> bool:
    """Whether ``frame`` runs code of a registered internal package or module."""
    module = frame.f_globals.get("__name__")
    return isinstance(module, str) and (
        module.partition(".")[0] in INTERNAL_PACKAGES or module in INTERNAL_MODULES
    )


# The instruction that starts a ``with`` statement, after its context expression.
_WITH_ENTRIES = frozenset({"SETUP_WITH", "BEFORE_WITH"})
# Per code object: instruction offset -> the name of the instruction that follows.
_NEXT_OP: weakref.WeakKeyDictionary[CodeType, dict[int, str]] = weakref.WeakKeyDictionary()


def opens_with(frame: FrameType | None) -> bool:
    """Whether the call ``frame`` is making now gives a ``with`` statement its
    context manager (``with f(...):``), as opposed to any other use of its value
    (``x = f(...)``).

    A frame that only returns the call's value (``return super().f(...)`` in a
    subclass) passes the question to its caller. Read from the bytecode after
    the current instruction, once per call site.
    """
    while frame is not None:
        code = frame.f_code
        offset = frame.f_lasti
        known = _NEXT_OP.get(code)
        if known is None:
            known = _NEXT_OP[code] = {}
        following = known.get(offset)
        if following is None:
            after = next((i for i in dis.get_instructions(code) if i.offset > offset), None)
            following = known[offset] = after.opname if after is not None else ""
        if following != "RETURN_VALUE":
            return following in _WITH_ENTRIES
        frame = frame.f_back
    return False


def user_frame(frame: FrameType | None) -> FrameType:
    """The first frame at or above ``frame`` that is not endoscope's own."""
    while frame is not None and is_internal_frame(frame):
        frame = frame.f_back
    if frame is None:  # pragma: no cover - only if every frame is internal
        raise RuntimeError("endoscope could not find the frame that opened the trace")
    return frame


if sys.version_info >= (3, 11):
    # Called directly (no wrapper frame per trace); None clears.
    _handle = ctypes.pythonapi["PyErr_SetHandledException"]  # our own function object
    _handle.argtypes = [ctypes.py_object]
    _handle.restype = None

else:
    # 3.10 keeps (type, value, traceback) and the call steals one reference each.
    _set_exc_info = ctypes.pythonapi["PyErr_SetExcInfo"]
    _set_exc_info.argtypes = [ctypes.py_object, ctypes.py_object, ctypes.py_object]
    _set_exc_info.restype = None
    _clear_exc_info = ctypes.pythonapi["PyErr_SetExcInfo"]
    _clear_exc_info.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    _clear_exc_info.restype = None
    _incref = ctypes.pythonapi.Py_IncRef
    _incref.argtypes = [ctypes.py_object]
    _incref.restype = None

    def _handle(exception: BaseException | None) -> None:
        if exception is None:
            _clear_exc_info(None, None, None)  # NULLs
            return
        parts = (type(exception), exception, exception.__traceback__)
        for part in parts:
            _incref(part)
        _set_exc_info(*parts)


def forget_handled_exception(skip: BaseException | None) -> None:
    """Stop handling ``skip`` (the body-skipping exception) in ``__exit__``.

    ``__exit__`` runs inside the ``with`` statement's exception handler, so
    everything it runs (the body, the model) would see ``skip`` as the exception
    being handled: every exception raised there, even one caught right away
    inside C code (``getattr`` with a default, ``hasattr``; a transformers
    forward raises about a hundred), would be created eagerly to get ``skip`` as
    its ``__context__``. Handled instead is what was handled when the ``with``
    started (nothing, or the exception of an ``except`` block around it), as in
    code without a trace; the handler's end restores its own state from its
    stack, so nothing needs putting back.
    """
    if skip is not None:
        _handle(skip.__context__)


if sys.version_info >= (3, 13):

    def write_locals(frame: FrameType, values: Mapping[str, Any]) -> None:
        """Assign ``values`` to variables of ``frame`` (PEP 667 write-through proxy)."""
        if not values:
            return
        proxy = frame.f_locals
        for name, value in values.items():
            proxy[name] = value

else:
    _locals_to_fast = ctypes.pythonapi.PyFrame_LocalsToFast
    _locals_to_fast.argtypes = [ctypes.py_object, ctypes.c_int]
    _locals_to_fast.restype = None

    def write_locals(frame: FrameType, values: Mapping[str, Any]) -> None:
        """Assign ``values`` to variables of ``frame`` (snapshot dict + LocalsToFast)."""
        if not values:
            return
        snapshot = frame.f_locals  # syncs fast slots into the dict first
        snapshot.update(values)
        if snapshot is not frame.f_globals:  # module frames use the dict directly
            _locals_to_fast(frame, 0)


def _pass_through(previous: Any) -> Any:
    """A global trace function that leaves new frames to whatever traced before."""
    if previous is None:
        return _untraced

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        return previous(frame, event, arg)

    return trace


def _untraced(frame: FrameType, event: str, arg: Any) -> None:
    """The global trace function while a body is skipped with no tracer around: new
    frames get no trace function."""
    return None


def _leave(frame: FrameType, event: str, arg: Any) -> Any:
    """The frame trace function that skips a ``with`` body: its first event raises.
    (Opcode events off first; :func:`_restore` puts back what the frame had.)"""
    frame.f_trace_opcodes = False
    raise ExitTracingException()


def _restore(frame: FrameType, local: Any, opcodes: bool, global_: Any) -> None:
    frame.f_trace = local
    frame.f_trace_opcodes = opcodes
    sys.settrace(global_)


def skip_body(frame: FrameType) -> Callable[[], None]:
    """Make the next instruction run in ``frame`` raise :class:`ExitTracingException`.

    Called from ``__enter__`` with the frame of the ``with`` statement; the
    exception then reaches the matching ``__exit__``, which must call the returned
    function first: CPython drops the global trace function when a trace function
    raises, so the previous one is put back there, not here.
    """
    previous_global = sys.gettrace()
    # A partial of module-level functions: no closure cells to make per trace.
    restore = partial(_restore, frame, frame.f_trace, frame.f_trace_opcodes, previous_global)
    frame.f_trace_opcodes = True
    frame.f_trace = _leave
    # Frame-level trace functions only fire while a global one is set.
    sys.settrace(_pass_through(previous_global))
    return restore
