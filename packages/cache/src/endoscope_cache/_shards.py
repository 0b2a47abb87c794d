"""Safetensors shards, the records and shard logs and the manifest: writing as values
arrive, reading lazily.

Layout of a cache directory::

    manifest.json              state (complete, failure, names) and how much of each
                               log is committed (lines, bytes, CRC-32)
    records.jsonl              what is cached: one record (path, call, kind, value
                               node) per line, appended at each commit
    shards.jsonl               the shard table: one line (name, bytes, CRC-32) per shard
    shard-00000.safetensors    tensors, keyed by number
    shard-00001.safetensors
    ...
    journal.jsonl              only while a writer runs, or after one was interrupted

The writer copies each arriving tensor into one fixed-size buffer (so the cache holds
no reference to it) and writes the buffer as a shard when the next tensor would not
fit; a tensor larger than the buffer gets a shard of its own, streamed through the
buffer. Memory therefore stays at about one shard, whatever the total.

Crash safety: a shard is written under a temporary name, forced to the device and
renamed into place; then the records whose tensors it completes are appended to
``records.jsonl`` and the shard's line (size and CRC-32) to ``shards.jsonl`` (one write
each, forced to the device); only then is the manifest, which holds no records and no
shard list, replaced (temporary name, fsync, rename) to commit the new length of both
logs. A commit therefore writes what is new plus a manifest of fixed size, not every
record and shard so far. A crash at any point leaves a manifest that commits only
whole shards and a prefix of each log (a reader ignores anything after it; an
appending writer cuts it off), and ``"complete": false`` until ``close()``. The
journal (see ``_journal``) names the values started since the last manifest: after a
crash, those are what was lost.

The logs themselves (appending, reading the committed prefix) are in ``_logs``.
Version 1 manifests (before the logs) hold the shard list and the records inline;
they are still read, and an appending writer converts them.

The shards are written directly rather than through ``safetensors.torch.save_file``,
which needs numpy and a second in-memory copy; they are read back with
``safetensors.safe_open``.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open

from ._codec import Node, decode, describe_node, dtype_from_name
from ._entry import Deferred
from ._errors import CorruptCacheError

if TYPE_CHECKING:
    from ._writer import ShardWriter
from ._logs import (
    MANIFEST,
    RECORD_KEYS,
    RECORDS,
    SHARD_KEYS,
    SHARDS,
    damaged_log,
    read_log,
)

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "DTYPE_CODES",
    "FORMAT",
    "MANIFEST",
    "PARTIAL",
    "RECORDS",
    "SHARDS",
    "VERSION",
    "ShardReader",
    "Sink",
    "StoredValue",
    "check_shard",
    "read_manifest",
    "shard_checks",
    "shard_index",
    "shard_name",
    "write_atomic",
    "write_shard",
]

DEFAULT_SHARD_SIZE = 32 * 2**20
PARTIAL = ".partial"  # suffix of a file being written, renamed into place when whole
_SHARD_NAME = re.compile(r"shard-(\d{5,})\.safetensors")
FORMAT = "endoscope-cache"
# 2: records and shard table in records.jsonl and shards.jsonl, the manifest says how
#    much of each is committed.
# 1: records and shard table inline in the manifest (still read; an appending writer
#    converts them).
VERSION = 2
# How many shards a reader keeps open (memory-mapped) at once.
_OPEN_SHARDS = 16

# torch dtype -> safetensors dtype code. Dtypes missing here (or from this torch build)
# are stored as raw bytes ("U8") and reinterpreted from the manifest's dtype on read.
DTYPE_CODES: dict[torch.dtype, str] = {}
for _name, _code in (
    ("float64", "F64"),
    ("float32", "F32"),
    ("float16", "F16"),
    ("bfloat16", "BF16"),
    ("int64", "I64"),
    ("int32", "I32"),
    ("int16", "I16"),
    ("int8", "I8"),
    ("uint8", "U8"),
    ("bool", "BOOL"),
    ("float8_e4m3fn", "F8_E4M3"),
    ("float8_e5m2", "F8_E5M2"),
    ("uint16", "U16"),
    ("uint32", "U32"),
    ("uint64", "U64"),
):
    if isinstance(getattr(torch, _name, None), torch.dtype):
        DTYPE_CODES[getattr(torch, _name)] = _code


def shard_name(index: int) -> str:
    """File name of shard ``index``."""
    return f"shard-{index:05d}.safetensors"


def shard_index(name: str) -> int | None:
    """The index in a shard file name, or None for any other name."""
    match = _SHARD_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


class Sink:
    """A file being written, with the running size and CRC-32 of what went into it."""

    __slots__ = ("crc", "handle", "size")

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.size = 0
        self.crc = 0

    def write(self, data: Any) -> None:
        self.handle.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.size += memoryview(data).nbytes


def write_atomic(path: Path, pieces: Iterable[Any], fsync: bool = True) -> tuple[int, int]:
    """Write a file so that a crash leaves either the old file or the whole new one.

    The data goes to ``<path>.partial``, is flushed (and with ``fsync`` forced to the
    device), and only then renamed over ``path``.

    Args:
        path: the final file name.
        pieces: bytes-like objects written in order, or callables that write their
            part through the :class:`Sink` they are given.
        fsync: force the data to the device before the rename.

    Returns:
        The file's size in bytes and its CRC-32.
    """
    partial = path.with_name(path.name + PARTIAL)
    with open(partial, "wb") as handle:
        sink = Sink(handle)
        for piece in pieces:
            if callable(piece):
                piece(sink)
            else:
                sink.write(piece)
        handle.flush()
        if fsync:
            os.fsync(handle.fileno())
    os.replace(partial, path)
    return sink.size, sink.crc


def fsync_directory(directory: Path) -> None:
    """Make the renames in ``directory`` durable (POSIX; a no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


def write_shard(
    path: Path, header: dict[str, Any], chunks: Iterable[Any], fsync: bool = True
) -> tuple[int, int]:
    """Write one safetensors file atomically: header, then the data chunks in order.

    Args:
        path: final file name; the data goes to ``<path>.partial`` first.
        header: the safetensors JSON header (tensor entries and ``__metadata__``).
        chunks: buffers (bytes-like) holding the data section, or callables that
            write their part to the :class:`Sink` they are given.
        fsync: force the data to the device before the rename.

    Returns:
        The file's size in bytes and its CRC-32.
    """
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # pad so the data section starts 8-byte aligned
    return write_atomic(path, [struct.pack("<Q", len(text)), text, *chunks], fsync)


def file_crc32(path: Path) -> int:
    """CRC-32 of a whole file, read through a memory map (no copy in Python)."""
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return 0
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return zlib.crc32(data)


def check_shard(path: Path, size: int | None, crc: int | None) -> None:
    """Compare a shard with the size and CRC-32 its writer recorded.

    Raises:
        FileNotFoundError: the shard is missing.
        CorruptCacheError: its size or checksum differs; the message names the file.
    """
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is missing: copy the cache directory whole, manifest and shards together"
        ) from None
    if size is not None and actual != size:
        how = "truncated" if actual < size else "longer than written"
        raise CorruptCacheError(
            f"cache shard {path} is {how}: it holds {actual} bytes, its writer recorded "
            f"{size}. Restore it from a copy or write the cache again; "
            f"load(directory, verify=False) reads the values in the other shards",
            str(path),
        )
    if crc is not None and file_crc32(path) != crc:
        raise CorruptCacheError(
            f"cache shard {path} is corrupted: its bytes do not match the CRC-32 its "
            f"writer recorded. Restore it from a copy or write the cache again; "
            f"load(directory, verify=False) reads the values in the other shards",
            str(path),
        )


