"""``Cache``: filters, transforms and stores the values hooks report, in memory or on disk."""

from __future__ import annotations

import atexit
import sys
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from ._cachedict import CacheDict
from ._entry import _OUTPUT, Entry, EntryList, off_kinds, switched_off
from ._errors import describe_error
from ._nested import map_tensors
from ._shards import DEFAULT_SHARD_SIZE, StoredValue
from ._writer import ShardWriter

__all__ = ["Cache", "parse_provider"]

# The output recorders write this flag as a literal.
assert _OUTPUT == 1

# Memo sizes. Heads ("<path>.<output|input>") are bounded by the model's modules and
# operations; the limit only guards against a caller inventing endless strings.
_MEMO_LIMIT = 1 << 16
_MISSING: Any = object()
# "i12" -> 12 for every iteration suffix seen so far, shared by all caches: parsing the
# number is the costliest step of add() otherwise.
_ITERATIONS: dict[str, int] = {}
# What a parsed provider says: module path, "output" or "inputs", call number.
Target = tuple[str, str, "int | None"]


def _close_left_open(writer: ShardWriter) -> None:
    """Close the writer of a disk cache nobody closed (dropped, or open at exit).

    A dropped cache, or one still open when the interpreter exits normally, is
    complete. One still open when it exits on an uncaught exception is not: the
    run that was writing it died part-way, so it is left incomplete, naming the
    exception (what a ``with`` block or ``close(error=)`` would have done).
    """
    failure = None
    if _Exit.started:
        # Set by the interpreter when it printed an uncaught exception's traceback.
        error = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
        if error is not None:
            failure = f"{describe_error(error)}, uncaught: the process exited before close()"
    writer.close(failure)


class _Exit:
    """Whether the interpreter is exiting, for :func:`_close_left_open`."""

    hooked = False
    started = False

    @classmethod
    def hook(cls) -> None:
        # weakref.finalize runs its callbacks at exit from an atexit handler that
        # it registers with the first finalizer; registered after it, this one runs
        # before it (atexit is last in, first out) and marks the exit.
        if not cls.hooked:
            cls.hooked = True
            atexit.register(cls._start)

    @classmethod
    def _start(cls) -> None:
        cls.started = True


def parse_provider(provider: str) -> Target | None:
    """Split ``<module path>.<input|output>.i<iteration>`` into its parts.

    The iteration suffix may be left out (``"model.fc.output"``): the value then goes
    to the module's latest call. Paths through ``.source.`` name operations inside a
    forward, not modules, and are not cache entries.

    Args:
        provider: the provider string a hook reports.

    Returns:
        ``(module_path, "output" | "inputs", iteration)``, or None when the string does
        not name a module's input or output.
    """
    head, dot, tail = provider.rpartition(".")
    iteration: int | None = None
    if dot and tail[:1] == "i" and tail[1:].isascii() and tail[1:].isdigit():
        iteration = int(tail[1:])
        path, dot, key = head.rpartition(".")
    else:
        path, key = head, tail
    if not dot or not path or ".source." in path:
        return None
    if key == "output":
        return path, "output", iteration
    if key == "input":
        return path, "inputs", iteration
    return None


def _as_inputs(value: Any) -> tuple[Any, Any]:
    """Normalise a module's inputs to ``(args, kwargs)``.

    Hooks report ``(args, kwargs)``; a bare tuple is taken as positional arguments
    and any other value as the single positional argument.
    """
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], (tuple, list))
        and isinstance(value[1], dict)
    ):
        return value
    if isinstance(value, tuple):
        return value, {}
    return (value,), {}


def _module_paths(modules: Any) -> frozenset[str] | None:
    if modules is None:
        return None
    if isinstance(modules, str) or hasattr(modules, "path"):
        modules = [modules]  # a single path; iterating a str would give its characters
    paths = set()
    for module in modules:
        if isinstance(module, str):
            paths.add(module)
        elif isinstance(getattr(module, "path", None), str):
            paths.add(module.path)
        else:
            raise TypeError(
                f"modules= takes module path strings (e.g. 'model.transformer.h.0') or "
                f"objects with a .path attribute, not {type(module).__name__}"
            )
    return frozenset(paths)


