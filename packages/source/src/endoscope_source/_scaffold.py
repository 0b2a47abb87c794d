"""Compile one function's AST in a scaffold that reproduces its original scoping.

A function cut out of its file compiles differently unless four things are
reproduced: its free variables must stay free (not turn into globals), private
names (``self.__x``) must be mangled with the class they were written in, the
``__future__`` flags of its module must apply, and (Python 3.13) the compiler
must know which globals are imported modules (it emits a plainer attribute
load for ``module.function(...)``) and (3.12+) whether the module scope
mentions ``super``. The scaffold is::

    <the module's top-level import statements>
    super                                 # only if the module mentions it
    class <ClassName>:                    # only when names need mangling
        def __endoscope_factory__(<free variables of the function>):
            global <name>                 # unless the name is itself free
            <the function, at its original line and column numbers>

It is compiled with the function's real file name and never executed: the
function's code object is taken out of the compiled constants, so decorators,
default values and annotations are never evaluated a second time.
"""

from __future__ import annotations
import __future__

import ast
import symtable
import sys
from collections.abc import Callable, Sequence
from types import CodeType
from typing import Any, TypeVar

__all__ = [
    "FACTORY_NAME",
    "FUTURE_FLAGS",
    "FunctionNode",
    "compile_function",
    "module_imports",
    "module_scope_names",
    "scaffold_qualname",
    "strip_signature",
]

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda

FACTORY_NAME = "__endoscope_factory__"

FUTURE_FLAGS = 0
for _feature in __future__.all_feature_names:
    FUTURE_FLAGS |= getattr(__future__, _feature).compiler_flag

_HAS_TYPE_PARAMS = "type_params" in ast.FunctionDef._fields


_Node = TypeVar("_Node", bound=ast.AST)


def _place(node: _Node, line: int, end_line: int) -> _Node:
    """Give a scaffold node a valid position spanning the function's lines."""
    node.lineno = line  # type: ignore[attr-defined]
    node.col_offset = 0  # type: ignore[attr-defined]
    node.end_lineno = end_line  # type: ignore[attr-defined]
    node.end_col_offset = 0  # type: ignore[attr-defined]
    return node


def _declares_global(node: FunctionNode, freevars: Sequence[str]) -> bool:
    return not isinstance(node, ast.Lambda) and node.name not in freevars


def scaffold_qualname(node: FunctionNode, private_name: str | None, freevars: Sequence[str]) -> str:
    """Qualified name the scaffold gives the function (it differs from the original)."""
    if _declares_global(node, freevars):
        # A function declared global in its parent gets its bare name.
        return node.name  # type: ignore[union-attr]
    name = "<lambda>" if isinstance(node, ast.Lambda) else node.name
    prefix = f"{private_name}." if private_name is not None else ""
    return f"{prefix}{FACTORY_NAME}.<locals>.{name}"


def strip_signature(node: FunctionNode) -> FunctionNode:
    """Return a shallow copy of ``node`` without default values and annotations.

    Defaults and annotations are evaluated by the enclosing scope, not by the
    function, so dropping them leaves the function's own code unchanged while
    keeping lambdas hidden in them out of the compiled constants.
    """
    old = node.args

    def bare(arg: ast.arg) -> ast.arg:
        copy = ast.arg(arg=arg.arg, annotation=None, type_comment=None)
        return ast.copy_location(copy, arg)

    args = ast.arguments(
        posonlyargs=[bare(a) for a in old.posonlyargs],
        args=[bare(a) for a in old.args],
        vararg=bare(old.vararg) if old.vararg else None,
        kwonlyargs=[bare(a) for a in old.kwonlyargs],
        kw_defaults=[None] * len(old.kwonlyargs),
        kwarg=bare(old.kwarg) if old.kwarg else None,
        defaults=[],
    )
    fields: dict[str, Any] = {name: getattr(node, name, None) for name in node._fields}
    fields["args"] = args
    if not isinstance(node, ast.Lambda):
        fields["returns"] = None
    copy = type(node)(**fields)
    return ast.copy_location(copy, node)


