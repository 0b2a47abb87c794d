"""Find the source of a function: its file, its AST node, and proof that they match.

The whole file is parsed (once per file content, cached) rather than the
snippet :func:`inspect.getsource` returns, for three reasons: AST positions are
then real file positions, so compiled code and tracebacks point at the original
lines and columns; the enclosing class is known exactly, which private name
mangling needs; and a lambda is found even when it sits in the middle of a
multi-line expression.

Candidates are the function and lambda nodes starting on the code object's
first line with its name. Each is compiled unchanged in a scaffold (see
:mod:`._scaffold`) and compared with the running code object; the first that
compiles to the same code is the one. If none does, the file no longer holds
the code that is running, and an error says so instead of guessing.
"""

from __future__ import annotations

import ast
import hashlib
import linecache
import os
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from types import CodeType, FunctionType

from ._errors import SourceMismatchError, SourceUnavailableError
from ._scaffold import (
    FunctionNode,
    compile_function,
    module_imports,
    module_scope_names,
    scaffold_qualname,
    strip_signature,
)

__all__ = ["CO_ITERABLE_COROUTINE", "FunctionSource", "describe", "locate"]

# Flags that change what a code object does; others (CO_NESTED, CO_NOFREE...)
# depend on where it was compiled and are not compared.
_SEMANTIC_FLAGS = 0x1 | 0x2 | 0x4 | 0x8 | 0x20 | 0x80 | 0x100 | 0x200
# Set after compiling by types.coroutine; carried over to the injected code.
CO_ITERABLE_COROUTINE = 0x100

_PARSE_CACHE_SIZE = 16