def _tensor_transform(
    detach: bool, device: torch.device | None, dtype: torch.dtype | None
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The per-tensor work the options ask for, or None when there is none.

    Each step is skipped when it would not change the tensor: checking
    ``requires_grad`` or ``device`` costs a fraction of a no-op ``detach()`` or ``to()``.
    """
    if not detach and device is None and dtype is None:
        return None

    def transform(t: torch.Tensor) -> torch.Tensor:
        if detach and t.requires_grad:
            t = t.detach()
        # Only floating-point tensors change dtype: token ids and masks stay exact.
        convert = dtype is not None and t.dtype != dtype and t.is_floating_point()
        move = device is not None and t.device != device
        if convert or move:
            t = t.to(device=device if move else t.device, dtype=dtype if convert else t.dtype)
        return t

    return transform


_DEVICES: dict[Any, torch.device] = {}
_TRANSFORMS: dict[Any, Callable[[torch.Tensor], torch.Tensor] | None] = {}


def _device(device: torch.device | str) -> torch.device:
    """``torch.device(device)``, remembered per string (a Cache is made per trace)."""
    if isinstance(device, torch.device):
        return device
    found = _DEVICES.get(device)
    if found is None:
        found = torch.device(device)
        if len(_DEVICES) < 64:
            _DEVICES[device] = found
    return found


def _shared_transform(
    detach: bool, device: torch.device | None, dtype: torch.dtype | None
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """:func:`_tensor_transform`, one per combination of options (it holds no state)."""
    key = (detach, device, dtype)
    found = _TRANSFORMS.get(key, _MISSING)
    if found is _MISSING:
        found = _tensor_transform(detach, device, dtype)
        if len(_TRANSFORMS) < 64:
            _TRANSFORMS[key] = found
    return found


class Cache:
    """Collects module inputs and outputs reported by hooks, keyed by module path.

    Hooks call :meth:`add` with a provider string such as
    ``"model.transformer.h.0.output.i0"`` and the value; the cache keeps what its
    filters allow, transformed, in :attr:`cache` (a :class:`CacheDict`). With
    ``directory``, values are streamed to safetensors shards instead of kept in memory
    (see :func:`endoscope_cache.load`); call :meth:`close` (or use the cache as a
    context manager) when the run is over so the last shard is written.

    Args:
        modules: module paths (or objects with a ``.path``) to cache; None caches all.
        device: where cached tensors are moved; None leaves them where they are. With
            ``directory``, where tensors read back from disk are placed.
        dtype: floating-point dtype cached floating tensors are converted to; integer
            and boolean tensors keep theirs. None keeps every dtype.
        detach: cache tensors detached from the autograd graph. A cached tensor on its
            original device shares storage with the model's (as a hook capture would);
            in-place changes made later by the model show through.
        include_output: cache each module's return value.
        include_inputs: cache each module's ``(args, kwargs)``.
        rename: real path fragment to alias, as given to the model wrapper.
        alias: alias to real path fragment.
        directory: stream to this new directory instead of keeping values in memory.
        shard_size: bytes per shard when streaming (the memory the writer uses).
        fsync: when streaming, force each shard and manifest to the device before
            renaming it into place (a power cut, not only a killed process, then
            leaves a consistent cache). ``False`` is faster on slow disks.
        append: with ``directory``, add to the cache already there (complete, or left
            incomplete by an interrupted writer) instead of refusing. Every shard it
            lists is checked first (size and CRC-32: one read of the whole cache) and
            what the interruption left is cleared; its values stay readable through
            :attr:`cache`, and new calls of a module come after its old ones. Without
            a cache there, a new one is started.

    Raises:
        FileExistsError: ``directory`` holds a cache and ``append`` is false.
        RuntimeError: another writer is writing to ``directory`` right now.
        CorruptCacheError: with ``append``, a shard of the existing cache is damaged.
        ValueError: ``append`` without ``directory``, or the cache there was written
            with other ``rename``/``alias``.

    Attributes:
        cache: the :class:`CacheDict` of entries.
    """

    Entry = Entry
    EntryList = EntryList
    CacheDict = CacheDict

    def __init__(
        self,
        modules: Iterable[Any] | str | None = None,
        device: torch.device | str | None = "cpu",
        dtype: torch.dtype | None = None,
        detach: bool = True,
        include_output: bool = True,
        include_inputs: bool = False,
        rename: Mapping[str, str] | None = None,
        alias: Mapping[str, str] | None = None,
        directory: str | Path | None = None,
        *,
        shard_size: int = DEFAULT_SHARD_SIZE,
        fsync: bool = True,
        append: bool = False,
    ) -> None:
        if append and directory is None:
            raise ValueError("append=True adds to a cache on disk: pass directory= too")
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype, e.g. torch.float16, not {dtype!r}")
        self.modules = _module_paths(modules)
        self.device = None if device is None else _device(device)
        self.dtype = dtype
        self.detach = bool(detach)
        self.include_output = bool(include_output)
        self.include_inputs = bool(include_inputs)
        self.directory = None if directory is None else Path(directory)
        self.cache = CacheDict(rename=rename, alias=alias)
        self.cache._off = switched_off(self.include_output, self.include_inputs)
        # "<path>.<output|input>" -> (path, kind), or None when filtered out.
        self._heads: dict[str, tuple[str, str] | None] = {}
        self._writer: ShardWriter | None = None
        # recorder(path) for outputs, when the fast in-memory path applies.
        self._make_output: Callable[[str], Callable[[Any], None]] | None = None
        if self.directory is None:
            self._transform = _shared_transform(self.detach, self.device, dtype)
        else:
            # On disk every tensor is detached and copied to the host by the writer;
            # the device applies when values are read back.
            self._transform = _shared_transform(False, None, dtype)
            self._writer = ShardWriter(
                self.directory,
                shard_size=shard_size,
                device=self.device,
                header={
                    "rename": self.cache._names.rename,
                    "alias": self.cache._names.alias,
                    "switched_off": off_kinds(self.cache._off),
                },
                fsync=fsync,
                append=append,
            )
            self.cache._location = str(self.directory)
            if self._writer.resumed:
                self._resume(self._writer)
            # Write the last shard even if close() is never called.
            self._finalizer = weakref.finalize(self, _close_left_open, self._writer)
            _Exit.hook()
        if self._writer is None and dtype is None:
            self._make_output = self._output_recorders()

    def _resume(self, writer: ShardWriter) -> None:
        """Put the values of the cache being appended to into :attr:`cache`."""
        cache = self.cache
        for record in writer.resumed:
            value = StoredValue(record["value"], writer)
            cache._put(record["path"], record["index"], record["kind"], record["iteration"], value)
        # No slots to fill: every value from now on starts a new entry after the old
        # ones, even where an old entry lacks its other kind or shares an iteration.
        cache._slots = {path: {} for path in dict.keys(cache)}

    def _target(self, provider: str) -> Target | None:
        """Parse and filter ``provider``; remember the verdict for its head."""
        target = parse_provider(provider)
        if target is not None:
            path, kind, _ = target
            if (
                (self.modules is not None and path not in self.modules)
                or (kind == "output" and not self.include_output)
                or (kind == "inputs" and not self.include_inputs)
            ):
                target = None
        head, _, tail = provider.rpartition(".")
        if tail[:1] == "i" and tail[1:].isascii() and tail[1:].isdigit():
            # Only providers with an iteration suffix take the memoised path in add().
            if len(self._heads) >= _MEMO_LIMIT:
                self._heads.clear()
            self._heads[head] = None if target is None else (target[0], target[1])
            if len(_ITERATIONS) < _MEMO_LIMIT:
                _ITERATIONS[tail] = int(tail[1:])
        return target

    def add(self, provider: str, value: Any) -> None:
        """Cache ``value`` under the module and call that ``provider`` names.

        Each ``<path>.<output|input>`` head is parsed and filtered once; after that a
        filtered-out provider costs one string split and two dictionary lookups.

        Args:
            provider: ``<module path>.<input|output>.i<iteration>``. Inputs are
                ``(args, kwargs)``; ``.source.`` operation paths are ignored.
            value: the output, or the inputs, of that call.
        """
        head, _, tail = provider.rpartition(".")
        iteration = _ITERATIONS.get(tail)
        known = _MISSING if iteration is None else self._heads.get(head, _MISSING)
        if known is None:
            return
        if known is _MISSING:
            target = self._target(provider)
            if target is None:
                return
            path, kind, iteration = target
        else:
            path, kind = known
        self._store(path, kind, iteration, value)

    def _store(self, path: str, kind: str, iteration: int | None, value: Any) -> None:
        """Transform ``value`` and file it as ``kind`` of call ``iteration`` of ``path``."""
        if self._writer is not None and self._writer.closed:
            raise ValueError(f"the disk cache at {self.directory} is closed; create a new Cache")
        if kind == "inputs":
            value = _as_inputs(value)
        transform = self._transform
        if transform is not None:
            value = (
                transform(value) if type(value) is torch.Tensor else map_tensors(value, transform)
            )
        entry, index = self.cache._slot(path, kind, iteration)
        if self._writer is not None:
            value = self._writer.write_value(path, index, iteration, kind, value)
        entry._set(kind, value)

    def recorder(self, path: str, kind: str = "output") -> Callable[[Any], None] | None:
        """A function that records every call of one module, for hooks on the hot path.

        ``recorder(path)(value)`` stores what ``add(f"{path}.output.i{n}", value)``
        would, where ``n`` counts the recorder's own calls from 0: the filter, the
        provider parsing and the choice of transform are done here, once, so each
        call only transforms ``value`` and files it. Use one recorder per module,
        kind and run, called once per call of the module (a module that runs several
        times gets an :class:`EntryList`, as with ``add``). A path's output and
        inputs recorders share one entry per call.

        Unlike ``add``, ``path`` is taken as the module path it is: a module with a
        component named ``source`` in its path is recorded.

        Args:
            path: the module's path, e.g. ``"model.transformer.h.0"``.
            kind: ``"output"`` (each call's return value) or ``"inputs"`` (each
                call's ``(args, kwargs)``; ``"input"`` is accepted too).

        Returns:
            ``record(value)``, or None when this cache keeps nothing of that kind for
            ``path`` (filtered out by ``modules``, ``include_output`` or
            ``include_inputs``).

        Raises:
            ValueError: ``kind`` names neither the output nor the inputs.

        Example:
            >>> cache = Cache()
            >>> record = cache.recorder("model.fc")
            >>> record(torch.ones(2))
            >>> cache.cache["model.fc"].output
            tensor([1., 1.])
        """
        return self.recorders((path,), kind)[0]

    def recorders(
        self, paths: Iterable[str], kind: str = "output"
    ) -> list[Callable[[Any], None] | None]:
        """:meth:`recorder` for each of ``paths``, in order, made in one go.

        The cheaper way to equip many modules at once (a cache of every module).

        Args:
            paths: module paths.
            kind: ``"output"`` or ``"inputs"`` (``"input"`` is accepted too).

        Returns:
            One ``record(value)`` per path, None where the cache keeps nothing.

        Raises:
            ValueError: ``kind`` names neither the output nor the inputs.
        """
        if kind == "output":
            make = self._make_output
            if make is not None and self.modules is None and self.include_output:
                return list(map(make, paths))
            keep = self.include_output
        elif kind == "inputs" or kind == "input":
            kind = "inputs"
            keep = self.include_inputs
            make = None
        else:
            raise ValueError(f"kind must be 'output' or 'inputs', not {kind!r}")
        modules = self.modules
        found: list[Callable[[Any], None] | None] = []
        for path in paths:
            if not keep or (modules is not None and path not in modules):
                found.append(None)
            elif make is not None:
                found.append(make(path))
            else:
                found.append(self._general_recorder(path, kind))
        return found

    def _general_recorder(self, path: str, kind: str) -> Callable[[Any], None]:
        store = self._store
        calls = 0

        def record(value: Any) -> None:
            nonlocal calls
            call = calls
            calls = call + 1
            store(path, kind, call, value)

        return record

    def _output_recorders(self) -> Callable[[str], Callable[[Any], None]]:
        """``make(path)``: the recorder of ``path``'s outputs kept in memory, no dtype.

        ``add``'s steps, bound once per cache: a module's first call is transformed
        (detach and move only when that changes it) and makes its entry directly (the
        cache dict rebuilds its slot bookkeeping from the entry if the module runs
        again). Later calls go through :meth:`_store`.
        """
        assert self._writer is None and self.dtype is None
        cache = self.cache
        setdefault = dict.setdefault
        empty = Entry._empty
        flags = _OUTPUT | cache._off
        store = self._store
        transform = self._transform
        tensor = torch.Tensor

        def make(path: str) -> Callable[[Any], None]:
            calls = 0

            def record(value: Any) -> None:
                nonlocal calls
                call = calls
                calls = call + 1
                if call:
                    store(path, "output", call, value)
                    return
                if transform is not None:
                    value = (
                        transform(value)
                        if value.__class__ is tensor
                        else map_tensors(value, transform)
                    )
                entry = empty(0)
                entry._output = value  # _set("output", value), inlined
                entry._flags = flags
                if setdefault(cache, path, entry) is not entry:
                    # The path has entries already (from add()): file it as add() would.
                    store(path, "output", 0, value)

            return record

        return make

    def flush(self) -> None:
        """With ``directory``: write buffered tensors and update the manifest now."""
        if self._writer is not None:
            self._writer.flush()

    def close(self, error: BaseException | None = None) -> None:
        """With ``directory``: flush and mark the cache complete. Values stay readable.

        Args:
            error: the exception that stopped the run recording into this cache
                before its end. Every value recorded so far is still written, but
                the cache is left incomplete, naming ``error``: :func:`load` then
                says the rest is missing and why, rather than passing a part for
                the whole. ``Cache(directory=...)`` used in a ``with`` statement
                passes the exception that leaves the block.
        """
        if self._writer is not None:
            self._writer.close(None if error is None else describe_error(error))

    def __enter__(self) -> Cache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(exc)

    def __repr__(self) -> str:
        return f"Cache(\n{self.cache!r}\n)"
