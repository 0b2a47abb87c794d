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
import sys
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ._codec import Node, decode, describe_node, dtype_from_name, encode
from ._entry import Deferred
from ._errors import CorruptCacheError
from ._journal import Journal
from ._logs import (
    LOG_FIELDS,
    MANIFEST,
    RECORD_KEYS,
    RECORDS,
    SHARD_KEYS,
    SHARDS,
    Log,
    damaged_log,
    read_log,
)

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "FORMAT",
    "MANIFEST",
    "PARTIAL",
    "RECORDS",
    "SHARDS",
    "VERSION",
    "ShardReader",
    "ShardWriter",
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
_CODES: dict[torch.dtype, str] = {}
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
        _CODES[getattr(torch, _name)] = _code


def shard_name(index: int) -> str:
    """File name of shard ``index``."""
    return f"shard-{index:05d}.safetensors"


def shard_index(name: str) -> int | None:
    """The index in a shard file name, or None for any other name."""
    match = _SHARD_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


class _Sink:
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
            part through the :class:`_Sink` they are given.
        fsync: force the data to the device before the rename.

    Returns:
        The file's size in bytes and its CRC-32.
    """
    partial = path.with_name(path.name + PARTIAL)
    with open(partial, "wb") as handle:
        sink = _Sink(handle)
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
            write their part to the :class:`_Sink` they are given.
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


class ShardWriter:
    """Streams values into a new cache directory, or appends to an existing one.

    Args:
        directory: where to write; created if missing. It must not hold a cache
            already, unless ``append``.
        shard_size: bytes per shard, also the size of the one copy buffer.
        device: where tensors read back through this writer are placed.
        header: extra manifest fields (``rename``, ``alias``).
        fsync: force each shard and manifest to the device before renaming it into
            place, and each append to the logs before the manifest that commits it,
            so that a power cut, not only a killed process, leaves a consistent cache.
        append: add to the cache already in ``directory`` (complete, or left
            incomplete by an interrupted writer) after checking every shard it lists;
            its values are in :attr:`resumed`. Without a cache there, start a new one.

    Raises:
        FileExistsError: ``directory`` already holds a cache and ``append`` is false.
        RuntimeError: another writer is writing to ``directory`` right now.
        CorruptCacheError: with ``append``, a shard of the existing cache is damaged.
        ValueError: with ``append``, the existing cache has other ``rename``/``alias``.

    Attributes:
        resumed: with ``append``, the manifest records the cache held already.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        shard_size: int = DEFAULT_SHARD_SIZE,
        device: torch.device | str | None = "cpu",
        header: dict[str, Any] | None = None,
        fsync: bool = True,
        append: bool = False,
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be a positive number of bytes, got {shard_size}")
        if sys.byteorder != "little":
            raise NotImplementedError("safetensors shards are little-endian; this host is not")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = (self.directory / MANIFEST).exists()
        if existing and not append:
            raise FileExistsError(_exists_message(self.directory))
        self.shard_size = shard_size
        self.fsync = fsync
        self.reader = ShardReader(self.directory, device)
        self.bytes_written = 0
        self.resumed: list[dict[str, Any]] = []
        self._header = dict(header or {})
        self._lock = threading.RLock()
        self._buffer: mmap.mmap | None = None
        self._array: torch.Tensor | None = None  # a uint8 view of _buffer
        self._used = 0
        self._entries: dict[str, dict[str, Any]] = {}  # tensors in the buffer, by key
        self._shard = 0  # index of the shard being filled
        self._sizes: list[int] = []  # per written shard: bytes and CRC-32
        self._crcs: list[int] = []
        self._next_key = 0
        # Committed records (all their tensors are in written shards) and the table of
        # written shards, each appended to as it grows; the manifest commits a prefix.
        self._records = Log(self.directory / RECORDS, fsync)
        self._shard_table = Log(self.directory / SHARDS, fsync)
        self._pending: list[str] = []  # complete values whose shard is still in the buffer
        self._complete = False
        self._failure: str | None = None  # set by close(failure=...)
        self._closed = False
        self._journal = Journal(self.directory)  # raises if another writer holds it
        try:
            if existing:
                self._resume()
            else:  # no manifest: whatever the logs hold belongs to no cache
                self._records.open()
                self._shard_table.open()
            self._journal.truncate()
            self._write_manifest()
        except BaseException:
            self._close_logs()
            self._journal.close(remove=False)
            raise

    def _resume(self) -> None:
        """Take over the cache in the directory: check it, drop what a crash left."""
        manifest = read_manifest(self.directory)
        for key in ("rename", "alias"):
            theirs, ours = manifest.get(key) or {}, self._header.get(key) or {}
            if theirs != ours:
                raise ValueError(
                    f"the cache at {self.directory} was written with {key}={theirs!r}, "
                    f"not {ours!r}: append with the same {key}, or write to a new directory"
                )
        checks = shard_checks(manifest)
        for index, (size, crc) in enumerate(checks):
            path = self.directory / shard_name(index)
            check_shard(path, size, crc)
            if size is None:  # a manifest without sizes: make sure the shard parses
                self.reader._handle(index)
        self._shard = len(checks)
        for index, (size, crc) in enumerate(checks):
            path = self.directory / shard_name(index)
            self._sizes.append(path.stat().st_size if size is None else size)
            self._crcs.append(file_crc32(path) if crc is None else crc)
        self.resumed = manifest["records"]
        if manifest.get("version", 1) >= 2:
            # Cuts off what a crash left past the committed prefixes.
            self._records.open(manifest[LOG_FIELDS[RECORDS]])
            self._shard_table.open(manifest[LOG_FIELDS[SHARDS]])
        else:
            # A version 1 cache: its records and shard table move to the logs, which
            # the manifest written next (by __init__) commits. A crash before then
            # leaves the old manifest, which does not read the logs.
            self._records.open()
            self._shard_table.open()
            self._records.append([json.dumps(r, separators=(",", ":")) for r in self.resumed])
            self._log_shards()
        # What an interrupted writer left: half-written files and shards it wrote
        # but never listed. The next shards reuse those names.
        for path in self.directory.iterdir():
            number = shard_index(path.name)
            if path.name.endswith(PARTIAL) or (number is not None and number >= self._shard):
                path.unlink(missing_ok=True)

    def _close_logs(self) -> None:
        self._records.close()
        self._shard_table.close()

    def _take_pending(self) -> None:
        """Append the pending records (each a whole value in written shards)."""
        self._records.append(self._pending)
        self._pending = []

    def _log_shards(self) -> None:
        """Append the shards written since the last manifest to the shard table."""
        self._shard_table.append(
            [
                f'{{"name":"{shard_name(i)}","bytes":{self._sizes[i]},"crc32":{self._crcs[i]}}}'
                for i in range(self._shard_table.count, self._shard)
            ]
        )

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    def write_value(
        self, path: str, index: int, iteration: int | None, kind: str, value: Any
    ) -> StoredValue:
        """Record ``value`` as ``kind`` of call ``index`` of module ``path``.

        Its tensors are copied into the shard buffer before this returns.
        """
        with self._lock:
            if self._closed:
                raise ValueError(f"the disk cache at {self.directory} is closed")
            self._journal.start(path, index, iteration, kind)
            node = encode(value, self._put_tensor)
            self._journal.done()
            record = {"path": path, "index": index, "iteration": iteration, "kind": kind}
            record["value"] = node
            self._pending.append(json.dumps(record, separators=(",", ":")))
            return StoredValue(node, self)

    def _put_tensor(self, tensor: torch.Tensor) -> Node:
        tensor = tensor.detach()
        nbytes = tensor.numel() * tensor.element_size()
        code = _CODES.get(tensor.dtype)
        stored_shape = list(tensor.shape) if code is not None else [nbytes]
        code = code or "U8"
        key = str(self._next_key)
        self._next_key += 1
        node = {
            "type": "tensor",
            "shard": 0,
            "key": key,
            "dtype": str(tensor.dtype).removeprefix("torch."),
            "shape": list(tensor.shape),
        }
        # contiguous() copies only a non-contiguous tensor; the byte view is then free.
        data = tensor.contiguous().view(-1).view(torch.uint8) if nbytes else None
        if nbytes > self.shard_size:
            self._flush_buffer()
            node["shard"] = self._shard
            self._write_large(key, code, stored_shape, data)
            return node
        if self._used + nbytes > self.shard_size:
            self._flush_buffer()
        array = self._ensure_buffer()
        if data is not None:
            array[self._used : self._used + nbytes].copy_(data)
        self._entries[key] = {
            "dtype": code,
            "shape": stored_shape,
            "data_offsets": [self._used, self._used + nbytes],
        }
        self._used += nbytes
        node["shard"] = self._shard
        return node

    def _ensure_buffer(self) -> torch.Tensor:
        if self._array is None:
            # Anonymous mmap: pages are only committed as they are filled.
            self._buffer = mmap.mmap(-1, self.shard_size)
            self._array = torch.frombuffer(self._buffer, dtype=torch.uint8)
        return self._array

    def _write_large(
        self, key: str, code: str, shape: list[int], data: torch.Tensor | None
    ) -> None:
        assert data is not None
        array = self._ensure_buffer()
        total = data.numel()
        step = self.shard_size

        def stream(sink: _Sink) -> None:
            for start in range(0, total, step):
                size = min(step, total - start)
                array[:size].copy_(data[start : start + size])
                assert self._buffer is not None
                sink.write(memoryview(self._buffer)[:size])

        header: dict[str, Any] = {
            key: {"dtype": code, "shape": shape, "data_offsets": [0, total]},
            "__metadata__": {"format": FORMAT},
        }
        self._written(write_shard(self._next_path(), header, [stream], self.fsync))
        self.bytes_written += total

    def _next_path(self) -> Path:
        return self.directory / shard_name(self._shard)

    def _written(self, check: tuple[int, int]) -> None:
        self._sizes.append(check[0])
        self._crcs.append(check[1])
        self._shard += 1

    def _flush_buffer(self, commit: bool = True) -> None:
        """Write the buffer as a shard, then (with ``commit``) record the values it completes."""
        if self._entries:
            assert self._buffer is not None
            header: dict[str, Any] = dict(self._entries)
            header["__metadata__"] = {"format": FORMAT}
            data = memoryview(self._buffer)[: self._used]
            self._written(write_shard(self._next_path(), header, [data], self.fsync))
            self.bytes_written += self._used
            self._entries = {}
            self._used = 0
            if commit:
                self._commit()

    def _commit(self) -> None:
        # Every pending record is a whole value whose tensors are all in written
        # shards by now; a value still being encoded is not pending yet.
        if self._pending:
            self._take_pending()
            self._write_manifest()
            self._journal.committed()

    def flush(self) -> None:
        """Write the buffered tensors as a shard and record every complete value."""
        with self._lock:
            self._flush_buffer()
            self._commit()

    def close(self, failure: str | None = None) -> None:
        """Flush, mark the manifest complete and free the buffer. Idempotent.

        Args:
            failure: what stopped the run that was writing (``"ValueError: ..."``).
                Every finished value is still written, but the manifest stays
                incomplete and keeps ``failure``, so :func:`load` says the values
                the run did not reach are missing, and why, instead of passing a
                part for the whole.
        """
        with self._lock:
            if self._closed:
                return
            if failure is None:
                self._flush_buffer(commit=False)
                self._take_pending()
                self._complete = True
                self._write_manifest()
                self._journal.close(remove=True)
            else:
                self._close_failed(failure)
            self._closed = True
            self._close_logs()
            self._array = None
            if self._buffer is not None:
                self._buffer.close()
                self._buffer = None

    def _close_failed(self, failure: str) -> None:
        """Commit what is finished and leave the cache incomplete, naming ``failure``."""
        self._failure = failure
        try:
            self._flush_buffer(commit=False)
            self._take_pending()
            self._write_manifest()
        except Exception:
            # The run's own error is already on its way to the user; this one (a
            # full disk, say) must not replace it. The journal stays, so the cache
            # reads as interrupted, with what it lost.
            self._journal.close(remove=False)
            return
        # A value caught mid-encoding by the failure is lost: the journal names it.
        self._journal.close(remove=not self._journal.writing)

    def get_tensor(self, node: Node) -> torch.Tensor:
        """Read a tensor back, writing its shard first if it is still buffered."""
        with self._lock:
            if node["shard"] >= self._shard:
                self.flush()
        return self.reader.get_tensor(node)

    def _write_manifest(self) -> None:
        # The logs first, so that the manifest never commits more than they hold.
        self._log_shards()
        head = {
            "format": FORMAT,
            "version": VERSION,
            "complete": self._complete,
            LOG_FIELDS[SHARDS]: self._shard_table.state(),
            LOG_FIELDS[RECORDS]: self._records.state(),
            **self._header,
        }
        if self._failure is not None:
            head["failure"] = self._failure
        # One line per field. Records and shards are in their logs, so the manifest's
        # size does not grow with them: a commit writes only what is new.
        fields = [
            f" {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in head.items()
        ]
        text = "{\n" + ",\n".join(fields) + "\n}\n"
        write_atomic(self.directory / MANIFEST, [text.encode()], self.fsync)
        if self.fsync:
            fsync_directory(self.directory)


def _exists_message(directory: Path) -> str:
    try:
        complete = json.loads((directory / MANIFEST).read_text(encoding="utf-8")).get("complete")
    except (OSError, ValueError, AttributeError):
        complete = None
    if complete is False:
        return (
            f"{directory} already holds an incomplete cache (its writer was interrupted "
            f"or is still running): add to it with Cache(directory=..., append=True), open "
            f"it with endoscope_cache.load(directory, allow_incomplete=True), or write to a "
            f"new or empty directory"
        )
    return (
        f"{directory} already holds a cache: open it with endoscope_cache.load(), add to it "
        f"with Cache(directory=..., append=True), or write to a new or empty directory"
    )
