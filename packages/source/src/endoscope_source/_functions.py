"""What to inject for a given callable: bound methods, descriptors and decorators.

A :class:`SourceAccessor` accepts a plain function, a bound method (its
instance is remembered and passed first), a ``staticmethod``/``classmethod``
object, or a function decorated with wrappers that follow the
:func:`functools.wraps` convention (``wrapper.__wrapped__ is func``).

Decorators are kept, not stripped: the innermost function is injected and each
wrapper is cloned around the injected one. A clone shares the wrapper's code,
globals and every closure cell except the one holding the wrapped function, so
``@torch.no_grad()``, ``@functools.wraps``-style logging or HF's
``@can_return_tuple`` keep doing their job. A wrapper that cannot be cloned that
way (a C object such as ``functools.lru_cache``, or a function that does not
keep the wrapped function in a closure variable) raises an error that names
both and says how to trace the undecorated function instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from types import (
    BuiltinFunctionType,
    BuiltinMethodType,
    CellType,
    ClassMethodDescriptorType,
    CodeType,
    FunctionType,
    MethodDescriptorType,
    MethodType,
    MethodWrapperType,
    WrapperDescriptorType,
)

from ._errors import SourceUnavailableError, UnsupportedFunctionError
from ._locate import describe

__all__ = ["NO_INSTANCE", "ORIGINAL_ATTR", "Target", "copy_function", "resolve_target"]

ORIGINAL_ATTR = "__endoscope_original__"
"""Set on every injected function (and cloned wrapper): the function it was made from."""

_C_CALLABLES = (
    BuiltinFunctionType,
    BuiltinMethodType,
    ClassMethodDescriptorType,
    MethodDescriptorType,
    MethodWrapperType,
    WrapperDescriptorType,
)


class _NoInstance:
    """Marker for "not a bound method" (None is a valid instance)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_INSTANCE"

    def __bool__(self) -> bool:
        return False


NO_INSTANCE = _NoInstance()


def copy_function(
    fn: FunctionType, code: CodeType, closure: tuple[CellType, ...] | None
) -> FunctionType:
    """Return a new function running ``code`` with ``fn``'s globals, defaults and metadata.

    Default values and the keyword-defaults dict are shared, so a mutable
    default is the same object in both functions; attributes are copied.
    """
    new = FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, closure)
    new.__kwdefaults__ = fn.__kwdefaults__  # the same dict: later edits show in both
    new.__qualname__ = fn.__qualname__
    new.__module__ = fn.__module__
    new.__doc__ = fn.__doc__
    new.__annotations__ = dict(fn.__annotations__)
    new.__dict__.update(fn.__dict__)
    if hasattr(fn, "__type_params__"):  # Python 3.12+
        new.__type_params__ = fn.__type_params__  # type: ignore[attr-defined,unused-ignore]
    return new


@dataclass(frozen=True)
class Target:
    """A callable taken apart into what gets injected and what wraps it.

    Attributes:
        function: The innermost plain function, the one whose source is used.
        wrappers: Decorator wrappers around it, outermost first.
        instance: The instance of a bound method, or :data:`NO_INSTANCE`.
        given: The unbound object that was given (outermost wrapper or function).
    """

    function: FunctionType
    wrappers: tuple[FunctionType, ...]
    instance: object
    given: FunctionType

    def rewrap(self, injected: FunctionType) -> FunctionType:
        """Clone the wrappers around ``injected``, innermost first."""
        inner_old: object = self.function
        inner_new: FunctionType = injected
        for wrapper in reversed(self.wrappers):
            cells = []
            for cell in wrapper.__closure__ or ():
                try:
                    held = cell.cell_contents
                except ValueError:  # an empty cell
                    held = None
                cells.append(CellType(inner_new) if held is inner_old else cell)
            clone = copy_function(wrapper, wrapper.__code__, tuple(cells) or None)
            clone.__wrapped__ = inner_new  # type: ignore[attr-defined]
            setattr(clone, ORIGINAL_ATTR, wrapper)
            inner_old, inner_new = wrapper, clone
        return inner_new


