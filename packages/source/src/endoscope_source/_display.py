"""Text views of accessors: the function with operation names beside their lines.

``str(accessor)`` prints::

    model.h.0.source: Block.forward  [model.py:12]
                          12 | def forward(self, x):
     self_ln_0        ->  13 |     h = self.ln(x)
     self_c_fc_0      ->  14 |     return self.c_proj(self.act(self.c_fc(h)))
     self_act_0       ->     +
     self_c_proj_0    ->     +

Line numbers are the file's. A line with several operations lists them in the
order they run, the first beside the code and the others below it.
``str(operation)`` prints the lines around one call with the call underlined.
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._accessor import SourceAccessor
    from ._operation import OperationAccessor

__all__ = ["format_accessor", "format_operation"]

_CONTEXT = 2


def _dedented(lines: list[str]) -> tuple[list[str], int]:
    """Dedent lines together; return them and the number of characters removed."""
    text = textwrap.dedent("".join(line if line.endswith("\n") else line + "\n" for line in lines))
    out = text.splitlines()
    removed = 0
    for raw, new in zip(lines, out):
        stripped = raw.rstrip("\r\n")
        if new.strip():
            removed = len(stripped) - len(new)
            break
    return out, removed


def format_accessor(accessor: SourceAccessor) -> str:
    """Return the function's source with each operation's name beside its line."""
    source = accessor.conversion.source
    first, last = source.first_line, source.end_line
    code, _ = _dedented([source.line(n) for n in range(first, last + 1)])
    by_line: defaultdict[int, list[str]] = defaultdict(list)
    for site in accessor.sites:
        by_line[site.line].append(site.name)
    width = max((len(name) for name in accessor.operations), default=0)
    digits = len(str(last))
    fn = accessor.function
    where = f"{accessor.path}.source: " if accessor.path else ""
    out = [f"{where}{fn.__qualname__}  [{source.filename}:{first}]"]
    for number, text in zip(range(first, last + 1), code):
        names = by_line.get(number, [])
        if not names:
            out.append(f" {'':<{width}}    {number:>{digits}} | {text}".rstrip())
            continue
        out.append(f" {names[0]:<{width}} -> {number:>{digits}} | {text}".rstrip())
        out.extend(f" {name:<{width}} -> {'':>{digits}}   +" for name in names[1:])
    return "\n".join(out)


def format_operation(op: OperationAccessor) -> str:
    """Return the lines around one operation's call, with the call underlined."""
    site = op.site
    accessor = op.accessor
    header = f"{op.path}: {site.text}"
    if accessor is None:
        return header
    source = accessor.conversion.source
    header = f"{header}  [{source.filename}:{site.lineno}]"
    lo = max(source.first_line, site.lineno - _CONTEXT)
    hi = min(source.end_line, site.end_lineno + _CONTEXT)
    raw = [source.line(n) for n in range(lo, hi + 1)]
    code, removed = _dedented(raw)
    digits = len(str(hi))
    out = [header]
    for number, original, text in zip(range(lo, hi + 1), raw, code):
        inside = site.lineno <= number <= site.end_lineno
        marker = "->" if inside else "  "
        out.append(f" {marker} {number:>{digits}} | {text}".rstrip())
        if inside:
            encoded = original.encode("utf-8")
            start = (
                site.col_offset if number == site.lineno else len(original) - len(original.lstrip())
            )
            end = site.end_col_offset if number == site.end_lineno else len(encoded)
            start_chars = len(encoded[:start].decode("utf-8", "replace")) - removed
            end_chars = len(encoded[:end].decode("utf-8", "replace")) - removed
            if number != site.lineno:
                start_chars = len(original) - len(original.lstrip()) - removed
            carets = "^" * max(1, end_chars - start_chars)
            out.append(f"    {'':>{digits}} | {' ' * max(0, start_chars)}{carets}")
    return "\n".join(out)
