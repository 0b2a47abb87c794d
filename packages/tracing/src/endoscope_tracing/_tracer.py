"""The Tracer: capture a ``with`` block, then parse, compile and execute its body.

``__enter__`` finds the user's frame, captures the block (step 1; source lookup
and parsing happen once per call site, step 2) and arranges for the body to be
skipped. ``__exit__`` receives the skip, and hands the tracer to its backend,
which by default compiles the body into a function (step 3) and runs it (step 4)
with the caller's variables pulled in; the body's variables are pushed back at
its end. Subclasses (the envoy's traces and invokes) change what ``execute``
does: run the body beside a model, or defer it.
"""

from __future__ import annotations

import ast
import contextvars
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import Any, ClassVar, Protocol, runtime_checkable

from ._block import CapturedBlock
from ._errors import ExitTracingException
from ._exceptions import clean_exception, install_excepthook
from ._frames import forget_handled_exception, skip_body, user_frame, write_locals
from ._saving import SAVED
from ._source import read_source
from ._unsaved import UnsavedName, UnsavedValueWarning, reassigned_message

__all__ = ["Backend", "ExecutionBackend", "Tracer", "TracerInfo"]

# Call-site cache: code object -> instruction offset of the `with` -> parsed block.
# Keyed by identity: equal code objects from different files compare equal.
_SITES: dict[int, tuple[weakref.ref[CodeType], dict[Any, CapturedBlock]]] = {}
_SITES_LOCK = threading.Lock()

# Tracers whose compiled body is running in this context, innermost last. Used to
# find a nested tracer's parent. Per context, not per process: other threads run
# traces of their own at the same time (possibly of the same call site), and a
# body run on a worker thread or greenlet runs in a copy of its trace's context.
_RUNNING: contextvars.ContextVar[tuple[Tracer, ...]] = contextvars.ContextVar(
    "endoscope_running_tracers", default=()
)
_PRIVATE_PREFIX = "__endoscope_"


@dataclass
class TracerInfo:
    """What capture learned about one run of a traced ``with`` block.

    Attributes:
        source: the body's source lines.
        frame: the frame that ran the ``with`` statement.
        start_line: the body's first line (1-based) in ``filename``.
        node: the ``ast.With`` statement.
        filename: where the code came from (a path, ``<string>``, a cell name, ...).
        cache_key: identifies the call site (code object id, instruction offset).
        block: the parsed, compile-ready block shared by every run of this site.
    """

    source: list[str]
    frame: FrameType
    start_line: int
    node: Any
    filename: str
    cache_key: tuple[int, int]
    block: CapturedBlock = field(repr=False)


@runtime_checkable
class Backend(Protocol):
    """Decides what happens to a captured block when its ``with`` statement ends."""

    def __call__(self, tracer: Tracer, /) -> Any:
        """Process the captured ``tracer`` (typically compile and execute it)."""
        ...


class ExecutionBackend:
    """The default backend: compile the body and run it right away."""

    def __call__(self, tracer: Tracer) -> Any:
        return tracer.execute(tracer.compile())


# Stateless: one serves every tracer that brings no backend of its own.
_EXECUTE = ExecutionBackend()


