"""``CacheDict``: cached entries keyed by module path, navigable like the module tree."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, KeysView, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._entry import Entry, EntryList

if TYPE_CHECKING:
    from ._journal import Interruption

__all__ = ["CacheDict"]

# Names read from the entry at a view's own path rather than navigated into.
_ENTRY_NAMES = ("output", "inputs", "input")
# How much of a large cache ``repr`` spells out.
_REPR_MODULES = 200
_REPR_CALLS = 8


def _strip(name: str) -> str:
    return name.strip().strip(".")


class _Suggested:
    """An AttributeError's ``obj`` with no attributes to suggest (see __getattr__)."""

    __slots__ = ()

    def __dir__(self) -> list[str]:
        return []


_SUGGESTED = _Suggested()


class _Names:
    """Module-path aliases: ``rename`` maps real fragments to aliases, ``alias`` the reverse.

    Fragments are matched as whole dotted components, so renaming ``h`` never touches
    ``c_attn_h``.
    """

    __slots__ = ("_to_alias", "_to_real", "alias", "rename")

    def __init__(self, rename: Mapping[str, str] | None, alias: Mapping[str, str] | None):
        if not rename and not alias:  # the usual case, made once per cache
            self.rename = {}
            self.alias = {}
            self._to_alias = []
            self._to_real = []
            return
        self.rename = {_strip(k): _strip(v) for k, v in (rename or {}).items()}
        self.alias = {_strip(k): _strip(v) for k, v in (alias or {}).items()}
        pairs = dict(self.rename)
        for nick, real in self.alias.items():
            pairs.setdefault(real, nick)
        # Longest fragments first, so "transformer.h" wins over "h".
        self._to_alias = sorted(
            ((real.split("."), nick.split(".")) for real, nick in pairs.items()),
            key=lambda pair: -len(pair[0]),
        )
        self._to_real = sorted(
            ((nick.split("."), real.split(".")) for real, nick in pairs.items()),
            key=lambda pair: -len(pair[0]),
        )

    def __bool__(self) -> bool:
        return bool(self._to_alias)

    @staticmethod
    def _translate(path: str, table: list[tuple[list[str], list[str]]]) -> str:
        if not table:
            return path
        tokens = path.split(".")
        out: list[str] = []
        i = 0
        while i < len(tokens):
            for source, target in table:
                if tokens[i : i + len(source)] == source:
                    out.extend(target)
                    i += len(source)
                    break
            else:
                out.append(tokens[i])
                i += 1
        return ".".join(out)

    def to_real(self, path: str) -> str:
        """Replace every alias fragment in ``path`` by the real one."""
        return self._translate(path, self._to_real)

    def to_alias(self, path: str) -> str:
        """Replace every renamed fragment in ``path`` by its alias."""
        return self._translate(path, self._to_alias)


