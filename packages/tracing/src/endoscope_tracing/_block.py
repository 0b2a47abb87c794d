"""Parse a ``with`` statement and compile its body into a function, once per call site.

The body becomes ``def <caller name>(tracer, entered, *pulled): ...``:

* ``pulled`` are the caller's variables the body mentions, passed in as parameters
  (fast locals, so closures inside the body capture them as usual);
* the ``as`` target, if any, is assigned ``entered`` first;
* the body's statements follow unchanged, keeping their original line *and
  column* numbers and the caller's filename, so tracebacks, debuggers and nested
  captures see the user's own file;
* the last statement hands ``locals()`` to ``tracer.push``.

Which caller variables exist can differ between runs (a name not yet assigned, a
module global defined later), so a :class:`CapturedBlock` keeps one code object per
set of pulled names; in a loop that is one compile in total.
"""

from __future__ import annotations
import __future__

import ast
import copy
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import CodeType, FrameType, FunctionType
from typing import Any

from ._errors import UnsupportedBlockError, WithBlockNotFoundError

__all__ = ["TRACER_ARG", "CapturedBlock", "find_with_node"]

TRACER_ARG = "__endoscope_tracer__"
ENTERED_ARG = "__endoscope_entered__"
_FUTURE_FLAGS = 0
for _feature in __future__.all_feature_names:
    _FUTURE_FLAGS |= getattr(__future__, _feature).compiler_flag

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
_LOOPS = (ast.For, ast.While, ast.AsyncFor)


def find_with_node(source_lines: list[str], line: int, filename: str) -> ast.With:
    """The ``with`` statement whose header contains ``line``.

    Raises:
        WithBlockNotFoundError: the source does not parse, or has no ``with``
            statement there (the source changed since the code was compiled?).
    """
    try:
        tree = ast.parse("".join(source_lines), filename=filename)
    except SyntaxError as error:
        raise WithBlockNotFoundError(
            f"endoscope could not parse the source of {filename} to find the traced "
            f"`with` block at line {line}: {error.msg} (line {error.lineno}). If the "
            "file was edited after it was imported, re-run it."
        ) from None
    best: ast.With | None = None
    for node in ast.walk(tree):
        if not isinstance(node, ast.With) or not node.body:
            continue
        body_line = node.body[0].lineno
        in_header = node.lineno <= line and (line < body_line or line == node.lineno)
        in_items = any(
            item.context_expr.lineno <= line <= (item.context_expr.end_lineno or line)
            for item in node.items
        )
        if (in_header or in_items) and (best is None or node.lineno >= best.lineno):
            best = node
    if best is None:
        raise WithBlockNotFoundError(
            f"endoscope found no `with` statement at {filename}, line {line}. A tracer "
            "must be entered by a `with` statement (`with model.trace(...):`), not by "
            "calling __enter__ directly. If the file changed after it was loaded, re-run it."
        )
    return best


def _body_lines(source_lines: list[str], node: ast.With) -> list[str]:
    first = node.body[0]
    end = node.end_lineno or first.lineno
    lines = source_lines[first.lineno - 1 : end]
    # Blank out the header when the body shares its line (`with t: x = 1`); columns
    # are UTF-8 byte offsets.
    head = lines[0].encode("utf-8")
    prefix = head[: first.col_offset].decode("utf-8", errors="replace")
    lines[0] = " " * len(prefix) + head[first.col_offset :].decode("utf-8")
    if not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return lines


