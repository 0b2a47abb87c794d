"""Where a run's rows live: chunk directories in endoscope-cache's format, one index.

``out/index.json`` is the index over every chunk: which dataset rows each chunk
holds, a hash of those rows' inputs, the run's fingerprint, the declared keys and
the rows that failed. Each chunk ``out/chunk-NNNNN/`` is an endoscope-cache directory
(safetensors shards plus ``manifest.json``) in which row ``i`` of the chunk is call
``i`` of the "module" named by the key. A chunk is written under a temporary name and
renamed into place, and only then is the index rewritten (temporary file, rename), so
a run killed at any point leaves an index that lists only whole chunks.
"""

from __future__ import annotations

import bisect
import json
import os
import shutil
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from endoscope_cache import Cache, CacheDict, load

__all__ = ["Column", "Store", "open_store"]

FORMAT = "endoscope-ray"
VERSION = 1
INDEX = "index.json"
# Chunks whose manifests stay parsed in one process (reading row by row in order
# touches one chunk at a time; a shuffled DataLoader touches many).
_OPEN_CHUNKS = 16


def chunk_name(number: int) -> str:
    return f"chunk-{number:05d}"


def read_index(out: Path) -> dict[str, Any] | None:
    """The index of ``out``, or None when there is none yet."""
    path = out / INDEX
    if not path.is_file():
        return None
    index = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{path} is not an endoscope-ray index")
    if index.get("version", 0) > VERSION:
        raise ValueError(
            f"{path} was written by a newer endoscope-ray (index version "
            f"{index['version']}, this one reads {VERSION}): upgrade endoscope-ray"
        )
    return index


def write_index(out: Path, index: Mapping[str, Any]) -> None:
    """Replace ``out/index.json`` atomically (a crash leaves the old or the new one)."""
    temporary = out / f".{INDEX}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(index, file, indent=1)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, out / INDEX)


def write_chunk(
    out: Path, number: int, rows: Mapping[str, Sequence[torch.Tensor]], shard_size: int
) -> str:
    """Write one chunk's rows (key -> row tensors, in row order); return its directory name.

    The chunk is complete on disk (renamed into place) when this returns; the caller
    then records it in the index.
    """
    name = chunk_name(number)
    temporary = out / f".{name}.tmp-{os.getpid()}"
    if temporary.exists():
        shutil.rmtree(temporary)
    with Cache(directory=temporary, shard_size=shard_size) as cache:
        for key, values in rows.items():
            record = cache.recorder(key)
            assert record is not None  # a Cache with no filter keeps every output
            for value in values:
                record(value)
    final = out / name
    if final.exists():  # left by a run killed between the rename and the index write
        shutil.rmtree(final)
    os.replace(temporary, final)
    return name