class CacheDict(dict[str, Any]):
    """Cached activations keyed by module path, with attribute and index navigation.

    Keys are full module paths (``"model.transformer.h.0"``); values are an
    :class:`Entry` for a module that ran once, or an :class:`EntryList` with one entry
    per call for a module that ran several times. Besides key access, the tree can be
    walked like the model: ``cache.model.transformer.h[0]`` returns a view (itself a
    ``CacheDict`` holding the entries under that path), and on any view ``.output``,
    ``.inputs`` and ``.input`` read the entry at the view's own path (one value per call
    if the module ran several times). Negative indices and slices pick among the cached
    numbered children: ``cache.model.h[-1]``, ``cache.model.h[2:4]``.

    Names given through ``rename`` (real fragment to alias) or ``alias`` (alias to real
    fragment) are accepted wherever a path is: ``cache.model.layers[0]`` when
    ``rename={"transformer.h": "layers"}``.

    A module whose name clashes with a ``dict`` method (``keys``, ``items``, ...) or
    with ``dump``, ``complete`` or ``lost`` is reached by key: ``cache["model.keys"]``.

    A cache opened with ``load(..., allow_incomplete=True)`` from a directory whose
    writer did not finish has ``complete`` False and names what was lost in ``lost``;
    its ``repr`` says so, and so do the errors for values it does not hold.

    Args:
        data: initial entries, path to ``Entry`` or list of entries.
        rename: real path fragment to alias.
        alias: alias to real path fragment.

    Raises:
        AttributeError: an unknown name (the message names the nearest cached paths), or
            ``.output``/``.inputs`` where nothing of that kind was cached.
        IndexError: an index past the cached children of a module list.
        KeyError: an unknown path given as a key.
    """

    _path: str
    _root: CacheDict | None
    _names: _Names
    _slots: dict[str, dict[int | None, tuple[Entry, int]]]
    _location: str | None
    # The kinds the filling cache does not keep (flags of _entry.switched_off):
    # new entries read None for them.
    _off: int = 0
    _interruption: Interruption | None

    def __init__(
        self,
        data: Mapping[str, Entry | list[Entry]] | None = None,
        *,
        rename: Mapping[str, str] | None = None,
        alias: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self._path = ""
        self._root = None  # views point at their root; the root at nothing (no cycle)
        self._names = _Names(rename, alias)
        self._slots = {}
        self._location = None
        self._interruption = None  # set by load() on a cache whose writer did not finish
        for path, value in (data or {}).items():
            if isinstance(value, Entry):
                dict.__setitem__(self, path, value)
            elif isinstance(value, list) and all(isinstance(e, Entry) for e in value):
                dict.__setitem__(self, path, value[0] if len(value) == 1 else EntryList(value))
            else:
                raise TypeError(
                    f"CacheDict values must be Entry objects or lists of them; "
                    f"{path!r} holds {type(value).__name__}"
                )

    # -- filling (root only) -------------------------------------------------------

    def _slot(self, path: str, kind: str, iteration: int | None) -> tuple[Entry, int]:
        """The entry a value of ``kind`` for call ``iteration`` of ``path`` goes into.

        The input and output of one call share an entry; a call whose slot is already
        taken (a repeated iteration number) starts a new one.
        """
        slots = self._slots.get(path)
        if slots is None:
            if dict.__contains__(self, path):
                slots = self._rebuild_slots(path)
            else:
                entry = Entry._empty(iteration, self._off)
                dict.__setitem__(self, path, entry)
                self._slots[path] = {iteration: (entry, 0), None: (entry, 0)}
                return entry, 0
        found = slots.get(iteration)
        if found is not None and not found[0]._has(kind):
            return found
        entry = Entry._empty(iteration, self._off)
        current = dict.__getitem__(self, path)
        if isinstance(current, EntryList):
            current.append(entry)
            index = len(current) - 1
        else:
            dict.__setitem__(self, path, EntryList([current, entry]))
            index = 1
        slots[iteration] = slots[None] = (entry, index)
        return entry, index

    def _rebuild_slots(self, path: str) -> dict[int | None, tuple[Entry, int]]:
        current = dict.__getitem__(self, path)
        entries = list(current) if isinstance(current, list) else [current]
        slots: dict[int | None, tuple[Entry, int]] = {}
        for index, entry in enumerate(entries):
            slots[entry.iteration] = slots[None] = (entry, index)
        self._slots[path] = slots
        return slots

    def _put(self, path: str, index: int, kind: str, iteration: int | None, value: Any) -> None:
        """Store ``value`` as ``kind`` of the ``index``-th entry of ``path`` (used by load)."""
        current = dict.get(self, path)
        entries = (
            [] if current is None else list(current) if isinstance(current, list) else [current]
        )
        while len(entries) <= index:
            entries.append(Entry._empty(iteration, self._off))
        entries[index].iteration = iteration
        entries[index]._set(kind, value)
        dict.__setitem__(self, path, entries[0] if len(entries) == 1 else EntryList(entries))
        self._slots.pop(path, None)

    # -- navigation ----------------------------------------------------------------

    def _root_dict(self) -> CacheDict:
        return self if self._root is None else self._root

    def _join(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def _below(self, path: str) -> bool:
        prefix = path + "."
        return any(key.startswith(prefix) for key in dict.keys(self))

    def _has(self, path: str) -> bool:
        return dict.__contains__(self, path) or self._below(path)

    def _view(self, path: str) -> CacheDict:
        view = type(self).__new__(type(self))
        prefix = path + "."
        dict.update(
            view,
            ((k, v) for k, v in dict.items(self) if k == path or k.startswith(prefix)),
        )
        root = self._root_dict()
        view._path = path
        view._root = root
        view._names = root._names
        view._slots = root._slots
        view._location = root._location
        view._interruption = root._interruption
        return view

    def _children(self) -> list[str]:
        """Names one level below this view, in the order they were first cached."""
        prefix = self._path + "." if self._path else ""
        names: dict[str, None] = {}
        for key in dict.keys(self):
            if key.startswith(prefix) and key != self._path:
                names[key[len(prefix) :].split(".", 1)[0]] = None
        return list(names)

    def _numbered(self) -> list[int]:
        return sorted(int(name) for name in self._children() if name.isdigit())

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self._lookup(key)
        if isinstance(key, int) and not isinstance(key, bool):
            return self._index(key)
        if isinstance(key, slice):
            return [self._view(self._join(str(n))) for n in self._numbered()[key]]
        raise TypeError(
            f"CacheDict keys are module paths (str) or child indices (int, slice), "
            f"not {type(key).__name__}"
        )

    def _lookup(self, key: str) -> Any:
        if dict.__contains__(self, key):  # a full path, as iteration yields them
            return dict.__getitem__(self, key)
        full = self._join(_strip(key))
        if dict.__contains__(self, full):
            return dict.__getitem__(self, full)
        if self._below(full):
            return self._view(full)
        root = self._root_dict()
        real = self._names.to_real(full)
        if real != full:
            if dict.__contains__(root, real):
                return dict.__getitem__(root, real)
            if root._below(real):
                return root._view(real)
        raise KeyError(self._unknown(key, full))

    def _index(self, index: int) -> CacheDict:
        numbers = self._numbered()
        position = index
        if index < 0:
            if -index > len(numbers):
                raise IndexError(self._bad_index(index, numbers))
            position = numbers[index]
        full = self._join(str(position))
        if self._has(full):
            return self._view(full)
        raise IndexError(self._bad_index(index, numbers))

    def __getattr__(self, name: str) -> Any:
        # Private and dunder names are never module names; failing fast keeps copy,
        # pickle and IPython's attribute probing away from the path machinery.
        if name.startswith("_"):
            raise AttributeError(name)
        if name in _ENTRY_NAMES:
            return self._entry_value(name)
        full = self._join(name)
        if self._has(full):
            return self._view(full)
        root = self._root_dict()
        real = self._names.to_real(full)
        if real != full and root._has(real):
            return root._view(real)
        # The message names the nearest paths: an obj with nothing in dir() keeps
        # Python's printer (3.12+, 3.11 uncaught) from adding a "Did you mean" of
        # its own, from this dict's __dir__.
        raise AttributeError(self._unknown(name, full), name=name, obj=_SUGGESTED)

    def __dir__(self) -> Iterable[str]:
        names = [name for name in self._children() if name.isidentifier()]
        return [*super().__dir__(), *_ENTRY_NAMES, *names]

    def _entry_value(self, name: str) -> Any:
        if not self._path:
            example = next(iter(dict.keys(self)), "model")
            raise AttributeError(
                f"the cache root has no {name}: navigate to a module first, "
                f"e.g. cache[{example!r}].{name}"
            )
        if not dict.__contains__(self, self._path):
            below = list(dict.keys(self))[:5]
            raise AttributeError(
                f"nothing was cached for {self._path!r} itself, only for modules under it "
                f"({', '.join(below)}): read one of those, or include {self._path!r} in "
                f"modules= when creating the cache.{self._note()}"
            )
        value = dict.__getitem__(self, self._path)
        try:
            return getattr(value, name)
        except AttributeError as error:
            raise AttributeError(f"{self._path!r}: {error}.{self._note()}") from None

    # -- messages ------------------------------------------------------------------

    def _unknown(self, name: str, full: str) -> str:
        root = self._root_dict()
        if not dict.__len__(root):
            return (
                f"no cached module {full!r}: the cache is empty. Check modules=, "
                f"include_output/include_inputs, and that the model ran.{self._note()}"
            )
        names = root._names
        pool: dict[str, None] = {}
        for key in dict.keys(root):
            for spelling in (key, names.to_alias(key)) if names else (key,):
                parts = spelling.split(".")
                for depth in range(1, len(parts) + 1):
                    pool[".".join(parts[:depth])] = None
        # Match the aliased spelling first: a user who navigated by alias reads aliases.
        queries = dict.fromkeys([names.to_alias(full), full] if names else [full])
        found: dict[str, None] = {}
        for query in queries:
            found.update(dict.fromkeys(difflib.get_close_matches(query, list(pool), n=3)))
        nearest = list(found)[:3]
        children = self._children()
        if not nearest:
            nearest = [self._join(c) for c in difflib.get_close_matches(name, children, n=3)]
        where = f"under {self._path!r}" if self._path else "at the top level"
        hint = (
            f"nearest cached paths: {', '.join(nearest)}"
            if nearest
            else f"cached names {where}: {', '.join(children[:10])}"
        )
        return (
            f"no cached module {full!r}; {hint}. Check the spelling; a module that was "
            f"filtered out by modules= or never ran is not in the cache.{self._note()}"
        )

    def _bad_index(self, index: int, numbers: list[int]) -> str:
        where = repr(self._path) if self._path else "the cache root"
        if numbers:
            return (
                f"index {index} is out of range for {where}: cached indices are {_ranges(numbers)}"
            )
        message = f"{where} has no numbered children to index"
        children = self._children()
        if children:
            message += f"; its cached children are {', '.join(children[:10])}"
        own = dict.get(self, self._path)
        if isinstance(own, EntryList):
            message += (
                f". It ran {len(own)} times: pick one call with cache[{self._path!r}][{index}]"
            )
        return message + self._note()

    def _note(self) -> str:
        """What a missing value may mean in an incomplete cache; empty otherwise."""
        interruption = self._interruption
        return "" if interruption is None else interruption.note()

    # -- the dict surface ------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """Whether the writer of this cache finished.

        False for a cache opened with ``load(..., allow_incomplete=True)`` from a
        directory whose writer was interrupted or is still running; True otherwise.
        """
        return self._interruption is None

    @property
    def lost(self) -> tuple[str, ...]:
        """The values an incomplete cache's writer had started but not written.

        Named like ``"model.h.3.output.i0"``; reading one raises ``LostValueError``.
        Empty for a complete cache. Values the writer had not reached are not known.
        """
        interruption = self._interruption
        return () if interruption is None else interruption.lost

    def keys(self, alias: bool = False) -> KeysView[str]:  # type: ignore[override]
        """Cached module paths.

        Args:
            alias: spell each path with the ``rename`` aliases instead.
        """
        if not alias:
            return dict.keys(self)
        return dict.fromkeys(self._names.to_alias(k) for k in dict.keys(self)).keys()

    def dump(self, directory: str | Path, *, shard_size: int | None = None) -> Path:
        """Write these entries to ``directory`` (see :func:`endoscope_cache.dump`)."""
        from ._disk import dump  # _disk builds CacheDicts, so it imports this module

        return dump(self, directory, shard_size=shard_size)

    def __repr__(self) -> str:
        keys = list(dict.keys(self))
        where = "in memory" if self._location is None else f"on disk at {self._location}"
        interruption = self._interruption
        if interruption is not None:
            where += (
                f", INCOMPLETE: {interruption.state()}, {len(interruption.lost)} started "
                f"values lost"
            )
        label = f"{self._path!r}, " if self._path else ""
        count = f"{len(keys)} module{'' if len(keys) == 1 else 's'}"
        lines = [f"CacheDict({label}{count}, {where})"]
        width = min(max((len(k) for k in keys), default=0), 48)
        for key in keys[:_REPR_MODULES]:
            lines.extend(_describe_path(key, dict.__getitem__(self, key), width))
        if len(keys) > _REPR_MODULES:
            lines.append(f"  ... {len(keys) - _REPR_MODULES} more modules")
        return "\n".join(lines)


def _describe_path(key: str, value: Any, width: int) -> list[str]:
    if isinstance(value, Entry):
        return [f"  {key:<{width}}  {value.describe()}"]
    lines = [f"  {key:<{width}}  {len(value)} calls"]
    for index, entry in enumerate(value[:_REPR_CALLS]):
        tag = f"i{entry.iteration}" if entry.iteration is not None else f"#{index}"
        lines.append(f"    {tag}: {entry.describe()}")
    if len(value) > _REPR_CALLS:
        lines.append(f"    ... {len(value) - _REPR_CALLS} more calls")
    return lines


def _ranges(numbers: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``"0-2, 5"``."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