class _Checker(ast.NodeVisitor):
    """Rejects statements that cannot keep their meaning inside a function."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.loops = 0

    def fail(self, node: ast.AST, what: str, fix: str) -> None:
        lineno = getattr(node, "lineno", None)
        error = UnsupportedBlockError(
            f"{what} cannot be used directly inside a traced `with` block: the block "
            f"runs later as a function of its own. {fix}"
        )
        error.filename, error.lineno = self.filename, lineno
        raise error

    def visit_FunctionDef(self, node: ast.AST) -> None:
        return  # a nested scope may use return/yield/await freely

    visit_AsyncFunctionDef = visit_Lambda = visit_ClassDef = visit_FunctionDef

    def visit_Return(self, node: ast.Return) -> None:
        self.fail(node, "`return`", "Assign the value to a variable and return after the block.")

    def visit_Yield(self, node: ast.AST) -> None:
        self.fail(node, "`yield`", "Collect values in a list and yield them after the block.")

    visit_YieldFrom = visit_Yield

    def visit_Await(self, node: ast.AST) -> None:
        self.fail(node, "`await`", "Await before or after the block.")

    def _loop(self, node: ast.AST) -> None:
        self.loops += 1
        self.generic_visit(node)
        self.loops -= 1

    visit_For = visit_While = visit_AsyncFor = _loop

    def _jump(self, node: ast.AST) -> None:
        if not self.loops:
            kind = "`break`" if isinstance(node, ast.Break) else "`continue`"
            self.fail(
                node,
                f"{kind} aimed at a loop outside the block",
                "Set a flag and test it after the block.",
            )

    visit_Break = visit_Continue = _jump

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id == "super" and not node.args:
            self.fail(node, "Zero-argument `super()`", "Write `super(ClassName, self)` instead.")
        self.generic_visit(node)


def _names_in(nodes: list[ast.stmt]) -> tuple[dict[str, None], set[str], set[str]]:
    """Names the body mentions (in order), and those its own scope declares global/nonlocal."""
    names: dict[str, None] = {}
    declared_global: set[str] = set()
    declared_nonlocal: set[str] = set()
    for statement in nodes:
        for node in ast.walk(statement):
            if isinstance(node, ast.Name):
                names.setdefault(node.id, None)
            elif isinstance(node, ast.arg):
                names.setdefault(node.arg, None)
    # global/nonlocal of the body's own scope (not of nested functions).
    stack: list[ast.AST] = list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Global):
            declared_global.update(node.names)
        elif isinstance(node, ast.Nonlocal):
            declared_nonlocal.update(node.names)
        if not isinstance(node, _SCOPES):
            stack.extend(ast.iter_child_nodes(node))
    return names, declared_global, declared_nonlocal


# Calls that read or write variables by name at run time: which variables such a
# body shares cannot be told from its text.
_INTROSPECTION = frozenset({"exec", "eval", "globals", "locals", "vars", "__import__"})


def _introspection(node: ast.AST) -> bool:
    """A use of a name of :data:`_INTROSPECTION`, or a star import."""
    if isinstance(node, ast.Name):
        return node.id in _INTROSPECTION
    return isinstance(node, ast.alias) and node.name == "*"


_NESTED_SCOPES = (*_SCOPES, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _assigned_in(nodes: list[ast.stmt]) -> tuple[dict[str, int], bool]:
    """Names the body may bind, each with the last line that binds it, and whether
    it introspects (uses a name of :data:`_INTROSPECTION`, or a star import).

    Bindings inside nested functions, classes and comprehensions are their own,
    except what escapes them: the nested scope's name, ``:=`` targets and
    names declared ``global`` or ``nonlocal`` (counted wherever they appear).
    """
    assigned: dict[str, int] = {}
    introspects = False

    def bind(name: str, node: ast.AST) -> None:
        line = getattr(node, "lineno", 0)
        if line >= assigned.get(name, 0):
            assigned[name] = line

    stack: list[ast.AST] = list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, _NESTED_SCOPES):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bind(node.name, node)
            for inner in ast.walk(node):
                if isinstance(inner, ast.NamedExpr) and isinstance(inner.target, ast.Name):
                    bind(inner.target.id, inner)
                elif isinstance(inner, (ast.Global, ast.Nonlocal)):
                    for name in inner.names:
                        bind(name, inner)
                elif _introspection(inner):
                    introspects = True
            continue
        if _introspection(node):
            introspects = True
        elif isinstance(node, ast.Name):
            if not isinstance(node.ctx, ast.Load):
                bind(node.id, node)
        elif isinstance(node, ast.alias):
            bind(node.asname or node.name.split(".")[0], node)
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)):
            if node.name:
                bind(node.name, node)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            bind(node.rest, node)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            for name in node.names:
                bind(name, node)
        stack.extend(ast.iter_child_nodes(node))
    return assigned, introspects


def _reads_first(nodes: list[ast.stmt]) -> frozenset[str]:
    """Names the body may read before binding them itself, erring towards more.

    Statements are followed in order with the set of names surely bound so far;
    a branch, loop or ``try`` binds for what follows only what every way through
    an ``if`` binds. Reads inside nested functions and classes count (they may
    run at once).
    """
    found: set[str] = set()

    def reads(node: ast.AST, bound: set[str]) -> None:
        for inner in ast.walk(node):
            if (
                isinstance(inner, ast.Name)
                and isinstance(inner.ctx, ast.Load)
                and inner.id not in bound
            ):
                found.add(inner.id)

    def binds(node: ast.AST, bound: set[str]) -> None:
        for inner in ast.walk(node):
            if isinstance(inner, ast.Name) and not isinstance(inner.ctx, ast.Load):
                bound.add(inner.id)
            elif isinstance(inner, (ast.MatchAs, ast.MatchStar)) and inner.name:
                bound.add(inner.name)
            elif isinstance(inner, ast.MatchMapping) and inner.rest:
                bound.add(inner.rest)

    def run(statements: list[ast.stmt], bound: set[str]) -> None:
        for statement in statements:
            step(statement, bound)

    def step(statement: ast.stmt, bound: set[str]) -> None:
        if isinstance(statement, ast.AugAssign):
            reads(statement.value, bound)
            if isinstance(statement.target, ast.Name):
                if statement.target.id not in bound:
                    found.add(statement.target.id)
            else:
                reads(statement.target, bound)
        elif isinstance(statement, ast.If):
            reads(statement.test, bound)
            then, other = set(bound), set(bound)
            run(statement.body, then)
            run(statement.orelse, other)
            bound |= then & other
        elif isinstance(statement, (ast.For, ast.AsyncFor)):
            reads(statement.iter, bound)
            inside = set(bound)
            binds(statement.target, inside)
            run(statement.body, inside)
            run(statement.orelse, set(bound))
        elif isinstance(statement, ast.While):
            reads(statement.test, bound)
            run(statement.body, set(bound))
            run(statement.orelse, set(bound))
        elif isinstance(statement, (ast.With, ast.AsyncWith)):
            for item in statement.items:
                reads(item.context_expr, bound)
                if item.optional_vars is not None:
                    binds(item.optional_vars, bound)
            run(statement.body, bound)
        elif isinstance(statement, ast.Try) or type(statement).__name__ == "TryStar":
            run(statement.body, set(bound))  # type: ignore[attr-defined]
            for handler in statement.handlers:  # type: ignore[attr-defined]
                if handler.type is not None:
                    reads(handler.type, bound)
                inside = set(bound)
                if handler.name:
                    inside.add(handler.name)
                run(handler.body, inside)
            run(statement.orelse, set(bound))  # type: ignore[attr-defined]
            run(statement.finalbody, set(bound))  # type: ignore[attr-defined]
        elif isinstance(statement, ast.Match):
            reads(statement.subject, bound)
            for case in statement.cases:
                reads(case.pattern, bound)  # value patterns read names
                inside = set(bound)
                binds(case.pattern, inside)
                if case.guard is not None:
                    reads(case.guard, inside)
                run(case.body, inside)
        else:
            # Reads come before the statement's own bindings (``x = x + 1``).
            reads(statement, bound)
            binds(statement, bound)
            if isinstance(statement, (ast.Import, ast.ImportFrom)):
                bound.update((a.asname or a.name).split(".")[0] for a in statement.names)
            elif isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.add(statement.name)

    run(nodes, set())
    return frozenset(found)


class _GuardReads(ast.NodeTransformer):
    """Route each read of ``names`` in the body's own scope through
    ``tracer.before_read(name)`` first: ``x`` becomes ``tracer.before_read("x") or x``."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def _hook(self, name: str, where: ast.AST) -> ast.expr:
        call = ast.Call(
            func=ast.Attribute(
                value=ast.Name(id=TRACER_ARG, ctx=ast.Load()), attr="before_read", ctx=ast.Load()
            ),
            args=[ast.Constant(value=name)],
            keywords=[],
        )
        for node in ast.walk(call):
            ast.copy_location(node, where)
        return call

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, ast.Load) and node.id in self.names:
            return ast.copy_location(
                ast.BoolOp(op=ast.Or(), values=[self._hook(node.id, node), node]), node
            )
        return node

    def visit_AugAssign(self, node: ast.AugAssign) -> Any:
        self.generic_visit(node)
        target = node.target
        if isinstance(target, ast.Name) and target.id in self.names:
            return [ast.copy_location(ast.Expr(value=self._hook(target.id, target)), node), node]
        return node

    def _scope(self, node: ast.AST) -> ast.AST:
        return node  # a nested scope reads its names when it runs, on its own

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = visit_ClassDef = _scope


