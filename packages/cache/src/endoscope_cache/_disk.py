"""Opening a cache directory (``load``) and writing an in-memory cache to one (``dump``)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from ._cachedict import CacheDict
from ._entry import KINDS, Entry, EntryList, off_flags, off_kinds
from ._errors import IncompleteCacheError, IncompleteCacheWarning
from ._journal import (
    Interruption,
    LostValue,
    Started,
    provider,
    read_journal,
    writer_running,
)
from ._shards import (
    DEFAULT_SHARD_SIZE,
    ShardReader,
    StoredValue,
    read_manifest,
    shard_checks,
)
from ._writer import ShardWriter

__all__ = ["dump", "load", "read_manifest"]


def load(
    directory: str | Path,
    device: torch.device | str | None = "cpu",
    *,
    allow_incomplete: bool = False,
    verify: bool = True,
) -> CacheDict:
    """Open a cache directory written by ``Cache(directory=...)`` or :func:`dump`.

    Navigation is the same as for the in-memory cache; tensors are read from the
    shards each time a value is accessed (``.output``, ``.inputs``, ``.input``), so
    opening a large cache costs only the manifest with its records and shard table
    (``records.jsonl``, ``shards.jsonl``) and one ``stat`` per shard.

    A cache whose writer did not finish (killed, crashed, still running, or closed
    after an error ended the run writing it) raises :class:`IncompleteCacheError`,
    which names what is complete and why the rest is missing. With
    ``allow_incomplete=True`` it opens with the values recorded before the
    interruption, with a :class:`IncompleteCacheWarning`; the result's ``complete``
    is False, ``lost`` names the values the writer had started but not written,
    and reading one of those raises :class:`LostValueError`.

    Dataclass and named-tuple values are rebuilt by importing their class by name, so
    open only caches you trust, as with ``pickle``.

    Args:
        directory: the cache directory.
        device: where tensors are placed when read.
        allow_incomplete: open an incomplete cache's complete part instead of raising.
        verify: check the CRC-32 of the committed records and shard table and each
            shard's size when opening, and a shard's CRC-32 the first time a value in
            it is read (one pass over that shard's bytes). ``False`` skips these, to
            read what is left of a damaged cache.

    Returns:
        A :class:`CacheDict` over the directory.

    Raises:
        FileNotFoundError: no manifest, or a shard it lists is missing.
        IncompleteCacheError: the writer did not finish and ``allow_incomplete`` is false.
        CorruptCacheError: a shard is truncated (on opening) or its bytes changed (on
            the first read from it), or the records or shard table file is shorter
            than its manifest commits or damaged; the message names the file.
    """
    directory = Path(directory)
    manifest = read_manifest(directory, check_sizes=verify)
    records = manifest["records"]
    interruption = None
    if not manifest.get("complete", False):
        interruption, lost = _interruption(
            directory, records, len(manifest.get("shards", [])), manifest.get("failure")
        )
        where = f"the cache at {directory} is incomplete: {interruption.state()}"
        if not allow_incomplete:
            raise IncompleteCacheError(
                f"{where}. It holds only what was recorded before that: "
                f"{interruption.summary()}. Open that part with endoscope_cache.load("
                f"{str(directory)!r}, allow_incomplete=True), or add to it with "
                f"Cache(directory=..., append=True)",
                str(directory),
            )
        warnings.warn(
            f"{where}; opened what is complete ({interruption.summary()})",
            IncompleteCacheWarning,
            stacklevel=2,
        )
    cache = CacheDict(rename=manifest.get("rename"), alias=manifest.get("alias"))
    cache._off = off_flags(manifest.get("switched_off", []))
    cache._location = str(directory)
    reader = ShardReader(directory, device, shard_checks(manifest) if verify else None)
    for record in records:
        value = StoredValue(record["value"], reader)
        cache._put(record["path"], record["index"], record["kind"], record["iteration"], value)
    if interruption is not None:
        cache._interruption = interruption
        for (path, index, iteration, kind), name in zip(lost, interruption.lost):
            cache._put(path, index, kind, iteration, LostValue(name, interruption))
        note = interruption.note()
        for value in dict.values(cache):
            if isinstance(value, EntryList):
                value._note = note
    return cache


def _interruption(
    directory: Path, records: list[dict[str, Any]], shards: int, failure: Any = None
) -> tuple[Interruption, list[Started]]:
    """What an incomplete cache holds, and the journal's values missing from it
    (``failure``: the manifest's note of the error that ended the writing run)."""
    committed = {(r["path"], r["index"], r["kind"]) for r in records}
    lost = list(
        dict.fromkeys(
            started
            for started in read_journal(directory)
            if (started[0], started[1], started[3]) not in committed
        )
    )
    last = records[-1] if records else None
    interruption = Interruption(
        directory=str(directory),
        running=writer_running(directory),
        values=len(records),
        modules=len({r["path"] for r in records}),
        shards=shards,
        last=None
        if last is None
        else provider(last["path"], last["kind"], last["iteration"], last["index"]),
        lost=tuple(provider(path, kind, iteration, index) for path, index, iteration, kind in lost),
        failure=None if failure is None else str(failure),
    )
    return interruption, lost


def dump(cache: Any, directory: str | Path, *, shard_size: int | None = None) -> Path:
    """Write a cache to a new directory that :func:`load` can open in any process.

    Values are written one at a time, so a disk-backed cache can be copied without
    loading it whole. Values an interrupted writer lost (see ``CacheDict.lost``) are
    left out: dumping an incomplete cache writes its complete part.

    Args:
        cache: a :class:`Cache` or a :class:`CacheDict` (a view writes its subtree).
        directory: a new or empty directory.
        shard_size: bytes per shard (default 32 MiB).

    Returns:
        The directory.

    Raises:
        FileExistsError: ``directory`` already holds a cache.
    """
    entries = getattr(cache, "cache", cache)
    if not isinstance(entries, CacheDict):
        raise TypeError(f"dump() takes a Cache or CacheDict, not {type(cache).__name__}")
    names = entries._names
    writer = ShardWriter(
        directory,
        shard_size=shard_size or DEFAULT_SHARD_SIZE,
        header={
            "rename": names.rename,
            "alias": names.alias,
            "switched_off": off_kinds(entries._root_dict()._off),
        },
    )
    try:
        for path, value in dict.items(entries):
            index = 0  # renumbered: an entry whose values were all lost is left out
            for entry in value if isinstance(value, list) else [value]:
                if not isinstance(entry, Entry):
                    raise TypeError(f"{path!r} holds {type(entry).__name__}, not an Entry")
                kinds = [
                    kind
                    for kind in KINDS
                    if entry._has(kind) and not isinstance(entry._raw(kind), LostValue)
                ]
                for kind in kinds:
                    writer.write_value(path, index, entry.iteration, kind, entry._read(kind))
                index += bool(kinds)
    finally:
        writer.close()
    return Path(directory)
