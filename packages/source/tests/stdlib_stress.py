"""Replace every function of a few stdlib modules by its injected version and compare.

Run as a script (in a subprocess, so the patching cannot leak into other
tests): ``python stdlib_stress.py MODE`` with MODE ``unhooked``, ``hooked``
(a pass-through pre- and post-hook on every operation) or ``watched``. Prints
``patched=N same=True`` when the workload's output did not change.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import fractions
import io
import json
import json.decoder
import json.encoder
import shlex
import sys
import textwrap
import types

from endoscope_source import SourceAccessor, SourceError

MODULES = [json.decoder, json.encoder, textwrap, difflib, argparse, shlex, csv, fractions]


def workload() -> str:
    out: list[object] = []
    data = {"a": [1, 2.5, None, True, "é\n"], "b": {"c": [{"d": 1}]}}
    out.append(json.dumps(data, indent=2, sort_keys=True))
    out.append(json.loads('{"x": [1, 2, {"y": "\\u00e9"}], "z": 1.5e3}'))
    out.append(textwrap.fill("The quick brown fox jumps over the lazy dog " * 4, width=30))
    out.append(textwrap.dedent("   a\n    b\n   c"))
    out.append(list(difflib.unified_diff(["abc", "def", "ghi"], ["abc", "xyz", "ghi"])))
    out.append(difflib.SequenceMatcher(None, "abcdefgh", "abxdefyh").get_opcodes())
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("files", nargs="*")
    out.append(vars(parser.parse_args(["--n", "5", "a", "b"])))
    out.append(parser.format_help())
    out.append(shlex.split("a 'b c' \"d e\" f\\ g"))
    buffer = io.StringIO()
    csv.writer(buffer).writerow(["a", "b,c", 'd"e'])
    out.append(buffer.getvalue())
    out.append(str(fractions.Fraction(3, 4) + fractions.Fraction("1/3") * 2))
    return repr(out)


def _inject(fn: types.FunctionType, mode: str, keep: list[SourceAccessor]) -> types.FunctionType:
    accessor = SourceAccessor(fn)
    if mode == "hooked":
        for op in accessor.operations.values():
            op.pre_hooks.append(lambda inputs: None)
            op.post_hooks.append(lambda value: None)
    elif mode == "watched":
        accessor.watch()
    keep.append(accessor)
    return accessor.injected


def patch(mode: str) -> int:
    keep: list[SourceAccessor] = []
    count = 0
    for module in MODULES:
        owners: list[object] = [module]
        owners += [
            v
            for v in vars(module).values()
            if isinstance(v, type) and v.__module__ == module.__name__
        ]
        for owner in owners:
            for name, value in list(vars(owner).items()):
                wrapper = type(value) if isinstance(value, (staticmethod, classmethod)) else None
                fn = value.__func__ if wrapper is not None else value
                if not isinstance(fn, types.FunctionType) or fn.__module__ != module.__name__:
                    continue
                try:
                    new: object = _inject(fn, mode, keep)
                except SourceError:
                    continue
                setattr(owner, name, wrapper(new) if wrapper is not None else new)
                count += 1
    return count


if __name__ == "__main__":
    reference = workload()
    patched = patch(sys.argv[1])
    print(f"patched={patched} same={workload() == reference}")