def clean_partial(out: Path, index: Mapping[str, Any]) -> None:
    """Remove what a killed run left that the index does not list."""
    listed = {chunk["dir"] for chunk in index.get("chunks", [])}
    for path in out.iterdir():
        if path.name.startswith(".chunk-") or path.name.startswith(f".{INDEX}.tmp-"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        elif path.name.startswith("chunk-") and path.name not in listed and path.is_dir():
            shutil.rmtree(path)


class Store:
    """The rows a run produced, by key: ``store["h6"][1000]``, ``store["h6"][10:20]``.

    Returned by :func:`endoscope_ray.map_traces` and :func:`open_store`. On disk only
    the index is read when the store is opened; each row is read from its chunk's
    memory-mapped safetensors shard when it is accessed. With ``out=None`` the rows
    are held in memory.

    Attributes:
        keys: the keys the step returned, in order.
        failed: ``(start, stop, message)`` of each batch that failed and was skipped
            (``on_error="skip"``); reading one of its rows raises ``KeyError``.
        path: the ``out`` directory, or None for an in-memory store.
    """

    def __init__(
        self,
        index: Mapping[str, Any],
        path: Path | None = None,
        rows: Mapping[str, list[torch.Tensor | None]] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self._index = dict(index)
        self.path = path
        self.device = torch.device(device)
        self.keys: list[str] = list(index.get("keys", {}))
        self.failed: list[tuple[int, int, str]] = [
            (int(f["start"]), int(f["stop"]), str(f["error"])) for f in index.get("failed", [])
        ]
        self._memory = rows
        chunks = sorted(index.get("chunks", []), key=lambda chunk: chunk["start"])
        self._chunks = chunks
        self._starts = [chunk["start"] for chunk in chunks]
        self._open: OrderedDict[int, CacheDict] = OrderedDict()
        self._rows = int(index["rows"]) if index.get("rows") is not None else None

    def __len__(self) -> int:
        """The number of dataset rows (failed rows included)."""
        if self._rows is not None:
            return self._rows
        return max((chunk["stop"] for chunk in self._chunks), default=0)

    @property
    def complete(self) -> bool:
        """Whether the run finished (every row done or recorded as failed)."""
        return bool(self._index.get("complete"))

    @property
    def tokens(self) -> int:
        """Tokens processed (counted from ``mask``/``lengths``; 0 without them)."""
        return int(self._index.get("tokens", 0))

    @property
    def timing(self) -> dict[str, float | None]:
        """Seconds the last call of map_traces spent loading models and running batches."""
        return dict(self._index.get("timing") or {})

    def __contains__(self, key: object) -> bool:
        return key in self.keys

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys)

    def __getitem__(self, key: str) -> Column:
        if key not in self.keys:
            raise KeyError(
                f"no key {key!r} in this run: the step returned {', '.join(map(repr, self.keys))}"
            )
        return Column(self, key)

    def _failure(self, row: int) -> str | None:
        for start, stop, message in self.failed:
            if start <= row < stop:
                return message
        return None

    def _row(self, key: str, row: int) -> torch.Tensor:
        failure = self._failure(row)
        if failure is not None:
            raise KeyError(f"row {row} has no value: its batch failed and was skipped: {failure}")
        if self._memory is not None:
            value = self._memory[key][row]
            assert value is not None
            return value.to(self.device)
        position = bisect.bisect_right(self._starts, row) - 1
        if position < 0 or row >= self._chunks[position]["stop"]:
            raise IndexError(f"row {row} was not written (the run has not reached it yet)")
        chunk = self._chunks[position]
        local = row - chunk["start"]
        # Rows of failed batches inside the chunk were not stored: skip over them.
        local -= sum(
            min(stop, row) - max(start, chunk["start"])
            for start, stop, _ in self.failed
            if start < row and stop > chunk["start"]
        )
        entries = self._chunk(position)
        entry = dict.__getitem__(entries, key)
        if isinstance(entry, list):
            entry = entry[local]
        output = entry.output
        assert isinstance(output, torch.Tensor)
        return output

    def _chunk(self, position: int) -> CacheDict:
        found = self._open.get(position)
        if found is None:
            assert self.path is not None
            found = load(self.path / self._chunks[position]["dir"], device=self.device)
            self._open[position] = found
            if len(self._open) > _OPEN_CHUNKS:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(position)
        return found

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers reopen chunks themselves.
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state

    def __repr__(self) -> str:
        where = "in memory" if self.path is None else str(self.path)
        keys = ", ".join(
            f"{key}: {info.get('dtype')}[rows, {', '.join(map(str, info.get('shape', [])))}]"
            for key, info in self._index.get("keys", {}).items()
        )
        state = "complete" if self.complete else "incomplete"
        return f"Store({len(self)} rows, {state}, {where}; {keys})"


class Column(torch.utils.data.Dataset):
    """One key's rows: ``column[i]`` is row ``i``'s tensor, ``column[a:b]`` a list of them.

    A ``torch.utils.data.Dataset``, so it feeds a ``DataLoader`` directly (rows of
    different lengths need a ``collate_fn``). Nothing is read until a row is accessed.
    """

    def __init__(self, store: Store, key: str) -> None:
        self.store = store
        self.key = key

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int | slice) -> Any:
        rows = len(self.store)
        if isinstance(index, slice):
            return [self.store._row(self.key, i) for i in range(*index.indices(rows))]
        index = int(index)
        if index < 0:
            index += rows
        if not 0 <= index < rows:
            raise IndexError(f"row {index} is out of range: {self.key!r} has {rows} rows")
        return self.store._row(self.key, index)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"Column({self.key!r}, {len(self)} rows)"


def open_store(out: str | os.PathLike[str], device: torch.device | str = "cpu") -> Store:
    """Open the rows a run wrote to ``out`` (in any process, finished or not).

    Args:
        out: the directory given to ``map_traces(..., out=...)``.
        device: where rows are placed when read.

    Returns:
        A :class:`Store`; only the index is read now.

    Raises:
        FileNotFoundError: ``out`` has no ``index.json``.
    """
    path = Path(out)
    index = read_index(path)
    if index is None:
        raise FileNotFoundError(
            f"{path} holds no endoscope-ray run (no {INDEX}): pass the directory given "
            f"to map_traces(..., out=...)"
        )
    return Store(index, path=path, device=device)
