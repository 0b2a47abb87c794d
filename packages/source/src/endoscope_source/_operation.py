"""OperationAccessor: the hook state of one call site, and the code that runs it.

One accessor exists per call site of a :class:`SourceAccessor`, for the
accessor's whole life; every consumer (several envoys, several traces) that
hooks the site appends to the same lists.

The injected code reads ``op._detour`` before each call: ``None`` means "call
directly" and is the state of every site nobody hooks. It becomes ``True`` when
the site has hooks, and also, while the owning accessor is *active* (some site
hooked, or someone watching), for sites whose callee or arguments contain
other calls: a hook may be registered while those inner calls run (that is how
an interleaved consumer works: it registers the next hook from inside the
previous one), and a detoured site reads its hook lists only when it actually
calls, after its arguments have run.

The hook lists are :class:`HookList` objects: real lists that report when they
become empty or non-empty, so ``_detour`` is kept exact without any work on
the hot path.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from types import BuiltinMethodType, MethodType, ModuleType
from typing import TYPE_CHECKING, Any, SupportsIndex

from ._rewrite import CallSite

if TYPE_CHECKING:
    from ._accessor import SourceAccessor

__all__ = ["HookList", "OperationAccessor", "wrap_operation"]

Inputs = tuple[tuple[Any, ...], dict[str, Any]]
"""What pre-hooks receive and may return: ``(args, kwargs)``."""


class HookList(list):  # type: ignore[type-arg,unused-ignore]
    """A list of hooks that tells its operation when it gains its first hook or loses its last.

    It behaves like a plain ``list`` (append, remove, clear, slicing...), so
    consumers register and drop hooks with ordinary list calls, and a hook can
    remove itself while it runs: the operation iterates over a snapshot.
    """

    __slots__ = ("_owner",)

    def __init__(self, owner: OperationAccessor, hooks: Iterable[Callable[..., Any]] = ()) -> None:
        super().__init__(hooks)
        self._owner = weakref.ref(owner)

    def _changed(self) -> None:
        owner = self._owner()
        if owner is not None:
            owner._refresh()

    def append(self, hook: Callable[..., Any]) -> None:
        super().append(hook)
        self._changed()

    def extend(self, hooks: Iterable[Callable[..., Any]]) -> None:
        super().extend(hooks)
        self._changed()

    def insert(self, index: SupportsIndex, hook: Callable[..., Any]) -> None:
        super().insert(index, hook)
        self._changed()

    def remove(self, hook: Callable[..., Any]) -> None:
        super().remove(hook)
        self._changed()

    def pop(self, index: SupportsIndex = -1) -> Callable[..., Any]:
        hook = super().pop(index)
        self._changed()
        return hook  # type: ignore[no-any-return,unused-ignore]

    def clear(self) -> None:
        super().clear()
        self._changed()

    def __setitem__(self, index: Any, value: Any) -> None:
        super().__setitem__(index, value)
        self._changed()

    def __delitem__(self, index: Any) -> None:
        super().__delitem__(index)
        self._changed()

    def __iadd__(self, hooks: Iterable[Callable[..., Any]]) -> HookList:  # type: ignore[override,misc,unused-ignore]
        super().__iadd__(hooks)
        self._changed()
        return self

    def __imul__(self, count: SupportsIndex) -> HookList:  # type: ignore[override,misc,unused-ignore]
        super().__imul__(count)
        self._changed()
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))


class OperationAccessor:
    """Hook state of one call site inside a source-traced function.

    Hook lists, read live each time the site calls:

    - ``pre_hooks``: each is called with one argument, the tuple
      ``(args, kwargs)`` the callee is about to receive; a non-None return
      (another ``(args, kwargs)`` tuple) replaces it for later hooks and the call.
    - ``post_hooks``: each is called with the callee's return value; a non-None
      return replaces it.
    - ``fn_hooks``: each is called with the callable about to be called; a
      non-None return replaces it (used for recursive source tracing).
    - ``fn_replacement``: a callable used instead of the callee for the next
      call only, then cleared.

    Hooks run in list order over a snapshot, so a hook may remove itself (that
    is how one-shot hooks work). An exception raised by a hook or the callee
    propagates out of the call site unchanged.

    Attributes:
        name: The operation name, e.g. ``"self_c_attn_0"``.
        path: Provider path, ``"<accessor path>.source.<name>"``.
        site: Where the call is (line, columns, source text).
        pre_hooks: See above.
        post_hooks: See above.
        fn_hooks: See above.
        nested: The :class:`SourceAccessor` of the called function, once
            :meth:`source_for` built it (recursive source tracing).
        calls: Calls of this site started since the accessor began counting
            (see :meth:`SourceAccessor.watch`); not updated otherwise.
        returns: Calls of this site finished (after its post-hooks) since then.
        last_callee: What the site called the last time it was called while
            counted (see :meth:`SourceAccessor.watch`), before any hook replaced
            it, a bound method as its function; ``None`` until then and for a
            builtin bound to an object (``tensor.view``: no source, and the
            object is not kept alive). Tells a
            consumer which function a call of a local variable
            (``fn = pick(); fn(x)``) calls.
    """

    __slots__ = (
        "__dict__",
        "__weakref__",
        "_counted",
        "_detour",
        "_fn_replacement",
        "_hooked",
        "_lock",
        "_owner",
        "calls",
        "fn_hooks",
        "last_callee",
        "name",
        "nested",
        "path",
        "post_hooks",
        "pre_hooks",
        "returns",
        "site",
    )

    def __init__(self, site: CallSite, path: str, owner: SourceAccessor | None = None) -> None:
        self.site = site
        self.name = site.name
        self.path = path
        # Read by the injected code before every call: None means "call directly".
        self._detour: bool | None = None
        self._hooked = False
        # Counted while the accessor counts (see SourceAccessor.watch).
        self._counted = False
        self.calls = 0
        self.returns = 0
        self.last_callee: Callable[..., Any] | None = None
        self._fn_replacement: Callable[..., Any] | None = None
        # Called for the accessor: a weak reference, or a stand-in answering None.
        self._owner: Callable[[], SourceAccessor | None] = (
            weakref.ref(owner) if owner is not None else _no_owner
        )
        self._lock = owner._lock if owner is not None else threading.RLock()
        self.pre_hooks = HookList(self)
        self.post_hooks = HookList(self)
        self.fn_hooks = HookList(self)
        self.nested: SourceAccessor | None = None

    # -- state ----------------------------------------------------------------

    @property
    def accessor(self) -> SourceAccessor | None:
        """The :class:`SourceAccessor` this operation belongs to (None once it is gone)."""
        return self._owner()

    @property
    def hooked(self) -> bool:
        """True if any hook list is non-empty or a ``fn_replacement`` is pending."""
        return self._hooked

    @property
    def fn_replacement(self) -> Callable[..., Any] | None:
        """A callable to use instead of the callee for the next call only."""
        return self._fn_replacement

    @fn_replacement.setter
    def fn_replacement(self, value: Callable[..., Any] | None) -> None:
        self._fn_replacement = value
        self._refresh()

    @property
    def line(self) -> int:
        """File line where the call is shown (the end of its callee)."""
        return self.site.line

    @property
    def text(self) -> str:
        """Source text of the call, e.g. ``"self.c_attn(x)"``."""
        return self.site.text

    def clear_hooks(self) -> None:
        """Drop every hook and any pending ``fn_replacement``."""
        for hooks in (self.pre_hooks, self.post_hooks, self.fn_hooks):
            list.clear(hooks)
        self._fn_replacement = None
        self._refresh()

    def _refresh(self) -> None:
        """Recompute ``hooked`` after a hook list or the replacement changed."""
        with self._lock:
            hooked = bool(
                self.pre_hooks
                or self.post_hooks
                or self.fn_hooks
                or self._fn_replacement is not None
            )
            if hooked == self._hooked:
                return  # so is _detour: the accessor keeps it in step with the rest
            self._hooked = hooked
            owner = self._owner()
            if owner is None:
                self._update_detour(False)
            else:
                owner._hooked_changed(self)

    def _update_detour(self, active: bool) -> None:
        self._detour = (
            True if self._hooked or self._counted or (active and self.site.nested) else None
        )

    # -- calling --------------------------------------------------------------

    def _call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Slow path of a call site: run ``fn`` through the hooks present right now
        (and count the call while the accessor counts, in this frame: every
        operation of a counted forward comes here)."""
        if not self._counted:
            if not self._hooked:
                return fn(*args, **kwargs)
            return self._hooked_call(fn, *args, **kwargs)
        # Nothing that keeps the object called on alive: a bound method keeps its
        # function (its instance is often the object that owns this accessor: a
        # cycle); a builtin bound to an object (``tensor.view``) keeps nothing (no
        # source to trace; the object may be large). Types are checked, not
        # attributes: a torch module answers a missing one by raising in Python
        # (neither type can be subclassed, so isinstance is the exact check).
        if isinstance(fn, MethodType):
            self.last_callee = fn.__func__
        elif isinstance(fn, BuiltinMethodType) and not isinstance(fn.__self__, _UNBOUND_OWNERS):
            self.last_callee = None
        else:
            self.last_callee = fn
        self.calls += 1
        if self._hooked:
            value = self._hooked_call(fn, *args, **kwargs)
        else:
            value = fn(*args, **kwargs)
            if self.post_hooks:
                # Hooked while the callee ran (a consumer served from inside it,
                # e.g. by a module the callee calls): the value is still to come.
                value = self._post(value)
        self.returns += 1
        return value

    def _post(self, value: Any) -> Any:
        for hook in tuple(self.post_hooks):
            new_value = hook(value)
            if new_value is not None:
                value = new_value
        return value

    def _hooked_call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        replacement = self._fn_replacement
        if replacement is not None:
            # Consumed before the call: a consumer may install the next
            # replacement while this one is still running.
            self._fn_replacement = None
            self._refresh()
            fn = replacement
        if self.fn_hooks:
            for hook in tuple(self.fn_hooks):
                new_fn = hook(fn)
                if new_fn is not None:
                    fn = new_fn
        if self.pre_hooks:
            inputs: Inputs = (args, kwargs)
            for hook in tuple(self.pre_hooks):
                new_inputs = hook(inputs)
                if new_inputs is not None:
                    inputs = new_inputs
            args, kwargs = inputs
        value = fn(*args, **kwargs)
        if self.post_hooks:
            value = self._post(value)
        return value

    # -- recursive source tracing ---------------------------------------------

    def source_for(self, fn: Callable[..., Any]) -> SourceAccessor:
        """Return the nested :class:`SourceAccessor` for the function this site calls.

        Built on first use with this operation's path as its path (so nested
        operations are ``<this path>.source.<name>``) and kept in
        :attr:`nested`; a later call with another function of the same source
        (e.g. the same method of another instance) rebinds it, keeping its hooks.

        Args:
            fn: The callee, typically as received by a ``fn_hooks`` entry: a
                function, a bound method or a decorated function.

        Returns:
            The nested accessor.

        Raises:
            SourceError: ``fn`` cannot be source-traced, or has a different
                source from the one already traced at this site.
        """
        from ._accessor import SourceAccessor

        target = fn.__func__ if isinstance(fn, MethodType) else fn
        with self._lock:
            nested = self.nested
            if nested is None:
                nested = SourceAccessor(target, path=self.path)
                self.nested = nested
            elif nested.given is not target:
                nested.rebind(target)
            return nested

    def injected_for(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Return a callable that runs ``fn`` through its nested accessor's injected code.

        A bound method stays bound to its instance. The result is what a
        ``fn_hooks`` entry (or ``fn_replacement``) should return to trace into
        the callee.
        """
        nested = self.source_for(fn)
        if isinstance(fn, MethodType):
            return nested.bind(fn.__self__)
        return nested.injected

    # -- display --------------------------------------------------------------

    def __str__(self) -> str:
        from ._display import format_operation

        return format_operation(self)

    def __repr__(self) -> str:
        state = "hooked" if self._hooked else "unhooked"
        return f"<OperationAccessor {self.path} line {self.site.line} {state}>"


def wrap_operation(fn: Callable[..., Any], op: OperationAccessor) -> Callable[..., Any]:
    """Return a callable that calls ``fn`` through ``op``'s hooks.

    The hook lists are read when the returned callable is called, not when it
    is made, so hooks added in between are honoured.

    Args:
        fn: The callable to run.
        op: The operation whose hooks apply.

    Returns:
        A callable with ``fn``'s call signature.
    """
    if not callable(fn):
        raise TypeError(f"wrap_operation() needs a callable, not {type(fn).__name__}")
    return _Wrapped(op, fn)


class _Wrapped:
    """Callable produced by :func:`wrap_operation`."""

    __slots__ = ("fn", "op")

    def __init__(self, op: OperationAccessor, fn: Callable[..., Any]) -> None:
        self.op = op
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.op._call(self.fn, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<operation {self.op.path} wrapping {self.fn!r}>"


def _no_owner() -> None:
    return None


# What a builtin's __self__ is when it is not bound to an object (``abs``, ``torch.relu``).
_UNBOUND_OWNERS = (ModuleType, type(None))
