"""The run fingerprint: what a resumed run must share with the one that wrote ``out``.

A run is its factory's and step's code, the values that code was built with (closure
cells, default arguments, plain module-level constants it names, a callable object's
attributes) and the options that decide the chunks. Line numbers and file paths are
left out, so a comment or a moved file does not make a resumed run look different;
an edited body, another captured layer index or steering vector does.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["PART_NAMES", "fingerprint_parts", "run_fingerprint"]

# Values fed by their text: the same text in every process and on every machine.
_PLAIN = (type(None), bool, int, float, complex, str, bytes)

# How a differing part is named in RunMismatchError.
PART_NAMES = {
    "factory": "the factory (its code or the values it was built with)",
    "step": "the step (its code or the values it was built with: closure variables, "
    "defaults, module-level constants it names)",
    "options": "the options (batch_size, chunk_rows, mask, lengths, per_token, shapes, column)",
}


def fingerprint_parts(factory: Any, step: Any, config: Mapping[str, Any]) -> dict[str, str]:
    """Hex digests of ``factory``, ``step`` and the run's options ``config``, by part."""
    parts = {}
    for name, function in (("factory", factory), ("step", step)):
        hasher = hashlib.sha256()
        _callable_digest(function, hasher, set())
        parts[name] = hasher.hexdigest()
    parts["options"] = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return parts


def run_fingerprint(parts: Mapping[str, str]) -> str:
    """One digest of the :func:`fingerprint_parts` of a run."""
    return hashlib.sha256(json.dumps(dict(parts), sort_keys=True).encode()).hexdigest()


def _callable_digest(function: Any, hasher: Any, seen: set[int]) -> None:
    """Feed what a callable does and was built with to ``hasher``."""
    if id(function) in seen:  # recursion, or a helper used twice
        hasher.update(b"<again>")
        return
    seen.add(id(function))
    hasher.update(str(getattr(function, "__qualname__", type(function).__name__)).encode())
    if isinstance(function, functools.partial):
        _callable_digest(function.func, hasher, seen)
        _value_digest((function.args, function.keywords), hasher, seen)
        return
    code = getattr(function, "__code__", None)
    if code is None:
        # A callable object: what its class's __call__ does, and its attributes.
        call = next(
            (k.__dict__["__call__"] for k in type(function).__mro__ if "__call__" in k.__dict__),
            None,
        )
        if hasattr(call, "__code__"):
            _callable_digest(call, hasher, seen)
        _value_digest(getattr(function, "__dict__", {}), hasher, seen)
        return
    names: list[str] = []

    def feed(code: Any) -> None:
        hasher.update(code.co_code)
        hasher.update(repr(code.co_names).encode())
        names.extend(code.co_names)
        for constant in code.co_consts:
            if hasattr(constant, "co_code"):
                feed(constant)
            else:
                hasher.update(repr(constant).encode())

    feed(code)
    for name, cell in zip(code.co_freevars, getattr(function, "__closure__", None) or ()):
        hasher.update(name.encode())
        try:
            contents = cell.cell_contents
        except ValueError:  # a cell not yet filled
            contents = None
        _value_digest(contents, hasher, seen)
    _value_digest(getattr(function, "__defaults__", None), hasher, seen)
    _value_digest(getattr(function, "__kwdefaults__", None), hasher, seen)
    # Module-level names it uses: constants by value, the module's own functions by
    # what they do. Mutable globals (a results list) are left out: they may change
    # between a run and its resumption without changing what a row holds.
    namespace = getattr(function, "__globals__", {})
    module = getattr(function, "__module__", None)
    for name in dict.fromkeys(names):
        if name not in namespace:
            continue
        value = namespace[name]
        if isinstance(value, (*_PLAIN, tuple, frozenset)):
            hasher.update(name.encode())
            _value_digest(value, hasher, seen)
        elif hasattr(value, "__code__") and getattr(value, "__module__", None) == module:
            hasher.update(name.encode())
            _callable_digest(value, hasher, seen)


def _value_digest(value: Any, hasher: Any, seen: set[int]) -> None:
    """Feed a value code was built with: plain values by text, containers item by
    item, tensors and arrays by their bytes, functions by their code, anything else
    (a model, a tokenizer) by its type alone."""
    if isinstance(value, _PLAIN):
        hasher.update(f"{type(value).__name__}:{value!r};".encode())
        return
    if isinstance(value, (tuple, list, dict)):
        if id(value) in seen:  # a container holding itself
            hasher.update(b"<again>")
            return
        seen.add(id(value))
    if isinstance(value, (tuple, list)):
        hasher.update(f"{type(value).__name__}[{len(value)}]".encode())
        for item in value:
            _value_digest(item, hasher, seen)
    elif isinstance(value, (set, frozenset)):
        hasher.update(f"{type(value).__name__}:{sorted(map(repr, value))!r};".encode())
    elif isinstance(value, dict):
        hasher.update(f"dict[{len(value)}]".encode())
        for key, item in value.items():
            _value_digest(key, hasher, seen)
            _value_digest(item, hasher, seen)
    elif isinstance(value, torch.Tensor):
        hasher.update(f"tensor:{value.dtype}:{list(value.shape)};".encode())
        try:
            data = value.detach().to("cpu").contiguous().reshape(-1)
            hasher.update(data.view(torch.uint8).numpy().tobytes())
        except (RuntimeError, NotImplementedError, TypeError):
            pass  # no plain bytes (a meta, sparse or quantized tensor): dtype and shape
    elif type(value).__module__ == "numpy" and hasattr(value, "tobytes"):
        hasher.update(
            f"ndarray:{getattr(value, 'dtype', '')}:{getattr(value, 'shape', '')};".encode()
        )
        hasher.update(value.tobytes())
    elif callable(value) and (hasattr(value, "__code__") or isinstance(value, functools.partial)):
        _callable_digest(value, hasher, seen)
    else:
        hasher.update(f"<{type(value).__module__}.{type(value).__qualname__}>".encode())