def describe(obj: object) -> str:
    """Name a callable for an error message: ``module.qualname`` and where it lives."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    name = f"{module}.{qualname}" if module and qualname else (qualname or repr(obj))
    code = getattr(obj, "__code__", None)
    if isinstance(code, CodeType):
        return f"{name} ({code.co_filename}:{code.co_firstlineno})"
    return name


@dataclass(frozen=True)
class _ParsedFile:
    tree: ast.Module
    imports: list[ast.stmt]
    module_names: tuple[str, ...]
    # first line of a function (its first decorator for a def) -> candidates,
    # each with the name of the class it was written in (for mangling).
    index: dict[int, list[tuple[FunctionNode, str | None]]]


@dataclass(frozen=True)
class FunctionSource:
    """Where a function's source lives and which AST node it is.

    Attributes:
        filename: The code object's file name (a path or a ``<...>`` name).
        lines: Every line of that file, as :mod:`linecache` holds it.
        node: The function's node in the parsed file. Shared with a cache:
            never mutate it.
        private_name: Name of the class the function was written in, used for
            private name mangling, or None.
        flags: ``__future__`` compiler flags of the original code.
        qualname: The qualified name the function was compiled with, which
            prefixes the qualified names of functions nested in it.
        imports: The module's top-level import statements (for the scaffold).
        module_names: Module-scope names the scaffold mirrors.
    """

    filename: str
    lines: Sequence[str]
    node: FunctionNode
    private_name: str | None
    flags: int
    qualname: str
    imports: Sequence[ast.stmt]
    module_names: tuple[str, ...]

    @property
    def first_line(self) -> int:
        """First line of the function in its file (its first decorator, if any)."""
        node = self.node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.decorator_list:
            return min(node.lineno, node.decorator_list[0].lineno)
        return node.lineno

    @property
    def end_line(self) -> int:
        """Last line of the function in its file."""
        return self.node.end_lineno or self.node.lineno

    def line(self, number: int) -> str:
        """Return line ``number`` (1-based) of the file without its line ending."""
        if 1 <= number <= len(self.lines):
            return self.lines[number - 1].rstrip("\r\n")
        return ""

    def segment(self, node: ast.AST) -> str:
        """Return the exact source text of ``node`` (columns are UTF-8 byte offsets)."""
        start, end = node.lineno, node.end_lineno  # type: ignore[attr-defined]
        col, end_col = node.col_offset, node.end_col_offset  # type: ignore[attr-defined]
        if end is None or end_col is None:
            return ""
        chunks = []
        for number in range(start, end + 1):
            raw = self.line(number).encode("utf-8")
            lo = col if number == start else 0
            hi = end_col if number == end else len(raw)
            chunks.append(raw[lo:hi].decode("utf-8", errors="replace"))
        return "\n".join(chunks)


_cache_lock = threading.Lock()
_parse_cache: OrderedDict[tuple[str, int, str], _ParsedFile] = OrderedDict()


def _parse(filename: str, lines: Sequence[str]) -> _ParsedFile:
    text = "".join(lines)
    key = (filename, len(text), hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest())
    with _cache_lock:
        parsed = _parse_cache.get(key)
        if parsed is not None:
            _parse_cache.move_to_end(key)
            return parsed
    try:
        tree = ast.parse(text, filename=filename)
    except SyntaxError as exc:
        raise SourceMismatchError(
            f"the source file {filename!r} does not parse ({exc.msg}, line {exc.lineno}); "
            "it may have been edited since the code was imported"
        ) from None
    parsed = _ParsedFile(
        tree, module_imports(tree), module_scope_names(text, filename), _index(tree)
    )
    with _cache_lock:
        _parse_cache[key] = parsed
        while len(_parse_cache) > _PARSE_CACHE_SIZE:
            _parse_cache.popitem(last=False)
    return parsed


def _index(tree: ast.Module) -> dict[int, list[tuple[FunctionNode, str | None]]]:
    index: defaultdict[int, list[tuple[FunctionNode, str | None]]] = defaultdict(list)
    # An explicit stack: very long expressions would overflow a recursive walk.
    stack: list[tuple[ast.AST, str | None]] = [(tree, None)]
    while stack:
        node, private = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.lineno
            if node.decorator_list:
                first = min(first, node.decorator_list[0].lineno)
            index[first].append((node, private))
        elif isinstance(node, ast.Lambda):
            index[node.lineno].append((node, private))
        if isinstance(node, ast.ClassDef):
            # Decorators, bases and keywords run in the enclosing scope; only
            # the body is mangled with the class name.
            stack.extend((part, private) for part in (*node.decorator_list, *node.bases))
            stack.extend((kw, private) for kw in node.keywords)
            stack.extend((stmt, node.name) for stmt in node.body)
        else:
            stack.extend((child, private) for child in ast.iter_child_nodes(node))
    return dict(index)


class _CodeComparison:
    """Compares a scaffold-compiled code object with the running one.

    Positions are not compared (they are equal by construction), and neither
    are qualified names: the scaffold's are ``<factory>.<locals>.f...`` where
    the original's are ``C.f...``. On Python 3.10 those names are string
    constants of the enclosing code, so a string that differs only by that
    prefix counts as equal, and the original prefix is recorded.
    """

    def __init__(self, scaffold_qualname: str) -> None:
        self.scaffold_qualname = scaffold_qualname
        self.original_qualname: str | None = None

    def same(self, a: CodeType, b: CodeType, *, top: bool = False) -> bool:
        flags = _SEMANTIC_FLAGS & ~CO_ITERABLE_COROUTINE if top else _SEMANTIC_FLAGS
        if (
            a.co_code != b.co_code
            or a.co_names != b.co_names
            or a.co_varnames != b.co_varnames
            or a.co_cellvars != b.co_cellvars
            or set(a.co_freevars) != set(b.co_freevars)
            or a.co_argcount != b.co_argcount
            or a.co_posonlyargcount != b.co_posonlyargcount
            or a.co_kwonlyargcount != b.co_kwonlyargcount
            or (a.co_flags & flags) != (b.co_flags & flags)
            or len(a.co_consts) != len(b.co_consts)
        ):
            return False
        return all(self._same_const(x, y) for x, y in zip(a.co_consts, b.co_consts))

    def _same_const(self, x: object, y: object) -> bool:
        if isinstance(x, CodeType) or isinstance(y, CodeType):
            return isinstance(x, CodeType) and isinstance(y, CodeType) and self.same(x, y)
        if type(x) is not type(y):
            return False
        if x == y or repr(x) == repr(y):
            return True
        if isinstance(x, str) and isinstance(y, str):
            prefix = self.scaffold_qualname
            if x.startswith(prefix + ".<locals>."):
                suffix = x[len(prefix) :]
                if y.endswith(suffix):
                    original = y[: len(y) - len(suffix)]
                    if self.original_qualname in (None, original):
                        self.original_qualname = original
                        return True
        return False


def _unavailable(fn: FunctionType, filename: str) -> SourceUnavailableError:
    who = describe(fn)
    if filename.startswith("<") and filename.endswith(">"):
        return SourceUnavailableError(
            f"cannot read the source of {who}: it was defined in {filename!r}, and Python keeps "
            "no source text for code typed at the interactive prompt or passed to exec() as a "
            "string. Define the function in a file, or register its text with linecache under "
            f"{filename!r} before compiling it."
        )
    return SourceUnavailableError(
        f"cannot read the source of {who}: the file {filename!r} cannot be read "
        "(was it deleted or moved after the module was imported?)"
    )


def locate(fn: FunctionType) -> FunctionSource:
    """Find the AST node of ``fn`` in its file and check that it matches ``fn.__code__``.

    Args:
        fn: A plain Python function (or lambda).

    Returns:
        The function's :class:`FunctionSource`.

    Raises:
        SourceUnavailableError: The file holding the source cannot be read.
        SourceMismatchError: The file no longer holds the code that runs.
    """
    code = fn.__code__
    filename = code.co_filename
    lines = linecache.getlines(filename, fn.__globals__)
    if not lines:
        raise _unavailable(fn, filename)
    found = _match(fn, filename, lines)
    if found is None and os.path.exists(filename):
        # linecache may hold an older copy of a file that was edited and
        # re-imported since; look at the file as it is now.
        linecache.checkcache(filename)
        fresh = linecache.getlines(filename, fn.__globals__)
        if fresh and fresh != lines:
            lines = fresh
            found = _match(fn, filename, lines)
    if found is None:
        raise SourceMismatchError(
            f"the source of {describe(fn)} does not match the code that is running. Either the "
            "file was edited after it was imported (reload the module), or a tool rewrote the "
            "function's bytecode (pytest rewrites assert statements in test modules: move the "
            "function to a module that is not a test file)."
        )
    node, private, qualname, parsed = found
    return FunctionSource(
        filename=filename,
        lines=lines,
        node=node,
        private_name=private,
        flags=code.co_flags,
        qualname=qualname,
        imports=parsed.imports,
        module_names=parsed.module_names,
    )


def _match(
    fn: FunctionType, filename: str, lines: Sequence[str]
) -> tuple[FunctionNode, str | None, str, _ParsedFile] | None:
    code = fn.__code__
    parsed = _parse(filename, lines)
    lambda_target = code.co_name == "<lambda>"
    for node, private in parsed.index.get(code.co_firstlineno, ()):
        if isinstance(node, ast.Lambda) != lambda_target:
            continue
        if not lambda_target and node.name != code.co_name:  # type: ignore[union-attr]
            continue
        try:
            candidate = compile_function(
                strip_signature(node),
                filename=filename,
                private_name=private,
                freevars=code.co_freevars,
                flags=code.co_flags,
                imports=parsed.imports,
                module_names=parsed.module_names,
            )
        except SyntaxError:
            continue
        comparison = _CodeComparison(scaffold_qualname(node, private, code.co_freevars))
        if comparison.same(candidate, code, top=True):
            qualname = getattr(code, "co_qualname", None) or comparison.original_qualname
            return node, private, qualname or fn.__qualname__, parsed
    return None