def shard_checks(manifest: dict[str, Any]) -> list[tuple[int | None, int | None]]:
    """``(size, crc32)`` per listed shard; None where the manifest predates checks."""
    count = len(manifest.get("shards", []))
    sizes = manifest.get("shard_bytes") or []
    crcs = manifest.get("shard_crc32") or []
    return [
        (
            sizes[i] if i < len(sizes) else None,
            crcs[i] if i < len(crcs) else None,
        )
        for i in range(count)
    ]


def read_manifest(directory: str | Path, *, check_sizes: bool = True) -> dict[str, Any]:
    """Parse and check the manifest of a cache directory, with its committed records.

    The committed prefixes of ``shards.jsonl`` and ``records.jsonl`` are read and
    parsed (with ``check_sizes``, compared with their CRC-32 too); whatever a crash
    left after them is ignored. Every shard must exist and, with ``check_sizes``, have
    the size its writer recorded (one ``stat`` per shard; shard checksums are left to
    the first read).

    Returns:
        The manifest's fields, whichever format version wrote them, with
        ``"records"`` holding the committed records (dicts, in the order they
        arrived) and ``"shards"``, ``"shard_bytes"``, ``"shard_crc32"`` the shard
        table (names, sizes, CRC-32s).

    Raises:
        FileNotFoundError: no manifest, or a shard or log it names is missing.
        CorruptCacheError: the manifest is not JSON, a shard has the wrong size, or
            a log is shorter than committed or its committed part is damaged; the
            message names the file.
        ValueError: the manifest is not an endoscope cache manifest this version reads.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} is not a cache directory: it has no {MANIFEST}. Write one with "
            f"Cache(directory=...) or endoscope_cache.dump(cache, directory)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise CorruptCacheError(
            f"{path} is corrupted ({error}); it is replaced atomically, so something "
            f"other than endoscope-cache changed it. Restore it from a copy",
            str(path),
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not an endoscope cache manifest")
    if manifest.get("version", 0) > VERSION:
        raise ValueError(
            f"{path} was written by a newer endoscope-cache (format version "
            f"{manifest['version']}, this one reads {VERSION}): upgrade endoscope-cache"
        )
    if manifest.get("version", 1) >= 2:
        shards = read_log(directory, manifest, SHARDS, SHARD_KEYS, check_sizes)
        for index, entry in enumerate(shards):
            if entry["name"] != shard_name(index):
                raise damaged_log(directory / SHARDS, f"line {index + 1} names another shard")
        manifest["shards"] = [entry["name"] for entry in shards]
        manifest["shard_bytes"] = [entry["bytes"] for entry in shards]
        manifest["shard_crc32"] = [entry["crc32"] for entry in shards]
        manifest["records"] = read_log(directory, manifest, RECORDS, RECORD_KEYS, check_sizes)
    else:  # version 1: the shard table and the records are inline
        manifest.setdefault("records", [])
    for index, (size, _) in enumerate(shard_checks(manifest)):
        check_shard(directory / shard_name(index), size if check_sizes else None, None)
    return manifest


class ShardReader:
    """Reads tensors from the shards of one cache directory, keeping a few files open.

    Args:
        directory: the cache directory.
        device: where read tensors are placed.
        checks: ``(size, crc32)`` per shard, as the manifest records them; each shard
            is compared with them the first time it is opened. None checks nothing.
    """

    def __init__(
        self,
        directory: str | Path,
        device: torch.device | str | None = "cpu",
        checks: list[tuple[int | None, int | None]] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.device = None if device is None else torch.device(device)
        self.checks = checks
        self._checked: set[int] = set()
        self._handles: OrderedDict[int, Any] = OrderedDict()
        self._lock = threading.Lock()

    def _handle(self, shard: int) -> Any:
        with self._lock:
            handle = self._handles.get(shard)
            if handle is None:
                path = self.directory / shard_name(shard)
                if not path.exists():
                    raise FileNotFoundError(
                        f"cache shard {path} is missing: the cache directory is incomplete "
                        f"(copy the whole directory, manifest and shards together)"
                    )
                checks = self.checks
                if checks is not None and shard not in self._checked and shard < len(checks):
                    check_shard(path, *checks[shard])
                    self._checked.add(shard)
                try:
                    handle = safe_open(str(path), framework="pt", device="cpu")
                except Exception as error:  # safetensors raises its own error types
                    raise _unreadable(path, error) from None
                self._handles[shard] = handle
                if len(self._handles) > _OPEN_SHARDS:
                    self._handles.popitem(last=False)
            else:
                self._handles.move_to_end(shard)
            return handle

    def get_tensor(self, node: Node) -> torch.Tensor:
        """Read the tensor a tensor node names."""
        handle = self._handle(node["shard"])
        try:
            tensor = handle.get_tensor(node["key"])
        except Exception as error:  # a key missing from a damaged shard
            raise _unreadable(self.directory / shard_name(node["shard"]), error) from None
        dtype = dtype_from_name(node["dtype"])
        if tensor.dtype != dtype:
            tensor = tensor.view(dtype)
        tensor = tensor.reshape(node["shape"])
        if self.device is not None and tensor.device != self.device:
            tensor = tensor.to(self.device)
        return tensor

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory, "device": self.device, "checks": self.checks}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"], state["device"], state.get("checks"))  # type: ignore[misc]


def _unreadable(path: Path, error: BaseException) -> CorruptCacheError:
    return CorruptCacheError(
        f"cache shard {path} is damaged: safetensors cannot read it ({error}). Restore it "
        f"from a copy or write the cache again",
        str(path),
    )


class StoredValue(Deferred):
    """A cached value whose tensors live in shards; rebuilt on each :meth:`load`."""

    __slots__ = ("node", "source")

    def __init__(self, node: Node, source: ShardReader | ShardWriter) -> None:
        self.node = node
        self.source = source

    def load(self) -> Any:
        return decode(self.node, self.source.get_tensor)

    def describe(self) -> str:
        return describe_node(self.node)
