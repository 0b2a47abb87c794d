"""Operation names: how a call site is named, and which calls are not operations.

The rule (it matches nnsight for every callee nnsight names):

- A plain name is used as is: ``abs(x)`` is ``abs``.
- A dotted path has its dots turned into underscores: ``self.c_attn(x)`` is
  ``self_c_attn`` and ``torch.nn.functional.relu(x)`` is
  ``torch_nn_functional_relu``.
- When a dotted path does not start at a plain name, the part before the first
  dot-name is dropped: ``x.view(s).transpose(1, 2)`` is ``transpose`` (the inner
  ``x.view(s)`` is its own operation, ``x_view``), ``(a + b).sum()`` is ``sum``,
  ``"-".join(parts)`` is ``join`` and ``self.layers[0].forward(x)`` is ``forward``.
- A subscript callee is named after the container it indexes:
  ``fns[0](x)`` is ``fns`` and ``self.layers[i](h)`` is ``self_layers``.
- Any other callee (a call result, a lambda, an operator, a conditional) has no
  name of its own and is called ``call``: ``make(cfg)(x)`` gives ``make`` for
  the inner call and ``call`` for the outer one.

Each name then gets a counter, ``_0``, ``_1``, ..., numbering the sites with that
name in the order the rewriter meets them: statement by statement, and inside
an expression the calls nested in a call (in its callee and arguments) before
the call itself, which is the order they run in.

A few calls read the frame of their caller (zero-argument ``super()``,
``locals()``, ``eval``...). Routing them through a hook wrapper would change
what they see, so they are never operations: they stay plain calls, get no
name and take no counter.
"""

from __future__ import annotations

import ast
from collections import defaultdict

__all__ = ["ANONYMOUS_CALLEE", "NameCounter", "callee_name", "reads_caller_frame"]

ANONYMOUS_CALLEE = "call"
"""Base name of a call whose callee is not a name, dotted path or subscript."""

# Built-ins that look at the calling frame whatever their arguments.
_FRAME_BUILTINS = frozenset({"locals", "globals", "eval", "exec", "breakpoint"})
# Built-ins that look at the calling frame only when called without arguments.
_FRAME_BUILTINS_NO_ARGS = frozenset({"super", "vars", "dir"})
# Dotted callees that return the calling frame (or a list starting with it).
_FRAME_FUNCTIONS = frozenset(
    {("sys", "_getframe"), ("inspect", "currentframe"), ("inspect", "stack")}
)


def _dotted_parts(node: ast.expr) -> list[str] | None:
    """Return ``["a", "b", "c"]`` for ``a.b.c``, or None if ``node`` is not a dotted name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    parts.reverse()
    return parts


def callee_name(func: ast.expr) -> str:
    """Return the base operation name (without counter) for a callee expression.

    Args:
        func: The ``func`` field of an :class:`ast.Call`.

    Returns:
        The name described in the module docstring, for example ``"self_c_attn"``.
    """
    if isinstance(func, ast.Subscript):
        # Look through (possibly repeated) indexing to the container.
        while isinstance(func, ast.Subscript):
            func = func.value
        parts = _dotted_parts(func)
        return "_".join(parts) if parts else ANONYMOUS_CALLEE
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        attrs: list[str] = []
        node: ast.expr = func
        while isinstance(node, ast.Attribute):
            attrs.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name):
            attrs.append(node.id)
        attrs.reverse()
        return "_".join(attrs)
    return ANONYMOUS_CALLEE


def reads_caller_frame(call: ast.Call) -> bool:
    """Return True for calls that must run directly in the function's own frame.

    Args:
        call: A call node from the function being rewritten.

    Returns:
        True for zero-argument ``super()``, ``vars()`` and ``dir()``, for
        ``locals``, ``globals``, ``eval``, ``exec`` and ``breakpoint``, and for
        ``sys._getframe``, ``inspect.currentframe`` and ``inspect.stack``.
    """
    func = call.func
    if isinstance(func, ast.Name):
        if func.id in _FRAME_BUILTINS:
            return True
        return func.id in _FRAME_BUILTINS_NO_ARGS and not call.args and not call.keywords
    parts = _dotted_parts(func)
    return parts is not None and tuple(parts) in _FRAME_FUNCTIONS


class NameCounter:
    """Hands out ``<base>_<n>`` names with one counter per base name."""

    def __init__(self) -> None:
        self._next: defaultdict[str, int] = defaultdict(int)

    def take(self, base: str) -> str:
        """Return the next free name for ``base`` (``base_0``, then ``base_1``...)."""
        index = self._next[base]
        self._next[base] = index + 1
        return f"{base}_{index}"