class _DropNonlocal(ast.NodeTransformer):
    """``nonlocal x`` in the body refers to the caller's variable, which is pulled."""

    def visit_Nonlocal(self, node: ast.Nonlocal) -> ast.AST:
        return ast.copy_location(ast.Pass(), node)

    def _scope(self, node: ast.AST) -> ast.AST:
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = visit_ClassDef = _scope


def _located(node: ast.AST, lineno: int) -> ast.AST:
    for child in ast.walk(node):
        if "lineno" in child._attributes:
            child.lineno = child.end_lineno = lineno  # type: ignore[attr-defined]
            child.col_offset = child.end_col_offset = 0  # type: ignore[attr-defined]
    return node


@dataclass
class CapturedBlock:
    """One traced ``with`` statement: parsed once, compiled once per pulled-name set.

    Attributes:
        filename: the caller's filename (also used for the compiled code).
        node: the ``with`` statement.
        source: the body's source lines.
        start_line: first line of the body (1-based, in ``filename``).
        names: every name the body mentions, in order of first appearance.
        static_locals: for function frames, the body's names that are the caller's
            local, cell or free variables (fixed per code object); ``None`` for
            module, class and ``exec`` frames, whose namespace is a dict.
        as_names: names bound by the ``as`` target, always pushed back.
        target_names: every name in the ``as`` target (also those of a tuple).
        assigned: names the body may bind (its ``as`` target included), erring
            towards more: what nested functions, classes and comprehensions bind
            is theirs, except names that escape them (``:=``, ``global``,
            ``nonlocal``).
        assigned_lines: for each name of ``assigned``, the last line of the
            body that binds it (the line an unsaved value is reported at).
        introspects: whether the body reads or writes variables by name at run
            time (``exec``, ``eval``, ``globals``, ``locals``, ``vars``,
            ``__import__``, a star import): then ``assigned`` and ``names`` do
            not bound what it shares with other code.
        reads_first: names the body may read before binding them itself (the
            ``as`` target is bound first), erring towards more: which reads
            another body run beside it may have to provide.
    """

    filename: str
    node: ast.With
    source: list[str]
    start_line: int
    names: tuple[str, ...]
    static_locals: tuple[str, ...] | None
    as_names: tuple[str, ...]
    target_names: frozenset[str]
    code_name: str
    qualname: str
    future_flags: int
    assigned: frozenset[str]
    assigned_lines: dict[str, int]
    introspects: bool
    reads_first: frozenset[str]
    _body: list[ast.stmt] = field(repr=False)
    _globals_declared: frozenset[str] = field(repr=False)
    _compiled: dict[tuple[tuple[str, ...], frozenset[str]], CodeType] = field(
        default_factory=dict, repr=False
    )
    #: Per name, the placeholder that stands for it after the block when unsaved
    #: (made once: the same object every run, see Tracer.push).
    placeholders: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_source(
        cls,
        source_lines: list[str],
        frame: FrameType,
        transform: Callable[[list[ast.stmt], str], list[ast.stmt]] | None = None,
    ) -> CapturedBlock:
        """Parse the ``with`` statement running at ``frame.f_lineno``.

        Args:
            source_lines: the source of ``frame``'s code.
            frame: the frame running the ``with`` statement.
            transform: rewrites the body's statements before compiling (see
                :meth:`Tracer.transform`); gets them and the name under which the
                compiled body sees its tracer.
        """
        code = frame.f_code
        filename = code.co_filename
        node = find_with_node(source_lines, frame.f_lineno, filename)
        # With several items the tracer must be the last one (documented).
        lines = _body_lines(source_lines, node)
        first = node.body[0]
        text = "def __endoscope_block__():\n" + "".join(lines)
        try:
            parsed = ast.parse(text, filename=filename)
        except SyntaxError as error:  # pragma: no cover - the file itself parsed
            raise WithBlockNotFoundError(
                f"endoscope could not re-parse the traced block at {filename}, line "
                f"{first.lineno}: {error.msg}"
            ) from None
        ast.increment_lineno(parsed, first.lineno - 2)
        function = parsed.body[0]
        assert isinstance(function, ast.FunctionDef)
        body = function.body
        _Checker(filename).visit(ast.Module(body=body, type_ignores=[]))
        as_targets = [item.optional_vars for item in node.items[-1:] if item.optional_vars]
        scanned = [*body, *(ast.Expr(value=target) for target in as_targets)]
        names, declared_global, _ = _names_in(scanned)
        assigned_lines, introspects = _assigned_in(scanned)
        reads_first = _reads_first(
            [ast.Assign(targets=[t], value=ast.Constant(None)) for t in as_targets] + body
        )
        # Only a plain name is bound outside the body; other targets (attributes,
        # tuples) are assigned by the body's first statement.
        as_names = [t.id for t in as_targets if isinstance(t, ast.Name)]
        mentioned = tuple(
            name
            for name in names
            if name not in declared_global and name not in (TRACER_ARG, ENTERED_ARG)
        )
        static: tuple[str, ...] | None = None
        if code.co_flags & inspect.CO_OPTIMIZED:
            caller = {*code.co_varnames, *code.co_cellvars, *code.co_freevars}
            static = tuple(name for name in mentioned if name in caller)
        body = [_DropNonlocal().visit(statement) for statement in body]
        if transform is not None:
            body = transform(body, TRACER_ARG)
        if as_targets:
            assign = ast.Assign(
                targets=[copy.deepcopy(as_targets[0])],
                value=ast.Name(id=ENTERED_ARG, ctx=ast.Load()),
            )
            _store_context(assign.targets[0])
            body.insert(0, _located(assign, node.lineno))  # type: ignore[arg-type]
        return cls(
            filename=filename,
            node=node,
            source=lines,
            start_line=first.lineno,
            names=mentioned,
            static_locals=static,
            as_names=tuple(as_names),
            target_names=frozenset(
                t.id for target in as_targets for t in ast.walk(target) if isinstance(t, ast.Name)
            ),
            code_name=code.co_name,
            qualname=getattr(code, "co_qualname", code.co_name),
            future_flags=code.co_flags & _FUTURE_FLAGS,
            assigned=frozenset(assigned_lines),
            assigned_lines=assigned_lines,
            introspects=introspects,
            reads_first=reads_first - {TRACER_ARG, ENTERED_ARG},
            _body=body,
            _globals_declared=frozenset(declared_global),
        )

    def may_share_with(self, reader: CapturedBlock) -> bool:
        """Whether ``reader``'s body may read a variable this body assigns.

        Judged from the text, erring towards ``True``: a name this body may bind
        that ``reader`` mentions (or declares ``global``), or either body
        introspects. Code that runs bodies side by side (endoscope-envoy's
        invokes) shares variables between them only when this says so.
        """
        if self.introspects or reader.introspects:
            return True
        assigned = self.assigned
        return not (
            assigned.isdisjoint(reader.names) and assigned.isdisjoint(reader._globals_declared)
        )

    @property
    def pulled_candidates(self) -> tuple[str, ...]:
        """The body's names the caller may have bound (see :meth:`pulled_names`)."""
        return self.names if self.static_locals is None else self.static_locals

    def pulled_names(self, namespace: Mapping[str, Any]) -> tuple[str, ...]:
        """Which of the body's names the caller has bound right now."""
        return tuple(name for name in self.pulled_candidates if name in namespace)

    def assignment_line(self, name: str) -> int | None:
        """The first line of the body that binds ``name``, if any (for messages)."""
        lines = [
            node.lineno
            for statement in self._body
            for node in ast.walk(statement)
            if isinstance(node, ast.Name) and node.id == name and not isinstance(node.ctx, ast.Load)
        ]
        return min(lines) if lines else None

    def function(
        self,
        pulled: tuple[str, ...],
        globals_: dict[str, Any],
        guarded: frozenset[str] = frozenset(),
    ) -> FunctionType:
        """The body as a function taking ``(tracer, entered, *pulled values)``.

        Args:
            pulled: the caller's variables passed in (see :meth:`pulled_names`).
            globals_: the globals the function runs with.
            guarded: names whose every read in the body's own scope first calls
                ``tracer.before_read(name)`` (see :meth:`Tracer.before_read`);
                other reads cost nothing extra.
        """
        key = (pulled, guarded)
        code = self._compiled.get(key)
        if code is None:
            code = self._compiled[key] = self._compile(pulled, guarded)
        return FunctionType(code, globals_)

    def _compile(self, pulled: tuple[str, ...], guarded: frozenset[str]) -> CodeType:
        lineno = self.node.lineno
        push = ast.Expr(
            value=ast.Call(
                func=ast.Attribute(
                    value=ast.Name(id=TRACER_ARG, ctx=ast.Load()), attr="push", ctx=ast.Load()
                ),
                args=[ast.Call(func=ast.Name(id="locals", ctx=ast.Load()), args=[], keywords=[])],
                keywords=[],
            )
        )
        _located(push, self.node.end_lineno or lineno)
        arguments = ast.arguments(
            posonlyargs=[],
            args=[ast.arg(arg=name) for name in (TRACER_ARG, ENTERED_ARG, *pulled)],
            vararg=None,
            kwonlyargs=[],
            kw_defaults=[],
            kwarg=None,
            defaults=[],
        )
        # try/finally: variables assigned before an error or an early stop still
        # reach the caller, as they would in an ordinary with block.
        body = copy.deepcopy(self._body)
        if guarded:
            rewrite = _GuardReads(guarded)
            body = [node for statement in body for node in _as_list(rewrite.visit(statement))]
        protected = ast.Try(body=body or [ast.Pass()], handlers=[], orelse=[], finalbody=[push])
        protected.lineno, protected.col_offset = lineno, 0
        protected.end_lineno, protected.end_col_offset = self.node.end_lineno or lineno, 0
        function = ast.FunctionDef(
            name="__endoscope_block__",
            args=arguments,
            body=[protected],
            decorator_list=[],
            returns=None,
            type_comment=None,
        )
        if sys.version_info >= (3, 12):
            function.type_params = []
        _located(arguments, lineno)
        function.lineno = function.end_lineno = lineno
        function.col_offset = function.end_col_offset = 0
        module = ast.Module(body=[function], type_ignores=[])
        ast.fix_missing_locations(module)
        compiled = compile(
            module, self.filename, "exec", flags=self.future_flags, dont_inherit=True
        )
        inner = next(c for c in compiled.co_consts if isinstance(c, CodeType))
        # Name the frame like the caller's, so tracebacks read `in <module>` or `in f`.
        replace: dict[str, Any] = {"co_name": self.code_name}
        if sys.version_info >= (3, 11):
            replace["co_qualname"] = self.qualname
        return inner.replace(**replace)


def _as_list(node: Any) -> list[Any]:
    return node if isinstance(node, list) else [node]


def _store_context(target: ast.AST) -> None:
    for node in ast.walk(target):
        if isinstance(
            node, (ast.Name, ast.Attribute, ast.Subscript, ast.Starred, ast.Tuple, ast.List)
        ):
            node.ctx = ast.Store()
    # Sub-expressions of attribute/subscript targets are loads.
    for node in ast.walk(target):
        if isinstance(node, (ast.Attribute, ast.Subscript)):
            for child in ast.walk(node.value):
                if hasattr(child, "ctx"):
                    child.ctx = ast.Load()
            if isinstance(node, ast.Subscript):
                for child in ast.walk(node.slice):
                    if hasattr(child, "ctx"):
                        child.ctx = ast.Load()