class Tracer:
    """Captures the body of the ``with`` block it opens and runs it as a function.

    Example:
        >>> with Tracer() as tracer:  # doctest: +SKIP
        ...     total = save(sum(range(10)))
        >>> total  # doctest: +SKIP
        45

    Args:
        *args: kept as ``self.args`` for subclasses.
        backend: what to do with the captured block; defaults to
            :class:`ExecutionBackend` (run it now).
        **kwargs: kept as ``self.kwargs`` for subclasses.

    Attributes:
        keep_unsaved: when ``False`` (the default) only values marked with
            :func:`save`, and the ``as`` target, are written back to the user's
            frame; when ``True`` every variable the body assigns is.
        info: what :meth:`capture` found, set by ``__enter__``.
        parent: the tracer whose block contains this one, if any.
    """

    Info: ClassVar[type[TracerInfo]] = TracerInfo
    keep_unsaved: ClassVar[bool] = False

    def __init__(self, *args: Any, backend: Backend | None = None, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.backend: Backend = backend if backend is not None else _EXECUTE
        self.info: TracerInfo | None = None
        self.parent: Tracer | None = None
        self._entered: Any = self
        self._pulled: dict[str, Any] = {}
        self._body_code: CodeType | None = None
        self._running = False
        self._restore_trace: Callable[[], None] | None = None
        # Variables the body assigned and push did not write to the user's frame
        # (they had a value before: warned about), and whether push bound a
        # placeholder for one that had none.
        self._unsaved: dict[str, None] = {}
        self._placeheld = False

    # -- the with statement -------------------------------------------------------

    def __enter__(self) -> Any:
        frame = user_frame(sys._getframe(1))
        self.capture(frame)
        self._entered = self._enter_value()
        self._restore_trace = skip_body(frame)
        return self._entered

    def _enter_value(self) -> Any:
        """What ``with ... as x`` binds; subclasses may return something else."""
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: Any
    ) -> bool:
        __tracebackhide__ = True  # pytest and IPython hide this frame
        restore, self._restore_trace = self._restore_trace, None
        if restore is not None:
            restore()
        if kind is None or not issubclass(kind, ExitTracingException):
            # The body was not skipped (someone cleared the trace function) or an
            # unrelated error: behave like an ordinary context manager.
            return False
        forget_handled_exception(error)
        info = self._require_info()
        if info.block.as_names:
            # The skip fired before the `as` target was stored; bind it now so it
            # exists whatever the backend does with the body.
            write_locals(info.frame, dict.fromkeys(info.block.as_names[:1], self._entered))
        SAVED.enter()
        succeeded = False
        try:
            self.backend(self)
            succeeded = True
        except BaseException as failure:
            clean_exception(failure, control=error)
            if _RERAISE_KEEPS_CAUGHT_TRACEBACK:
                caught = sys.exc_info()[2]
                if caught is not None and failure.__traceback__ is not caught:
                    caught.tb_next = failure.__traceback__
                install_excepthook()
            raise
        finally:
            try:
                self._settle_unsaved(warn=succeeded)
            finally:
                SAVED.exit()
                self._release()
        return True

    def _release(self) -> None:
        """Drop references to the caller's frame once the block is done."""
        if self.parent is None or not self.parent._running:
            self._pulled = {}

    # -- the four steps -------------------------------------------------------------

    def capture(self, frame: FrameType | None = None) -> TracerInfo:
        """Step 1: find the ``with`` block being entered in ``frame`` and its source.

        The source is read and parsed (step 2, :meth:`parse`) only the first time a
        call site runs; later runs reuse the parsed block.

        Args:
            frame: the frame running the ``with`` statement; defaults to the first
                non-endoscope frame above the caller.

        Raises:
            WithBlockNotFoundError: no source for the block (the message says why).
            UnsupportedBlockError: the block uses ``return``, ``yield`` or the like.
        """
        if frame is None:
            frame = user_frame(sys._getframe(1))
        code, offset = frame.f_code, frame.f_lasti
        entry = _SITES.get(id(code))
        if entry is None or entry[0]() is not code:
            entry = _new_site_entry(code)
        # A tracer class that rewrites bodies gets its own parse of the site.
        transform = type(self).transform
        key = offset if transform is _BASE_TRANSFORM else (offset, transform)
        block = entry[1].get(key)
        if block is None:
            block = entry[1][key] = self.parse(read_source(frame), frame)
        self.info = TracerInfo(
            source=block.source,
            frame=frame,
            start_line=block.start_line,
            node=block.node,
            filename=block.filename,
            cache_key=(id(code), offset),
            block=block,
        )
        self.parent = _running_body(code)
        return self.info

    def parse(self, source_lines: list[str], frame: FrameType) -> CapturedBlock:
        """Step 2: locate the ``with`` statement at ``frame``'s line and extract its body."""
        transform = None if type(self).transform is _BASE_TRANSFORM else self.transform
        return CapturedBlock.from_source(source_lines, frame, transform)

    def transform(self, body: list[ast.stmt], tracer_name: str) -> list[ast.stmt]:
        """Extension point: rewrite the body's statements before they are compiled.

        Called once per call site (the result is cached with the parse), so it may
        be slow; the default changes nothing. Keep the nodes' line numbers (use
        :func:`ast.copy_location`) so tracebacks still point at the user's lines.

        Args:
            body: the statements of the ``with`` block (a fresh copy, free to edit).
            tracer_name: the name under which the compiled body sees this tracer,
                for generated code that calls back into it.

        Returns:
            The statements to compile.
        """
        return body

    def compile(self) -> Callable[..., Any]:
        """Step 3: the body as a function ``fn(tracer, entered, *pulled)``.

        The caller's variables the body uses are pulled now; compiled code is
        cached per call site and set of pulled names.
        """
        info = self._require_info()
        namespace = self.pull()
        pulled = {}
        for name in info.block.pulled_candidates:
            value = namespace.get(name, _ABSENT)
            # A placeholder left by an earlier block stands for an unbound name.
            if value is not _ABSENT and not isinstance(value, UnsavedName):
                pulled[name] = value
        self._pulled = pulled
        return info.block.function(tuple(pulled), self._function_globals(), self.guarded_reads())

    def guarded_reads(self) -> frozenset[str]:
        """Extension point: names whose reads in the body call :meth:`before_read` first.

        Asked once per :meth:`compile`; the default guards nothing, so reads cost
        nothing extra. Bodies compiled with guarded names are cached per set of
        names, like per set of pulled names.
        """
        return frozenset()

    def before_read(self, name: str) -> None:
        """Extension point: called in the body just before each read of a name of
        :meth:`guarded_reads`, at the user's line (an error raised here points
        there). May wait, or bind ``name`` in the body's frame, before the read.
        The default does nothing."""
        return None

    def _function_globals(self) -> dict[str, Any]:
        """The globals the compiled body runs with: the caller's, unless overridden."""
        return self._require_info().frame.f_globals

    def execute(self, fn: Callable[..., Any]) -> Any:
        """Step 4: run the compiled body; its variables are pushed at its end."""
        self._body_code = getattr(fn, "__code__", None)
        self._running = True
        token = _RUNNING.set((*_RUNNING.get(), self))
        try:
            return fn(self, self._entered, *self._pulled.values())
        finally:
            self._running = False
            _RUNNING.reset(token)

    # -- variables in and out ---------------------------------------------------------

    def pull(self) -> Mapping[str, Any]:
        """The caller's variables, as seen from the frame that opened the block."""
        return self._require_info().frame.f_locals

    def push(self, state: Mapping[str, Any]) -> None:
        """Write the body's variables back where they belong.

        Only variables that are new or rebound in the body move. Into a parent
        block that is still running, everything flows (the parent filters when it
        pushes); into a parent that already finished (a deferred body), the
        parent's own push decides; into the user's frame, only saved values and
        the ``as`` target, unless :attr:`keep_unsaved`.

        Args:
            state: the body's ``locals()``.
        """
        info = self._require_info()
        pulled = self._pulled
        changed = {
            name: value
            for name, value in state.items()
            if not name.startswith(_PRIVATE_PREFIX) and pulled.get(name, _ABSENT) is not value
        }
        parent = self.parent
        if parent is not None:
            if parent._running:
                write_locals(info.frame, changed)
            else:
                parent.push(changed)
            return
        if not self.keep_unsaved:
            block = info.block
            keep = block.target_names
            unsaved = self._unsaved
            kept = {}
            namespace = None
            for name, value in changed.items():
                if name in keep or SAVED.keeps(value):
                    kept[name] = value
                    unsaved.pop(name, None)
                elif name != "_":  # a throwaway (`for _ in ...`) is not worth a word
                    if namespace is None:
                        namespace = info.frame.f_locals
                    current = namespace.get(name, _ABSENT)
                    if current is _ABSENT or isinstance(current, UnsavedName):
                        # Unbound before the block: bound to a placeholder now, in
                        # the same write as the saved values (see _settle_unsaved).
                        placeholder = block.placeholders.get(name)
                        if placeholder is None:
                            placeholder = block.placeholders[name] = UnsavedName(
                                name,
                                info.filename,
                                block.assigned_lines.get(name, block.node.lineno),
                            )
                        if current is not placeholder:
                            kept[name] = placeholder
                        unsaved.pop(name, None)
                        self._placeheld = True
                    else:
                        unsaved[name] = None
            changed = kept
        write_locals(info.frame, changed)

    def _settle_unsaved(self, warn: bool) -> None:
        """After the block: explain the variables it assigned without ``save()``.

        A variable that had no value before the block is bound to an
        :class:`UnsavedName` (by :meth:`push`, with the saved values), whose every
        use raises a ``NameError`` saying to save it; one that had a value keeps
        it, with an :class:`UnsavedValueWarning` at the assignment (unless the
        block failed: its error says enough).
        """
        if self._placeheld:
            self._placeheld = False
            install_excepthook()  # uncaught, the NameError shows the user's line last
        unsaved, self._unsaved = self._unsaved, {}
        info = self.info
        if not unsaved or not warn or info is None or info.frame is None:
            return
        frame, block = info.frame, info.block
        reassigned = [(name, block.assigned_lines.get(name, block.node.lineno)) for name in unsaved]
        globals_ = frame.f_globals
        # module_globals lets the warning show the line from a loader's source; 3.12+
        # refuses globals whose __spec__ has no loader (IPython's user namespace), and
        # those lines come from linecache anyway.
        loader = globals_.get("__loader__") or getattr(globals_.get("__spec__"), "loader", None)
        module_globals = globals_ if loader is not None else None
        for name, line in reassigned:
            warnings.warn_explicit(
                reassigned_message(name),
                UnsavedValueWarning,
                info.filename,
                line,
                module=globals_.get("__name__", info.filename),
                registry=globals_.setdefault("__warningregistry__", {}),
                module_globals=module_globals,
            )

    def _require_info(self) -> TracerInfo:
        if self.info is None:
            raise RuntimeError(
                f"{type(self).__name__} has not captured a block yet: use it in a `with` statement."
            )
        return self.info


_ABSENT = object()


def _running_body(code: CodeType) -> Tracer | None:
    """The innermost running tracer whose compiled body is ``code``, if any."""
    running = _RUNNING.get()
    if running:  # only inside a traced block: outside, no loop at all
        for tracer in reversed(running):
            if tracer._body_code is code:
                return tracer
    return None


def _new_site_entry(code: CodeType) -> tuple[weakref.ref[CodeType], dict[Any, CapturedBlock]]:
    key = id(code)

    def forget(_: object) -> None:
        with _SITES_LOCK:
            current = _SITES.get(key)
            if current is not None and current[0]() is None:
                del _SITES[key]

    entry: tuple[weakref.ref[CodeType], dict[Any, CapturedBlock]] = (weakref.ref(code, forget), {})
    with _SITES_LOCK:
        _SITES[key] = entry
    return entry


# 3.10's bare `raise` restores the traceback saved when the error was caught.
_RERAISE_KEEPS_CAUGHT_TRACEBACK = sys.version_info < (3, 11)


_BASE_TRANSFORM = Tracer.transform
