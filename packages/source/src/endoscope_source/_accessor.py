"""SourceAccessor: one function's injected version and its operations.

A :class:`SourceAccessor` is built once per function (for a module: once per
module, cached on it by :func:`get_or_create_source_accessor`) and shared by
every consumer. It owns:

- ``operations``: ``{name: OperationAccessor}`` in source order, one per call site;
- ``injected``: the rewritten function, which calls each site through its
  operation when the site is hooked and directly otherwise;
- the *active* state: true while any operation is hooked or someone holds a
  :meth:`watch`. A consumer that routes calls through the injected function
  only when it is needed checks :attr:`active` before each call.

Lifetimes: operations hold their accessor weakly and the injected code holds
the operations, so there is no reference cycle; an object that caches its
accessor (``obj.__source_accessor__``) keeps everything alive exactly as long
as itself.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable, Iterator
from types import FunctionType, MethodType, TracebackType
from typing import Any

from ._convert import Conversion, convert
from ._errors import SourceMismatchError
from ._functions import NO_INSTANCE, Target, resolve_target
from ._locate import describe
from ._operation import OperationAccessor
from ._rewrite import CallSite

__all__ = ["SourceAccessor", "Watch", "operation_path"]


def operation_path(path: str, name: str) -> str:
    """Provider path of an operation: ``"<path>.source.<name>"`` (``"source.<name>"`` without a path)."""
    return f"{path}.source.{name}" if path else f"source.{name}"


class Watch:
    """Keeps a :class:`SourceAccessor` active until closed; a context manager.

    Closing twice is harmless; a watch that is garbage collected closes itself.
    """

    __slots__ = ("_accessor", "_counts")

    def __init__(self, accessor: SourceAccessor, counts: bool = False) -> None:
        self._accessor: SourceAccessor | None = accessor
        self._counts = counts

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._accessor is None

    def close(self) -> None:
        """Stop watching."""
        accessor, self._accessor = self._accessor, None
        if accessor is not None:
            accessor._unwatch(self._counts)

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # A forgotten watch must not keep its accessor on the slow path forever.
        if self._accessor is None:
            return
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


class SourceAccessor:
    """Injected version of a function with a hookable operation per call site.

    Args:
        fn: A plain function or lambda, an unbound method (call the accessor
            with the instance first), a bound method (its instance is passed
            for you), a ``staticmethod``/``classmethod`` object, or a function
            decorated with ``functools.wraps``-style wrappers (they are kept).
        path: Dotted prefix of the operations' provider paths, e.g.
            ``"model.h.0"`` gives ``"model.h.0.source.self_c_attn_0"``.

    Raises:
        SourceUnavailableError: The source cannot be read (built-ins, C
            functions, code typed at the interactive prompt).
        SourceMismatchError: The source found does not match the running code.
        UnsupportedFunctionError: ``fn`` is not a function in a supported form.

    Example:
        >>> import math
        >>> def hypot(a, b):
        ...     return math.sqrt(a * a + b * b)
        >>> acc = SourceAccessor(hypot)  # doctest: +SKIP
        >>> acc.operations["math_sqrt_0"].post_hooks.append(lambda v: v * 10)  # doctest: +SKIP
        >>> acc(3, 4)  # doctest: +SKIP
        50.0
    """

    def __init__(self, fn: Callable[..., Any], path: str = "") -> None:
        self.path = path
        self._lock = threading.RLock()
        self._hooked_count = 0
        self._watchers = 0
        self._counters = 0
        self._active = False
        target = resolve_target(fn)
        conversion = convert(target.function)
        self.operations: dict[str, OperationAccessor] = {
            site.name: OperationAccessor(site, operation_path(path, site.name), self)
            for site in conversion.sites
        }
        self._install(target, conversion)

    def _install(self, target: Target, conversion: Conversion) -> None:
        injected = conversion.instantiate(target.function, tuple(self.operations.values()))
        self._target = target
        self._conversion = conversion
        self.injected: FunctionType = target.rewrap(injected) if target.wrappers else injected

    # -- what was injected ------------------------------------------------------

    @property
    def function(self) -> FunctionType:
        """The original function whose source was rewritten (innermost, undecorated)."""
        return self._target.function

    @property
    def given(self) -> FunctionType:
        """The unbound callable the accessor stands for (outermost decorator wrapper)."""
        return self._target.given

    @property
    def instance(self) -> Any:
        """Instance passed first by :meth:`__call__`, for a bound method; else ``NO_INSTANCE``."""
        return self._target.instance

    @property
    def conversion(self) -> Conversion:
        """The shared :class:`Conversion` (source, call sites, rewritten code)."""
        return self._conversion

    @property
    def source(self) -> str:
        """Source text of the function, dedented."""
        return self._conversion.text

    @property
    def filename(self) -> str:
        """File the function is defined in."""
        return self._conversion.filename

    @property
    def first_line(self) -> int:
        """First line of the function in its file."""
        return self._conversion.first_line

    @property
    def sites(self) -> tuple[CallSite, ...]:
        """Call sites in source order."""
        return self._conversion.sites

    # -- state ------------------------------------------------------------------

    @property
    def hooked(self) -> bool:
        """True if any operation has a hook or a pending ``fn_replacement``."""
        return self._hooked_count > 0

    @property
    def watching(self) -> bool:
        """True while some :class:`Watch` from :meth:`watch` is open."""
        return self._watchers > 0

    @property
    def active(self) -> bool:
        """True if hooked or watched: calls should go through :attr:`injected`.

        While active, call sites whose arguments contain other calls check
        their hooks when they call rather than before their arguments run, so
        a hook registered while an inner call runs is honoured.
        """
        return self._active

    @property
    def counting(self) -> bool:
        """True while some :class:`Watch` opened with ``count=True`` is open."""
        return self._counters > 0

    def watch(self, *, count: bool = False) -> Watch:
        """Keep the accessor active until the returned :class:`Watch` is closed.

        A consumer that registers hooks while the function runs (from inside
        other hooks, possibly of other objects) opens a watch for the duration,
        so sites whose arguments contain calls wait until they call to read
        their hook lists.

        Args:
            count: also count every call of every call site, hooked or not, in
                :attr:`OperationAccessor.calls` (calls started) and
                :attr:`OperationAccessor.returns` (calls finished), from zero
                when the first counting watch opens. A consumer that hooks a
                site late learns how many of its calls went by unhooked.
                Unhooked sites then take the slow branch (a few bytecodes).

        Returns:
            A :class:`Watch`; use it as a context manager or call ``close()``.
        """
        with self._lock:
            self._watchers += 1
            if count:
                self._counters += 1
                if self._counters == 1:
                    for op in self.operations.values():
                        op.calls = op.returns = 0
                        op._counted = op._detour = True  # _update_detour, inlined
                    # Every site takes the slow branch already: being active changes
                    # nothing more (what _update_active would loop to find out).
                    self._active = True
                    return Watch(self, count)
            self._update_active()
        return Watch(self, count)

    def _unwatch(self, counted: bool = False) -> None:
        with self._lock:
            self._watchers -= 1
            if not counted:
                self._update_active()
                return
            self._counters -= 1
            if self._counters:
                return  # still watched and counting: nothing changes
            self._active = active = self._hooked_count > 0 or self._watchers > 0
            for op in self.operations.values():
                op._counted = False
                # _update_detour, inlined: this runs for every operation after every run.
                op._detour = True if op._hooked or (active and op.site.nested) else None

    def _hooked_changed(self, op: OperationAccessor) -> None:
        # Called by an operation whose ``hooked`` just flipped, under the shared lock.
        self._hooked_count += 1 if op._hooked else -1
        self._update_active()
        op._update_detour(self._active)

    def _update_active(self) -> None:
        active = self._hooked_count > 0 or self._watchers > 0
        if active != self._active:
            self._active = active
            for op in self.operations.values():
                if op.site.nested:
                    op._update_detour(active)

    def clear_hooks(self) -> None:
        """Drop every hook and pending replacement of every operation."""
        for op in self.operations.values():
            op.clear_hooks()

    # -- calling ----------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the injected function (for an unbound method, pass the instance first)."""
        instance = self._target.instance
        if instance is NO_INSTANCE:
            return self.injected(*args, **kwargs)
        return self.injected(instance, *args, **kwargs)

    def bind(self, instance: Any) -> MethodType:
        """Return the injected function bound to ``instance``, like ``instance.method``."""
        return MethodType(self.injected, instance)

    def rebind(self, fn: Callable[..., Any]) -> None:
        """Re-inject against another function with the same source, keeping all operations.

        Used when the object behind the accessor is replaced (for example a
        module built on the meta device swapped for the loaded one): every
        :class:`OperationAccessor`, its hooks and nested accessors stay valid.

        Args:
            fn: The new function, in any form the constructor accepts.

        Raises:
            SourceMismatchError: ``fn``'s call sites differ from this accessor's.
        """
        target = resolve_target(fn)
        conversion = convert(target.function)
        names = [site.name for site in conversion.sites]
        if names != list(self.operations):
            added = [name for name in names if name not in self.operations]
            missing = [name for name in self.operations if name not in names]
            raise SourceMismatchError(
                f"cannot rebind the accessor of {describe(self.function)} to "
                f"{describe(target.function)}: their call sites differ (new: {added or 'none'}, "
                f"gone: {missing or 'none'}, or a different order); rebind needs a function "
                "with the same source. Build a new SourceAccessor instead."
            )
        with self._lock:
            for op, site in zip(self.operations.values(), conversion.sites):
                op.site = site
                op._update_detour(self._active)
            self._install(target, conversion)

    # -- operations by name -----------------------------------------------------

    def __iter__(self) -> Iterator[str]:
        return iter(self.operations)

    def __len__(self) -> int:
        return len(self.operations)

    def __contains__(self, name: object) -> bool:
        return name in self.operations

    def __getitem__(self, name: str) -> OperationAccessor:
        try:
            return self.operations[name]
        except KeyError:
            raise KeyError(self._unknown(name)) from None

    def __getattr__(self, name: str) -> OperationAccessor:
        operations = self.__dict__.get("operations")
        if operations is not None and not name.startswith("__"):
            op = operations.get(name)
            if op is not None:
                return op  # type: ignore[no-any-return,unused-ignore]
            raise AttributeError(self._unknown(name))
        raise AttributeError(name)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self.operations})

    def _unknown(self, name: str) -> str:
        where = self.path or describe(self.function)
        message = f"{where} has no operation named {name!r}"
        close = difflib.get_close_matches(name, list(self.operations), n=3, cutoff=0.6)
        if close:
            return f"{message}; did you mean {', '.join(map(repr, close))}?"
        return (
            f"{message}; it has {len(self.operations)} operations (print the accessor to list them)"
        )

    # -- copying ------------------------------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        """Copy or pickle as a fresh accessor of the same function and path.

        Hooks are transient and not carried over; this keeps ``copy.deepcopy``
        and pickling of objects that cache an accessor working.
        """
        target = self._target
        given: Callable[..., Any] = target.given
        if target.instance is not NO_INSTANCE:
            given = MethodType(given, target.instance)
        return (type(self), (given, self.path))

    # -- display ----------------------------------------------------------------

    def __str__(self) -> str:
        from ._display import format_accessor

        return format_accessor(self)

    def __repr__(self) -> str:
        path = f" {self.path!r}" if self.path else ""
        fn = self.function
        return f"<SourceAccessor{path} for {fn.__module__}.{fn.__qualname__}, {len(self.operations)} operations>"