def _holds(wrapper: FunctionType, inner: object) -> bool:
    for cell in wrapper.__closure__ or ():
        try:
            if cell.cell_contents is inner:
                return True
        except ValueError:
            continue
    return False


def _not_a_function(obj: object) -> Exception:
    who = describe(obj)
    if isinstance(obj, _C_CALLABLES):
        return SourceUnavailableError(
            f"cannot read the source of {who}: it is a built-in implemented in C, "
            "which has no Python source to rewrite"
        )
    if isinstance(obj, functools.partial):
        return UnsupportedFunctionError(
            f"{who} is a functools.partial; pass its .func to trace the function itself "
            "(the accessor does not apply the partial's fixed arguments)"
        )
    if isinstance(obj, type):
        return UnsupportedFunctionError(
            f"{who} is a class; pass one of its methods, e.g. {obj.__name__}.__init__ or "
            f"{obj.__name__}.forward"
        )
    if callable(obj) and hasattr(obj, "forward"):
        return UnsupportedFunctionError(
            f"{who} is a callable object with a forward method; use "
            "get_or_create_source_accessor(obj), or pass type(obj).forward"
        )
    if callable(obj):
        call = getattr(type(obj), "__call__", None)  # noqa: B004 - the class's own __call__
        hint = "type(obj).__call__" if hasattr(call, "__code__") else "the Python function it calls"
        return UnsupportedFunctionError(
            f"{who} ({type(obj).__name__}) is not a Python function; pass {hint} instead"
        )
    return UnsupportedFunctionError(f"{who} ({type(obj).__name__}) is not callable")


def resolve_target(obj: Callable[..., object]) -> Target:
    """Take a callable apart into the function to inject, its wrappers and instance.

    Args:
        obj: A function, bound method, ``staticmethod``/``classmethod`` object or
            ``functools.wraps``-style decorated function. An injected function
            made by endoscope stands for its original.

    Returns:
        The :class:`Target`.

    Raises:
        SourceUnavailableError: ``obj`` is implemented in C.
        UnsupportedFunctionError: ``obj`` is not a function, or is wrapped in a
            way that cannot be re-applied around the injected function.
    """
    instance: object = NO_INSTANCE
    current: object = obj
    if isinstance(current, MethodType):
        instance = current.__self__
        current = current.__func__
    if isinstance(current, (staticmethod, classmethod)):
        current = current.__func__
    if isinstance(current, FunctionType):
        # An injected function (say, a fn_replacement seen by a fn hook) stands
        # for the function it was made from.
        current = current.__dict__.get(ORIGINAL_ATTR, current)
    if not isinstance(current, FunctionType):
        wrapped = getattr(current, "__wrapped__", None)
        if wrapped is not None and not isinstance(current, _C_CALLABLES):
            raise UnsupportedFunctionError(
                f"{describe(current)} is a {type(current).__name__} wrapping {describe(wrapped)}; "
                "endoscope cannot re-apply that wrapper around the injected function. Pass "
                "its __wrapped__ to trace the undecorated function (the wrapper will not run)."
            )
        raise _not_a_function(current)
    given = current
    wrappers: list[FunctionType] = []
    while True:
        inner = current.__dict__.get("__wrapped__")
        if inner is None:
            break
        if isinstance(inner, MethodType) or not isinstance(inner, FunctionType):
            raise UnsupportedFunctionError(
                f"{describe(given)} wraps {describe(inner)} ({type(inner).__name__}), which is "
                "not a plain function; pass the function to trace directly"
            )
        if not _holds(current, inner):
            raise UnsupportedFunctionError(
                f"the decorator wrapper {describe(current)} does not keep {describe(inner)} in "
                "a closure variable, so endoscope cannot re-apply it around the injected "
                "function. Pass its __wrapped__ to trace the undecorated function (the "
                "wrapper will not run)."
            )
        wrappers.append(current)
        current = inner
    return Target(function=current, wrappers=tuple(wrappers), instance=instance, given=given)
