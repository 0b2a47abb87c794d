"""convert(): locate, rewrite and compile a function once; instantiate it per accessor.

Everything that depends only on the function's code (finding and parsing the
source, naming call sites, compiling the rewritten code) happens once per code
object and is cached: twelve transformer blocks of one class share one
:class:`Conversion`. What depends on the accessor (the operation objects the
code refers to) is filled in by :meth:`Conversion.instantiate`, which swaps
placeholder constants for the accessors: a tuple copy, no compiling.

The rewritten code is compiled under the original file name with the
original line and column numbers, so tracebacks, :func:`inspect.getsource`,
debuggers and coverage all point at the real source. The lines the code was
compiled from are kept in :mod:`linecache` (pinned there when they do not come
from a file on disk, e.g. a notebook cell), so tracebacks can always show them.
"""

from __future__ import annotations

import linecache
import os
import textwrap
import threading
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import CellType, CodeType, FunctionType

from ._errors import UnsupportedFunctionError
from ._functions import ORIGINAL_ATTR, copy_function
from ._locate import CO_ITERABLE_COROUTINE, FunctionSource, describe, locate
from ._rewrite import CallSite, FunctionCallWrapper
from ._scaffold import compile_function, scaffold_qualname, strip_signature

__all__ = ["Conversion", "convert"]

# One nonce per process: placeholders cannot collide with the user's strings.
_PLACEHOLDER_PREFIX = f"\x00endoscope-op-{uuid.uuid4().hex}-"


@dataclass(frozen=True, eq=False)
class Conversion:
    """A function's rewritten code, ready to be instantiated for an accessor.

    Attributes:
        source: Where the function's source lives (file, lines, AST node).
        sites: The call sites, in source order.
        code: The rewritten code object, holding placeholder constants where
            the operation accessors go.
    """

    source: FunctionSource
    sites: tuple[CallSite, ...]
    code: CodeType

    @property
    def filename(self) -> str:
        """File the function was defined in."""
        return self.source.filename

    @property
    def first_line(self) -> int:
        """First line of the function (its first decorator, if any)."""
        return self.source.first_line

    @property
    def text(self) -> str:
        """The function's source text, dedented."""
        lines = self.source.lines[self.source.first_line - 1 : self.source.end_line]
        return textwrap.dedent("".join(lines))

    def instantiate(self, fn: FunctionType, operations: Sequence[object]) -> FunctionType:
        """Build the injected function for ``fn`` with the given operation objects.

        Args:
            fn: The original function; the new one shares its globals, closure
                cells, defaults and attributes, so state stays in sync.
            operations: One object per site, in :attr:`sites` order, each with
                the ``_detour`` attribute and ``_call`` method the rewritten
                code uses (normally :class:`OperationAccessor`).

        Returns:
            A function that behaves like ``fn`` with every call site hookable.
        """
        if len(operations) != len(self.sites):
            raise ValueError(f"expected {len(self.sites)} operations, got {len(operations)}")
        by_placeholder = {_placeholder(i): op for i, op in enumerate(operations)}

        def swap(const: object) -> object:
            if type(const) is str and const.startswith(_PLACEHOLDER_PREFIX):
                return by_placeholder[const]
            return const

        code = _map_consts(self.code, swap)
        cells: dict[str, CellType] = dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))
        closure = tuple(cells[name] for name in code.co_freevars)
        injected = copy_function(fn, code, closure or None)
        setattr(injected, ORIGINAL_ATTR, fn)
        return injected


def _placeholder(index: int) -> str:
    return f"{_PLACEHOLDER_PREFIX}{index}"


def _map_consts(
    code: CodeType, swap: Callable[[object], object], qualname: Callable[[str], str] | None = None
) -> CodeType:
    """Return ``code`` with ``swap`` applied to every non-code constant, recursively."""
    changed = False
    consts = []
    for const in code.co_consts:
        new = _map_consts(const, swap, qualname) if isinstance(const, CodeType) else swap(const)
        changed = changed or new is not const
        consts.append(new)
    changes: dict[str, object] = {}
    if changed:
        changes["co_consts"] = tuple(consts)
    if qualname is not None and hasattr(code, "co_qualname"):
        fixed = qualname(code.co_qualname)
        if fixed != code.co_qualname:
            changes["co_qualname"] = fixed
    return code.replace(**changes) if changes else code  # type: ignore[arg-type]


