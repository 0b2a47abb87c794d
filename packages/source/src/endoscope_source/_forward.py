"""Objects with a ``forward`` method: find the real forward, cache one accessor per object.

Libraries replace ``obj.forward`` with wrappers: accelerate stores the original
as ``obj._old_forward`` and installs ``functools.partial(new_forward, obj)``;
``torch.compile`` and ``functools.wraps``-style wrappers expose it as
``__wrapped__``; endoscope's own forward wrapper marks itself with
:data:`TRUE_FORWARD_ATTR`. :func:`resolve_true_forward` peels these off, in
any order and nesting, down to the function that does the actual compute.

Protocol for endoscope's forward wrapper (or any wrapper that wants to be
seen through): set ``wrapper.__endoscope_true_forward__`` to the *name of the
attribute on the object* that holds the real forward (a string, which avoids a
reference cycle between the object and its wrapper), or to the real forward
callable itself.
"""

from __future__ import annotations

import functools
import inspect
import threading
from types import FunctionType, MethodType
from typing import Any

from ._accessor import SourceAccessor
from ._errors import UnsupportedFunctionError
from ._locate import describe

__all__ = [
    "SOURCE_ACCESSOR_ATTR",
    "TRUE_FORWARD_ATTR",
    "get_or_create_source_accessor",
    "resolve_true_forward",
]

SOURCE_ACCESSOR_ATTR = "__source_accessor__"
"""Attribute under which :func:`get_or_create_source_accessor` caches an object's accessor."""

TRUE_FORWARD_ATTR = "__endoscope_true_forward__"
"""Marker on a forward wrapper: where the real forward is (attribute name or callable)."""

_MAX_LAYERS = 64

# Two threads asking for a new object's accessor at once must get the same one
# (hooks added to another would never run); held only while one is built.
_CREATING = threading.Lock()


def _instance_dict(obj: object) -> dict[str, Any]:
    try:
        return vars(obj)
    except TypeError:
        return {}


def resolve_true_forward(obj: object) -> FunctionType:
    """Return the unbound function that computes ``obj.forward``, under any wrappers.

    Peeled off, repeatedly and in any order:

    - a wrapper carrying :data:`TRUE_FORWARD_ATTR`;
    - accelerate's hook: ``obj._old_forward``, when ``obj.forward`` is the
      instance-level wrapper that calls it;
    - ``__wrapped__`` on an instance-level wrapper (``torch.compile``,
      ``functools.wraps``);
    - a bound method of ``obj``, or ``functools.partial(fn, obj)``.

    Decorators on the class's own ``forward`` are kept (the returned function
    may be a decorated one); :class:`SourceAccessor` re-applies them around the
    injected code.

    Args:
        obj: An object with a ``forward`` method, e.g. a torch module.

    Returns:
        A function to call with ``obj`` as its first argument.

    Raises:
        UnsupportedFunctionError: ``obj`` has no forward, or its forward is a
            callable that cannot be traced back to such a function.
    """
    inst = _instance_dict(obj)
    current: Any
    if "forward" in inst:
        current = inst["forward"]
    else:
        current = getattr(obj, "forward", None)
        if current is None:
            raise UnsupportedFunctionError(f"{describe(obj)} has no forward method")
        static = inspect.getattr_static(type(obj), "forward", None)
        if isinstance(static, (staticmethod, classmethod)):
            raise UnsupportedFunctionError(
                f"{type(obj).__name__}.forward is a {type(static).__name__}; source tracing "
                "needs a forward that receives the instance. Use SourceAccessor on it directly."
            )
    seen: set[int] = set()
    for _ in range(_MAX_LAYERS):
        if id(current) in seen:
            break
        seen.add(id(current))
        marker = getattr(current, TRUE_FORWARD_ATTR, None)
        if marker is not None:
            current = getattr(obj, marker) if isinstance(marker, str) else marker
            continue
        if isinstance(current, MethodType) and current.__self__ is obj:
            func = current.__func__
            if isinstance(func, FunctionType):
                return func
            current = func
            continue
        old = inst.get("_old_forward")
        if old is not None and current is inst.get("forward") and old is not current:
            # accelerate: obj.forward = partial(new_forward, obj) calls obj._old_forward.
            current = old
            continue
        wrapped = getattr(current, "__wrapped__", None)
        if wrapped is not None and not isinstance(current, FunctionType):
            current = wrapped
            continue
        if isinstance(current, functools.partial) and current.args and current.args[0] is obj:
            if (
                isinstance(current.func, FunctionType)
                and len(current.args) == 1
                and not current.keywords
            ):
                return current.func
            current = current.func
            continue
        if isinstance(current, FunctionType):
            function: FunctionType = current
            if getattr(type(obj), "forward", None) is function:
                return function
            wrapped = current.__dict__.get("__wrapped__")
            if wrapped is not None:
                current = wrapped
                continue
            raise UnsupportedFunctionError(
                f"the forward of {describe(obj)} is {describe(current)}, a plain function stored "
                "on the instance: it does not receive the instance, so it cannot be traced as "
                "the object's forward. Use SourceAccessor on that function directly."
            )
        break
    raise UnsupportedFunctionError(
        f"cannot find the Python function behind the forward of {describe(obj)} "
        f"(stopped at {describe(current)}, a {type(current).__name__}). Mark endoscope-style "
        f"wrappers with {TRUE_FORWARD_ATTR!r}, or use SourceAccessor on the function directly."
    )


def get_or_create_source_accessor(obj: object, path: str = "") -> SourceAccessor:
    """Return the :class:`SourceAccessor` of ``obj``'s forward, building it once.

    The accessor is stored on the object as :data:`SOURCE_ACCESSOR_ATTR`
    (``obj.__source_accessor__``), so it survives later replacement of
    ``obj.forward`` and is shared by every consumer of the object.

    Args:
        obj: An object with a ``forward`` method (a torch module, typically).
        path: Provider path prefix, used only when the accessor is created.

    Returns:
        The object's accessor. Call it as ``accessor(obj, *args, **kwargs)``.
    """
    accessor = _instance_dict(obj).get(SOURCE_ACCESSOR_ATTR)
    if isinstance(accessor, SourceAccessor):
        return accessor
    with _CREATING:
        accessor = _instance_dict(obj).get(SOURCE_ACCESSOR_ATTR)
        if isinstance(accessor, SourceAccessor):
            return accessor  # built by another thread meanwhile
        accessor = SourceAccessor(resolve_true_forward(obj), path=path)
        try:
            # object.__setattr__ skips custom __setattr__ logic (torch's registers
            # modules and parameters; an accessor is neither).
            object.__setattr__(obj, SOURCE_ACCESSOR_ATTR, accessor)
        except (AttributeError, TypeError):
            raise UnsupportedFunctionError(
                f"cannot store the source accessor on {describe(obj)} (no instance __dict__); "
                "keep the SourceAccessor yourself instead"
            ) from None
    return accessor
