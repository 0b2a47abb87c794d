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

from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._accessor import SourceAccessor
    from ._locate import FunctionSource
    from ._operation import OperationAccessor
    from ._rewrite import CallSite

__all__ = ["format_accessor", "format_operation"]

_CONTEXT = 2


def _indent(source: FunctionSource) -> int:
    """Common leading whitespace (in characters) of the function's non-blank lines."""
    widths = [
        len(line) - len(line.lstrip())
        for line in (source.line(n) for n in range(source.first_line, source.end_line + 1))
        if line.strip()
    ]
    return min(widths, default=0)


def _strip(line: str, indent: int) -> str:
    head = line[:indent]
    return line[indent:] if not head.strip() else line.lstrip()


def format_accessor(accessor: SourceAccessor) -> str:
    """Return the function's source with each operation's name beside its line."""
    source = accessor.conversion.source
    first, last = source.first_line, source.end_line
    indent = _indent(source)
    code = [_strip(source.line(n), indent) for n in range(first, last + 1)]
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
    header = f"{op.path}: {' '.join(site.text.split())}"
    if accessor is None:
        return header
    source = accessor.conversion.source
    header = f"{header}  [{source.filename}:{site.lineno}]"
    lo = max(source.first_line, site.lineno - _CONTEXT)
    hi = min(source.end_line, site.end_lineno + _CONTEXT)
    raw = [source.line(n) for n in range(lo, hi + 1)]
    removed = _indent(source)
    code = [_strip(line, removed) for line in raw]
    digits = len(str(hi))
    out = [header]
    for number, original, text in zip(range(lo, hi + 1), raw, code):
        inside = site.lineno <= number <= site.end_lineno
        marker = "->" if inside else "  "
        out.append(f" {marker} {number:>{digits}} | {text}".rstrip())
        if inside:
            start, end = _span_on_line(original, number, site)
            carets = "^" * max(1, end - start)
            out.append(f"    {'':>{digits}} | {' ' * max(0, start - removed)}{carets}")
    return "\n".join(out)


def _span_on_line(line: str, number: int, site: CallSite) -> tuple[int, int]:
    """Character columns covered by the call on one of its lines.

    AST columns are UTF-8 byte offsets; the display needs characters.
    """
    encoded = line.encode("utf-8")
    if number == site.lineno:
        start = len(encoded[: site.col_offset].decode("utf-8", "replace"))
    else:
        start = len(line) - len(line.lstrip())
    if number == site.end_lineno:
        end = len(encoded[: site.end_col_offset].decode("utf-8", "replace"))
    else:
        end = len(line.rstrip())
    return start, end