class _CodeCache:
    """Conversions keyed by code object identity, dropped when the code dies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, tuple[weakref.ref[CodeType], Conversion]] = {}

    def get(self, code: CodeType) -> Conversion | None:
        with self._lock:
            entry = self._entries.get(id(code))
        if entry is not None and entry[0]() is code:
            return entry[1]
        return None

    def put(self, code: CodeType, conversion: Conversion) -> None:
        key = id(code)

        def drop(_ref: object, key: int = key) -> None:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and entry[0] is _ref:
                    del self._entries[key]

        with self._lock:
            self._entries[key] = (weakref.ref(code, drop), conversion)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_cache = _CodeCache()


def convert(fn: Callable[..., object]) -> Conversion:
    """Rewrite a function so each call site goes through a hookable operation.

    The result is cached per code object, so converting the same function (or
    another function sharing its code, like the same method on another class
    instance) again is a dictionary lookup.

    Args:
        fn: A plain Python function or lambda (use :class:`SourceAccessor` for
            bound methods and decorated functions).

    Returns:
        The :class:`Conversion`, whose :meth:`~Conversion.instantiate` builds
        runnable functions.

    Raises:
        UnsupportedFunctionError: ``fn`` is not a plain Python function.
        SourceUnavailableError: Its source cannot be read.
        SourceMismatchError: The source found does not match its code.
    """
    if not isinstance(fn, FunctionType):
        raise UnsupportedFunctionError(
            f"convert() needs a plain Python function, not {describe(fn)} "
            f"({type(fn).__name__}); see SourceAccessor for methods and wrapped functions"
        )
    code = fn.__code__
    cached = _cache.get(code)
    if cached is not None:
        return cached
    source = locate(fn)
    wrapper = FunctionCallWrapper(source.node, placeholder=_placeholder, segment=source.segment)
    rewritten = wrapper.rewrite()
    new_code = compile_function(
        strip_signature(rewritten),
        filename=source.filename,
        private_name=source.private_name,
        freevars=code.co_freevars,
        flags=code.co_flags,
        imports=source.imports,
        module_names=source.module_names,
    )
    if code.co_flags & CO_ITERABLE_COROUTINE:  # set by @types.coroutine
        new_code = new_code.replace(co_flags=new_code.co_flags | CO_ITERABLE_COROUTINE)
    scaffold = scaffold_qualname(source.node, source.private_name, code.co_freevars)
    original = source.qualname

    def fix_qualname(name: str) -> str:
        if name == scaffold:
            return original
        if name.startswith(scaffold + ".<locals>."):
            return original + name[len(scaffold) :]
        return name

    def fix_const(const: object) -> object:
        # Python 3.10 keeps nested functions' qualified names as constants.
        if type(const) is str and const.startswith(scaffold + ".<locals>."):
            return fix_qualname(const)
        return const

    new_code = _map_consts(new_code, fix_const, fix_qualname)
    conversion = Conversion(source=source, sites=tuple(wrapper.sites), code=new_code)
    _pin_lines(source)
    _cache.put(code, conversion)
    return conversion


def _pin_lines(source: FunctionSource) -> None:
    """Keep the lines the code was compiled from in linecache for tracebacks.

    Files on disk are left to linecache's usual handling (it re-reads them when
    they change, like for any other code). Sources that exist only in memory
    (a notebook cell, a registered string) are stored with no modification
    time, which ``linecache.checkcache`` never evicts.
    """
    filename = source.filename
    if os.path.exists(filename):
        return
    entry = linecache.cache.get(filename)
    if entry is not None and len(entry) == 4 and entry[1] is None:
        return
    lines = list(source.lines)
    linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