def compile_function(
    node: FunctionNode,
    *,
    filename: str,
    private_name: str | None,
    freevars: Sequence[str],
    flags: int,
    imports: Sequence[ast.stmt] = (),
    module_names: Sequence[str] = (),
) -> CodeType:
    """Compile ``node`` in its scaffold and return the code object of the function.

    Args:
        node: The function or lambda node, positioned as in its file.
        filename: The real file name, so tracebacks point at the original file.
        private_name: The name of the class the function was written in, for
            private name mangling, or None outside classes.
        freevars: Names the function takes from enclosing function scopes.
        flags: ``__future__`` compiler flags of the original code.
        imports: The module's top-level import statements (see
            :func:`module_imports`); compiled, never executed.
        module_names: Names the module's own scope mentions that change how
            the function compiles (see :func:`module_scope_names`).

    Returns:
        The compiled code object of the function itself.
    """
    line = node.lineno
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.decorator_list:
        line = min(line, node.decorator_list[0].lineno)
    end_line = node.end_lineno or line
    body: list[ast.stmt] = []
    if isinstance(node, ast.Lambda):
        body.append(_expr_stmt(node))
    else:
        if _declares_global(node, freevars):
            # The def statement would make the name a local of the factory and
            # turn the function's references to itself into closure reads.
            body.append(_place(ast.Global(names=[node.name]), line, line))
        body.append(node)
    params = [_place(ast.arg(arg=name, annotation=None), line, line) for name in freevars]
    factory_fields: dict[str, Any] = {
        "name": FACTORY_NAME,
        "args": ast.arguments(
            posonlyargs=[],
            args=params,
            vararg=None,
            kwonlyargs=[],
            kw_defaults=[],
            kwarg=None,
            defaults=[],
        ),
        "body": body,
        "decorator_list": [],
        "returns": None,
    }
    if _HAS_TYPE_PARAMS:
        factory_fields["type_params"] = []
    top: ast.stmt = _place(ast.FunctionDef(**factory_fields), line, end_line)
    if private_name is not None:
        class_fields: dict[str, Any] = {
            "name": private_name,
            "bases": [],
            "keywords": [],
            "body": [top],
            "decorator_list": [],
        }
        if _HAS_TYPE_PARAMS:
            class_fields["type_params"] = []
        top = _place(ast.ClassDef(**class_fields), line, end_line)
    mentions: list[ast.stmt] = [
        _place(ast.Expr(value=_place(ast.Name(id=name, ctx=ast.Load()), line, line)), line, line)
        for name in module_names
    ]
    module = ast.Module(body=[*imports, *mentions, top], type_ignores=[])
    code = compile(module, filename, "exec", flags=flags & FUTURE_FLAGS, dont_inherit=True)
    name = "<lambda>" if isinstance(node, ast.Lambda) else node.name
    found = _find_code(code, name, line)
    if found is None:  # pragma: no cover - the scaffold always holds the function
        raise AssertionError(f"compiled scaffold lost {name!r}")
    return found


def module_imports(tree: ast.Module) -> list[ast.stmt]:
    """Return the import statements that bind names in the module's own scope.

    Includes imports inside top-level ``if``/``try``/``with`` blocks, excludes
    those in functions and classes and ``from __future__`` imports (which must
    come first in a module; their flags are passed to the compiler instead).
    """
    found: list[ast.stmt] = []
    stack: list[ast.AST] = list(reversed(tree.body))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import) or (
            isinstance(node, ast.ImportFrom) and node.module != "__future__"
        ):
            assert isinstance(node, (ast.Import, ast.ImportFrom))
            found.append(node)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            children = [
                child
                for child in ast.iter_child_nodes(node)
                if isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case))
            ]
            stack.extend(reversed(children))
    return found


def module_scope_names(text: str, filename: str) -> tuple[str, ...]:
    """Names whose presence in the module's own scope changes how functions compile.

    Python 3.12+ compiles ``super().f()`` to a special instruction only when
    the module scope never mentions ``super`` (``_safe_super = super`` turns it
    off for the whole module).
    """
    if sys.version_info < (3, 12) or "super" not in text:
        return ()
    try:
        table = symtable.symtable(text, filename, "exec")
        table.lookup("super")
    except (KeyError, SyntaxError):
        return ()
    return ("super",)


def _expr_stmt(node: ast.Lambda) -> ast.stmt:
    stmt = ast.Expr(value=node)
    return ast.copy_location(stmt, node)


def _find_code(code: CodeType, name: str, line: int) -> CodeType | None:
    """Find the function's own code inside the factory's compiled code.

    The search starts at the factory, so a class wrapper named like the
    function (``class f: def f(self)``) is never mistaken for it.
    """
    factory = _search(code, lambda c: c.co_name == FACTORY_NAME)
    if factory is None:
        return None
    return _search(factory, lambda c: c.co_name == name and c.co_firstlineno == line)


def _search(code: CodeType, wanted: Callable[[CodeType], bool]) -> CodeType | None:
    """Breadth-first search of the code objects nested in ``code``."""
    queue = [code]
    while queue:
        current = queue.pop(0)
        for const in current.co_consts:
            if isinstance(const, CodeType):
                if wanted(const):
                    return const
                queue.append(const)
    return None
