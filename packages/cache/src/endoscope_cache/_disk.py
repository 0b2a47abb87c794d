"""Opening a cache directory (``load``) and writing an in-memory cache to one (``dump``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ._cachedict import CacheDict
from ._entry import KINDS, Entry, off_flags, off_kinds
from ._shards import (
    DEFAULT_SHARD_SIZE,
    FORMAT,
    MANIFEST,
    VERSION,
    ShardReader,
    ShardWriter,
    StoredValue,
    shard_name,
)

__all__ = ["dump", "load", "read_manifest"]


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Parse and check the manifest of a cache directory.

    Raises:
        FileNotFoundError: no manifest, or a shard it names is missing.
        ValueError: the manifest is not an endoscope cache manifest this version reads.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} is not a cache directory: it has no {MANIFEST}. Write one with "
            f"Cache(directory=...) or endoscope_cache.dump(cache, directory)"
        )
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not an endoscope cache manifest")
    if manifest.get("version", 0) > VERSION:
        raise ValueError(
            f"{path} was written by a newer endoscope-cache (format version "
            f"{manifest['version']}, this one reads {VERSION}): upgrade endoscope-cache"
        )
    for index in range(len(manifest.get("shards", []))):
        if not (directory / shard_name(index)).is_file():
            raise FileNotFoundError(
                f"{directory / shard_name(index)} is missing: copy the cache directory "
                f"whole, manifest and shards together"
            )
    return manifest


def load(directory: str | Path, device: torch.device | str | None = "cpu") -> CacheDict:
    """Open a cache directory written by ``Cache(directory=...)`` or :func:`dump`.

    Navigation is the same as for the in-memory cache; tensors are read from the
    shards each time a value is accessed (``.output``, ``.inputs``, ``.input``), so
    opening a large cache costs only the manifest. A cache whose writer crashed opens
    with every value recorded before its last complete shard.

    Dataclass and named-tuple values are rebuilt by importing their class by name, so
    open only caches you trust, as with ``pickle``.

    Args:
        directory: the cache directory.
        device: where tensors are placed when read.

    Returns:
        A :class:`CacheDict` over the directory.
    """
    manifest = read_manifest(directory)
    cache = CacheDict(rename=manifest.get("rename"), alias=manifest.get("alias"))
    cache._off = off_flags(manifest.get("switched_off", []))
    cache._location = str(Path(directory))
    reader = ShardReader(directory, device)
    for record in manifest["records"]:
        value = StoredValue(record["value"], reader)
        cache._put(record["path"], record["index"], record["kind"], record["iteration"], value)
    return cache


def dump(cache: Any, directory: str | Path, *, shard_size: int | None = None) -> Path:
    """Write a cache to a new directory that :func:`load` can open in any process.

    Values are written one at a time, so a disk-backed cache can be copied without
    loading it whole.

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
            for index, entry in enumerate(value if isinstance(value, list) else [value]):
                if not isinstance(entry, Entry):
                    raise TypeError(f"{path!r} holds {type(entry).__name__}, not an Entry")
                for kind in KINDS:
                    if entry._has(kind):
                        writer.write_value(path, index, entry.iteration, kind, entry._read(kind))
    finally:
        writer.close()
    return Path(directory)
