"""ShardWriter: streams values into a cache directory's shards, logs and manifest.

The on-disk layout and its crash safety are described in ``_shards`` (files and
reading) and ``_logs`` (the append-only records and shard table).
"""

from __future__ import annotations

import json
import mmap
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from ._codec import Node, encode
from ._journal import Journal
from ._logs import LOG_FIELDS, MANIFEST, RECORDS, SHARDS, Log
from ._shards import (
    DEFAULT_SHARD_SIZE,
    DTYPE_CODES,
    FORMAT,
    PARTIAL,
    VERSION,
    ShardReader,
    Sink,
    StoredValue,
    check_shard,
    file_crc32,
    fsync_directory,
    read_manifest,
    shard_checks,
    shard_index,
    shard_name,
    write_atomic,
    write_shard,
)

__all__ = ["ShardWriter"]


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
        code = DTYPE_CODES.get(tensor.dtype)
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

        def stream(sink: Sink) -> None:
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
