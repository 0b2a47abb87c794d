"""The AST rewrite: every call site of a function becomes a hookable operation.

Each call ``f(a, b)`` in the function's body is rewritten to::

    f(a, b) if OP._detour is None else OP._call(f, a, b)

where ``OP`` is the site's :class:`~endoscope_source.OperationAccessor`, put in
the compiled code as a constant (the rewrite uses a placeholder string that
:mod:`._convert` swaps for the accessor). While a site is unhooked the
function runs its original call, byte for byte (method calls keep their fast
path, ``super().f()`` keeps its special form), after one constant load, one
attribute load and one branch. Constants, unlike closure cells or globals, are
invisible to ``locals()``, debuggers and the module namespace.

The slow branch passes the callee and evaluated arguments to ``OP._call``, which
reads the hook lists when the call actually happens, after the arguments ran.
Calls nested in a slow branch take the slow form directly (``OP._call(...)``
without the test). Each site then appears once in the fast branches and once
per enclosing slow branch: the generated code grows with size times nesting
depth, instead of doubling at every level of nesting.

Calls inside the function's own decorators, default values and annotations
run when the function is defined, not when it is called, so they are left
alone; so are annotations anywhere in the body, and calls that read their
caller's frame (see :mod:`._naming`). Calls in nested functions, lambdas,
comprehensions and class bodies inside the function are operations like any
other and share its name counters.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, cast

from ._naming import NameCounter, callee_name, reads_caller_frame
from ._scaffold import FunctionNode

__all__ = ["CallSite", "FunctionCallWrapper"]

# Attributes of OperationAccessor that generated code uses.
DETOUR_ATTR = "_detour"
CALL_ATTR = "_call"

# Fields holding annotations or lazily evaluated type parameters: not call sites.
_SKIPPED_FIELDS = {
    (ast.arg, "annotation"),
    (ast.AnnAssign, "annotation"),
    (ast.FunctionDef, "returns"),
    (ast.AsyncFunctionDef, "returns"),
    (ast.FunctionDef, "type_params"),
    (ast.AsyncFunctionDef, "type_params"),
    (ast.ClassDef, "type_params"),
}
_TYPE_ALIAS = getattr(ast, "TypeAlias", None)

_Node = TypeVar("_Node", bound=ast.AST)


@dataclass(frozen=True)
class CallSite:
    """One call site of a rewritten function.

    Attributes:
        name: Operation name, e.g. ``"self_c_attn_0"``.
        index: Position of the site in source order (0-based).
        line: File line of the end of the callee, where the call is shown.
        lineno: First line of the call expression.
        col_offset: Its first column (UTF-8 byte offset, as in :mod:`ast`).
        end_lineno: Last line of the call expression.
        end_col_offset: Column just past its end.
        text: Source text of the whole call, e.g. ``"self.c_attn(x)"``.
        callee: Source text of the called expression, e.g. ``"self.c_attn"``.
        nested: Whether other call sites sit inside this call's callee or
            arguments (those run before this call does).
    """

    name: str
    index: int
    line: int
    lineno: int
    col_offset: int
    end_lineno: int
    end_col_offset: int
    text: str
    callee: str
    nested: bool


class FunctionCallWrapper:
    """Names the call sites of one function node and builds its rewritten copy.

    The input node is never modified (it belongs to a shared parse cache):
    :meth:`rewrite` returns a new node that shares unchanged subtrees.

    Args:
        node: The function or lambda node to rewrite, positioned as in its file.
        placeholder: Maps a site index to the string constant that stands for
            the site's accessor in the compiled code.
        segment: Returns the source text of a node (for :attr:`CallSite.text`).
    """

    def __init__(
        self,
        node: FunctionNode,
        *,
        placeholder: Callable[[int], str],
        segment: Callable[[ast.AST], str] | None = None,
    ) -> None:
        self.node = node
        self._placeholder = placeholder
        self._segment = segment or (lambda _node: "")
        self._site_of: dict[int, CallSite] = {}
        self.sites: list[CallSite] = []
        self._named = False

    # -- naming -------------------------------------------------------------

    def _name_sites(self) -> None:
        if self._named:
            return
        self._named = True
        counter = NameCounter()
        body = self.node.body
        roots: list[ast.AST] = list(body) if isinstance(body, list) else [body]
        for root in roots:
            self._visit(root, counter)

    def _visit(self, node: ast.AST, counter: NameCounter) -> None:
        if _TYPE_ALIAS is not None and isinstance(node, _TYPE_ALIAS):
            return
        before = len(self.sites)
        for name, value in ast.iter_fields(node):
            if (type(node), name) in _SKIPPED_FIELDS:
                continue
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST):
                        self._visit(item, counter)
            elif isinstance(value, ast.AST):
                self._visit(value, counter)
        if isinstance(node, ast.Call) and not reads_caller_frame(node):
            func = node.func
            site = CallSite(
                name=counter.take(callee_name(func)),
                index=len(self.sites),
                line=func.end_lineno or node.lineno,
                lineno=node.lineno,
                col_offset=node.col_offset,
                end_lineno=node.end_lineno or node.lineno,
                end_col_offset=node.end_col_offset or node.col_offset,
                text=self._segment(node),
                callee=self._segment(func),
                nested=len(self.sites) > before,
            )
            self.sites.append(site)
            self._site_of[id(node)] = site

    # -- rebuilding ---------------------------------------------------------

    def rewrite(self) -> FunctionNode:
        """Return the rewritten function node; :attr:`sites` lists its call sites."""
        self._name_sites()
        node = self.node
        if isinstance(node, ast.Lambda):
            return _copy(node, body=self._full(node.body))
        return _copy(node, body=[self._full(stmt) for stmt in node.body])

    def _children(self, node: ast.AST, build: Callable[[ast.AST], ast.AST]) -> ast.AST:
        """Copy ``node`` with every child rebuilt by ``build`` (shared if unchanged)."""
        if _TYPE_ALIAS is not None and isinstance(node, _TYPE_ALIAS):
            return node
        changes: dict[str, object] = {}
        for name, value in ast.iter_fields(node):
            if (type(node), name) in _SKIPPED_FIELDS:
                continue
            if isinstance(value, list):
                items = [build(item) if isinstance(item, ast.AST) else item for item in value]
                if any(new is not old for new, old in zip(items, value)):
                    changes[name] = items
            elif isinstance(value, ast.AST):
                new = build(value)
                if new is not value:
                    changes[name] = new
        return _copy(node, **changes) if changes else node

    def _full(self, node: ast.AST) -> ast.AST:
        """Rewrite ``node`` so each site tests its accessor, then calls directly."""
        site = self._site_of.get(id(node)) if isinstance(node, ast.Call) else None
        if site is None:
            return self._children(node, self._full)
        assert isinstance(node, ast.Call)
        fast = self._children(node, self._full)
        if fast is node:
            fast = _copy(node)
        op = self._constant(site, node)
        test = _at(
            ast.Compare(
                left=_at(ast.Attribute(value=op, attr=DETOUR_ATTR, ctx=ast.Load()), node),
                ops=[ast.Is()],
                comparators=[_at(ast.Constant(value=None), node)],
            ),
            node,
        )
        body = cast(ast.expr, fast)
        return _at(ast.IfExp(test=test, body=body, orelse=self._slow(node, site)), node)

    def _compact(self, node: ast.AST) -> ast.AST:
        """Rewrite ``node`` for use inside a slow branch: sites always detour."""
        site = self._site_of.get(id(node)) if isinstance(node, ast.Call) else None
        if site is None:
            return self._children(node, self._compact)
        assert isinstance(node, ast.Call)
        return self._slow(node, site)

    def _slow(self, node: ast.Call, site: CallSite) -> ast.expr:
        """``OP._call(callee, *args, **kwargs)`` with nested sites in compact form."""
        op = self._constant(site, node)
        func = cast(ast.expr, self._compact(node.func))
        args = [cast(ast.expr, self._compact(arg)) for arg in node.args]
        keywords = [cast(ast.keyword, self._compact(kw)) for kw in node.keywords]
        call = ast.Call(
            func=_at(ast.Attribute(value=op, attr=CALL_ATTR, ctx=ast.Load()), node),
            args=[func, *args],
            keywords=keywords,
        )
        return _at(call, node)

    def _constant(self, site: CallSite, where: ast.AST) -> ast.expr:
        return _at(ast.Constant(value=self._placeholder(site.index)), where)


def _at(new: _Node, where: ast.AST) -> _Node:
    """Give a generated node the position of the code it stands for."""
    return ast.copy_location(new, where)


def _copy(node: _Node, **changes: object) -> _Node:
    fields = {name: getattr(node, name) for name in node._fields if hasattr(node, name)}
    fields.update(changes)
    new = type(node)(**fields)
    for attr in node._attributes:
        if hasattr(node, attr):
            setattr(new, attr, getattr(node, attr))
    return new
