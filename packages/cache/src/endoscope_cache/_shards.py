"""Safetensors shards and the JSON manifest: writing as values arrive, reading lazily.

Layout of a cache directory::

    manifest.json              what is cached: records of (path, call, kind, value node)
    shard-00000.safetensors    tensors, keyed by number
    shard-00001.safetensors
    ...

The writer copies each arriving tensor into one fixed-size buffer (so the cache holds
no reference to it) and writes the buffer as a shard when the next tensor would not
fit; a tensor larger than the buffer gets a shard of its own, streamed through the
buffer. Memory therefore stays at about one shard, whatever the total.

Crash safety: a shard is written under a temporary name and renamed into place, and
only then is the manifest rewritten (also temporary name, then rename) to list it and
the records whose tensors it completes. A crash at any point leaves a manifest that
names only whole shards.

The shards are written directly rather than through ``safetensors.torch.save_file``,
which needs numpy and a second in-memory copy; they are read back with
``safetensors.safe_open``.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ._codec import Node, decode, describe_node, dtype_from_name, encode
from ._entry import Deferred

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "FORMAT",
    "MANIFEST",
    "VERSION",
    "ShardReader",
    "ShardWriter",
    "StoredValue",
    "shard_name",
]

DEFAULT_SHARD_SIZE = 32 * 2**20
MANIFEST = "manifest.json"
FORMAT = "endoscope-cache"
VERSION = 1
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


def write_shard(path: Path, header: dict[str, Any], chunks: Iterable[Any]) -> None:
    """Write one safetensors file atomically: header, then the data chunks in order.

    Args:
        path: final file name; the data goes to ``<path>.partial`` first.
        header: the safetensors JSON header (tensor entries and ``__metadata__``).
        chunks: buffers (bytes-like) holding the data section, or callables that
            write their part to the open file and return nothing.
    """
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # pad so the data section starts 8-byte aligned
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)))
        handle.write(text)
        for chunk in chunks:
            if callable(chunk):
                chunk(handle)
            else:
                handle.write(chunk)
    os.replace(partial, path)


def write_text(path: Path, text: str) -> None:
    """Replace ``path``'s content with ``text`` atomically (temporary file, rename)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


class ShardReader:
    """Reads tensors from the shards of one cache directory, keeping a few files open.

    Args:
        directory: the cache directory.
        device: where read tensors are placed.
    """

    def __init__(self, directory: str | Path, device: torch.device | str | None = "cpu") -> None:
        self.directory = Path(directory)
        self.device = None if device is None else torch.device(device)
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
                handle = safe_open(str(path), framework="pt", device="cpu")
                self._handles[shard] = handle
                if len(self._handles) > _OPEN_SHARDS:
                    self._handles.popitem(last=False)
            else:
                self._handles.move_to_end(shard)
            return handle

    def get_tensor(self, node: Node) -> torch.Tensor:
        """Read the tensor a tensor node names."""
        tensor = self._handle(node["shard"]).get_tensor(node["key"])
        dtype = dtype_from_name(node["dtype"])
        if tensor.dtype != dtype:
            tensor = tensor.view(dtype)
        tensor = tensor.reshape(node["shape"])
        if self.device is not None and tensor.device != self.device:
            tensor = tensor.to(self.device)
        return tensor

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory, "device": self.device}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"], state["device"])  # type: ignore[misc]


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
    """Streams values into a new cache directory.

    Args:
        directory: where to write; created if missing, must not hold a cache already.
        shard_size: bytes per shard, also the size of the one copy buffer.
        device: where tensors read back through this writer are placed.
        header: extra manifest fields (``rename``, ``alias``).

    Raises:
        FileExistsError: ``directory`` already holds a cache manifest.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        shard_size: int = DEFAULT_SHARD_SIZE,
        device: torch.device | str | None = "cpu",
        header: dict[str, Any] | None = None,
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be a positive number of bytes, got {shard_size}")
        if sys.byteorder != "little":
            raise NotImplementedError("safetensors shards are little-endian; this host is not")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if (self.directory / MANIFEST).exists():
            raise FileExistsError(
                f"{self.directory} already holds a cache: open it with "
                f"endoscope_cache.load(), or write to a new or empty directory"
            )
        self.shard_size = shard_size
        self.reader = ShardReader(self.directory, device)
        self.bytes_written = 0
        self._header = dict(header or {})
        self._lock = threading.RLock()
        self._buffer: mmap.mmap | None = None
        self._array: torch.Tensor | None = None  # a uint8 view of _buffer
        self._used = 0
        self._entries: dict[str, dict[str, Any]] = {}  # tensors in the buffer, by key
        self._shard = 0  # index of the shard being filled
        self._next_key = 0
        self._records: list[str] = []  # committed: all their tensors are in written shards
        self._pending: list[str] = []  # complete values whose shard is still in the buffer
        self._complete = False
        self._closed = False
        self._write_manifest()

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
            node = encode(value, self._put_tensor)
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

        def stream(handle: Any) -> None:
            for start in range(0, total, step):
                size = min(step, total - start)
                array[:size].copy_(data[start : start + size])
                assert self._buffer is not None
                handle.write(memoryview(self._buffer)[:size])

        header: dict[str, Any] = {
            key: {"dtype": code, "shape": shape, "data_offsets": [0, total]},
            "__metadata__": {"format": FORMAT},
        }
        write_shard(self.directory / shard_name(self._shard), header, [stream])
        self.bytes_written += total
        self._shard += 1

    def _flush_buffer(self) -> None:
        """Write the buffer as a shard, then record the values it completes."""
        if self._entries:
            assert self._buffer is not None
            header: dict[str, Any] = dict(self._entries)
            header["__metadata__"] = {"format": FORMAT}
            write_shard(
                self.directory / shard_name(self._shard),
                header,
                [memoryview(self._buffer)[: self._used]],
            )
            self.bytes_written += self._used
            self._shard += 1
            self._entries = {}
            self._used = 0
            self._commit()

    def _commit(self) -> None:
        # Every pending record is a whole value whose tensors are all in written
        # shards by now; a value still being encoded is not pending yet.
        if self._pending:
            self._records.extend(self._pending)
            self._pending = []
            self._write_manifest()

    def flush(self) -> None:
        """Write the buffered tensors as a shard and record every complete value."""
        with self._lock:
            self._flush_buffer()
            self._commit()

    def close(self) -> None:
        """Flush, mark the manifest complete and free the buffer. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._flush_buffer()
            self._records.extend(self._pending)
            self._pending = []
            self._complete = True
            self._write_manifest()
            self._closed = True
            self._array = None
            if self._buffer is not None:
                self._buffer.close()
                self._buffer = None

    def get_tensor(self, node: Node) -> torch.Tensor:
        """Read a tensor back, writing its shard first if it is still buffered."""
        with self._lock:
            if node["shard"] >= self._shard:
                self.flush()
        return self.reader.get_tensor(node)

    def _write_manifest(self) -> None:
        head = {
            "format": FORMAT,
            "version": VERSION,
            "complete": self._complete,
            "shards": [shard_name(i) for i in range(self._shard)],
            **self._header,
        }
        # Records are kept pre-serialised: rewriting the manifest is a join, not a dump.
        text = json.dumps(head, indent=1)[:-2] + ',\n "records": [\n'
        text += ",\n".join(self._records) + "\n ]\n}\n"
        write_text(self.directory / MANIFEST, text)
