"""``remote="local"``: serialize a block as a remote run would, then run it here.

nnsight's ``model.trace(..., remote="local")`` is a dry run of remote execution:
the intervention is serialized and deserialized in-process, so code that could
not travel (an open file, a lock, a generator captured from outside the block)
fails before any model runs, with the error a remote run would give. endoscope
runs every model in this process, but accepts the same dry run: the block's
source and every value it takes from outside are pickled and unpickled, then the
block runs as usual, on the caller's own values (as nnsight's local simulation
does, so saved values and mutated lists come back as in any trace).

What a server already has is not serialized but referenced: the model (its
Envoys, modules, parameters and buffers), tracers, its tokenizer, and Python
modules (by name). Functions that cannot be found by name (lambdas, closures,
functions of ``__main__``) travel by value: their code, defaults and closure
values, the latter pickled too.
"""

from __future__ import annotations

import ast
import importlib
import io
import marshal
import pickle
import types
from collections.abc import Iterator
from typing import Any

from endoscope_tracing import Tracer

from ._envoy import Envoy

__all__ = ["LocalRemoteBackend", "RemoteSerializationError", "remote_backend"]


class RemoteSerializationError(TypeError):
    """A value a block takes from outside cannot be serialized for a remote run.

    A ``TypeError``, as the pickling error nnsight's ``remote="local"`` raises.
    """


def remote_backend(model: Any, remote: Any, method: str) -> LocalRemoteBackend | None:
    """The backend for nnsight's ``remote=`` option of ``method``.

    Args:
        model: the model the block runs on.
        remote: ``False``/``None`` (run here), ``"local"`` (round-trip, then run
            here); anything else asks for a remote server.
        method: the method's name, for the error.

    Raises:
        NotImplementedError: a remote run (``remote=True`` or a host).
    """
    if remote is None or remote is False:
        return None
    if remote == "local":
        return LocalRemoteBackend(model)
    raise NotImplementedError(
        f"{method}(remote={remote!r}): endoscope runs models in this process; remote "
        "execution (NDIF) is not available. Drop remote= to run locally, or pass "
        "remote='local' to check that the block would serialize for a remote run."
    )


class LocalRemoteBackend:
    """Backend of a block opened with ``remote="local"``: round-trip, then run.

    Args:
        model: the model the block runs on (what a server already has).
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, tracer: Tracer) -> Any:
        fn = tracer.compile()
        info = tracer._require_info()
        values = dict(tracer._pulled)
        globals_ = info.frame.f_globals
        for name in _global_names(info.block.node):
            if name not in values and name in globals_:
                values[name] = globals_[name]
        table = self._server_objects()
        request: dict[str, Any] = {"source": "".join(info.source), "filename": info.filename}
        request["values"] = {
            name: self._dumps(name, value, table) for name, value in values.items()
        }
        restored = self._loads(pickle.dumps(request), table)
        if restored["source"] != request["source"]:  # pragma: no cover - pickle is exact
            raise RuntimeError("the block's source did not survive serialization")
        return tracer.execute(fn)

    # -- serialization ------------------------------------------------------------

    def _dumps(self, name: str, value: Any, table: dict[int, Any]) -> bytes:
        buffer = io.BytesIO()
        try:
            _Pickler(buffer, table).dump(value)
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as error:
            raise RemoteSerializationError(
                f"remote='local': the block uses `{name}` from outside it, a "
                f"{type(value).__name__} that cannot be serialized ({error}), so a remote "
                "run would fail the same way. Make the value inside the block, or pass "
                "something that pickles (tensors, numbers, strings, lists, dicts, functions)."
            ) from None
        return buffer.getvalue()

    def _loads(self, blob: bytes, table: dict[int, Any]) -> dict[str, Any]:
        request = pickle.loads(blob)
        request["values"] = {
            name: _Unpickler(io.BytesIO(data), table).load()
            for name, data in request["values"].items()
        }
        return request

    def _server_objects(self) -> dict[int, Any]:
        """What a server has without being sent it: the model's objects, by id."""
        model = self.model
        table: dict[int, Any] = {}
        for _, envoy in model.named_modules():
            table[id(envoy)] = envoy
            module = envoy._module
            table[id(module)] = module
            for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
                table[id(tensor)] = tensor
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is not None:
            table[id(tokenizer)] = tokenizer
        return table


def _global_names(node: ast.With) -> Iterator[str]:
    """Names the block reads and never assigns (globals among them: the caller's
    locals are pulled)."""
    loaded: dict[str, None] = {}
    stored: set[str] = set()
    for statement in node.body:
        for child in ast.walk(statement):
            if isinstance(child, ast.Name):
                if isinstance(child.ctx, ast.Load):
                    loaded[child.id] = None
                else:
                    stored.add(child.id)
    return (name for name in loaded if name not in stored)


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, table: dict[int, Any]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._table = table

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, types.ModuleType):
            return ("module", obj.__name__)
        if isinstance(obj, (Envoy, Tracer)):
            self._table[id(obj)] = obj  # tracers and Envoys are the server's own
        if id(obj) in self._table and self._table[id(obj)] is obj:
            return ("server", id(obj))
        return None

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.FunctionType) and not _found_by_name(obj):
            return _function_by_value(obj)
        return NotImplemented


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, table: dict[int, Any]) -> None:
        super().__init__(file)
        self._table = table

    def persistent_load(self, pid: Any) -> Any:
        kind, key = pid
        if kind == "module":
            return importlib.import_module(key)
        return self._table[key]


def _found_by_name(function: types.FunctionType) -> bool:
    """Whether pickle can find ``function`` again by module and name (not ``__main__``)."""
    module = getattr(function, "__module__", None)
    if not module or module == "__main__" or "<" in function.__qualname__:
        return False
    try:
        found: Any = importlib.import_module(module)
        for part in function.__qualname__.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return False
    return found is function


def _function_by_value(function: types.FunctionType) -> tuple[Any, ...]:
    closure = tuple(cell.cell_contents for cell in function.__closure__ or ())
    return (
        _rebuild_function,
        (
            marshal.dumps(function.__code__),
            function.__module__,
            function.__name__,
            function.__defaults__,
            function.__kwdefaults__,
            closure,
        ),
    )


def _rebuild_function(
    code: bytes,
    module: str | None,
    name: str,
    defaults: tuple[Any, ...] | None,
    kwdefaults: dict[str, Any] | None,
    closure: tuple[Any, ...],
) -> types.FunctionType:
    globals_ = vars(importlib.import_module(module)) if module else {}
    cells = tuple(types.CellType(value) for value in closure) or None
    rebuilt = types.FunctionType(marshal.loads(code), globals_, name, defaults, cells)
    rebuilt.__kwdefaults__ = kwdefaults
    return rebuilt
