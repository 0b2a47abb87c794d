"""The cache directory's two append-only logs: ``records.jsonl`` and ``shards.jsonl``.

A commit appends its new lines to each (one write, forced to the device with fsync)
and only then replaces the manifest, which records how much of each log is
committed: line count, byte length and CRC-32. Readers read that prefix; a writer
taking over a directory cuts off whatever a crash left after it. So a commit writes
what is new plus a manifest of fixed size, never the whole history.
"""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from pathlib import Path
from typing import Any

from ._errors import CorruptCacheError

__all__ = [
    "LOG_FIELDS",
    "MANIFEST",
    "RECORDS",
    "RECORD_KEYS",
    "SHARDS",
    "SHARD_KEYS",
    "Log",
    "append_lines",
    "damaged_log",
    "read_log",
]

MANIFEST = "manifest.json"
RECORDS = "records.jsonl"
SHARDS = "shards.jsonl"


def append_lines(handle: Any, data: bytes, fsync: bool = True) -> None:
    """Append one commit's lines to an open log (``records.jsonl``, ``shards.jsonl``).

    The file is opened unbuffered in append mode, so this is one ``write(2)``
    (repeated only for the rest of a short write).

    Args:
        handle: the log, opened ``"ab"`` with ``buffering=0``.
        data: whole lines, each one JSON object.
        fsync: force the data to the device before returning, so that the manifest
            that commits it is never durable before it.
    """
    view = memoryview(data)
    while view:
        view = view[handle.write(view) :]
    if fsync:
        os.fsync(handle.fileno())


RECORD_KEYS = frozenset(("path", "index", "iteration", "kind", "value"))
SHARD_KEYS = frozenset(("name", "bytes", "crc32"))
# The manifest field that says how much of each log is committed.
LOG_FIELDS = {RECORDS: "records_file", SHARDS: "shards_file"}


def damaged_log(path: Path, what: str) -> CorruptCacheError:
    return CorruptCacheError(
        f"cache {path.stem} file {path} is damaged: {what}. Restore it from a copy or "
        f"write the cache again",
        str(path),
    )


def read_log(
    directory: Path, manifest: dict[str, Any], name: str, keys: frozenset[str], check: bool
) -> list[dict[str, Any]]:
    """The committed lines of a version 2 log (``records.jsonl`` or ``shards.jsonl``):
    the prefix its manifest commits, parsed, its CRC-32 compared with ``check``."""
    path = directory / name
    state = manifest.get(LOG_FIELDS[name])
    if not isinstance(state, dict):
        state = {}
    count, length = state.get("count"), state.get("bytes")
    if not isinstance(count, int) or not isinstance(length, int) or count < 0 or length < 0:
        raise CorruptCacheError(
            f"{directory / MANIFEST} does not say how much of {name} is committed "
            f"({LOG_FIELDS[name]}: count, bytes); it is replaced atomically, so "
            f"something other than endoscope-cache changed it. Restore it from a copy",
            str(directory / MANIFEST),
        )
    try:
        with open(path, "rb") as handle:
            data = handle.read(length)
    except FileNotFoundError:
        if length:
            raise FileNotFoundError(
                f"{path} is missing: copy the cache directory whole, manifest, "
                f"{RECORDS}, {SHARDS} and shards together"
            ) from None
        data = b""
    if len(data) < length:
        raise CorruptCacheError(
            f"cache {path.stem} file {path} is truncated: it holds {len(data)} bytes, "
            f"its manifest commits {length}. Restore it from a copy or write the cache again",
            str(path),
        )
    crc = state.get("crc32")
    if check and crc is not None and zlib.crc32(data) != crc:
        raise CorruptCacheError(
            f"cache {path.stem} file {path} is corrupted: its first {length} bytes (the "
            f"committed part) do not match the CRC-32 its writer recorded. Restore it "
            f"from a copy or write the cache again; load(directory, verify=False) reads "
            f"it unchecked",
            str(path),
        )
    lines = data.split(b"\n")
    if lines.pop() != b"" or len(lines) != count:  # every committed line ends with \n
        raise damaged_log(
            path, f"its committed {length} bytes hold {len(lines)} lines, not {count}"
        )
    try:  # one parse for all the lines: several times faster than a parse per line
        entries = json.loads(b"[" + b",".join(lines) + b"]")
    except (ValueError, UnicodeDecodeError):
        entries = None
    if (
        entries is None
        or len(entries) != count
        or not all(isinstance(e, dict) and keys <= e.keys() for e in entries)
    ):
        bad = [n for n, line in enumerate(lines, 1) if not _is_entry(line, keys)]
        where = f"line {bad[0]}" if bad else "a line"
        raise damaged_log(path, f"{where} is not a {path.stem[:-1]} entry")
    return entries


def _is_entry(line: bytes, keys: frozenset[str]) -> bool:
    try:
        entry = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(entry, dict) and keys <= entry.keys()


class Log:
    """An append-only file of JSON lines, of which the manifest commits a prefix.

    Each :meth:`append` is one write at the end of the file; the running count,
    length and CRC-32 are what the next manifest commits.
    """

    def __init__(self, path: Path, fsync: bool) -> None:
        self.path = path
        self.fsync = fsync
        self.count = 0
        self.bytes = 0
        self.crc = 0
        self._file: Any = None

    def open(self, committed: dict[str, Any] | None = None) -> None:
        """Open for appending after the ``committed`` prefix (manifest state), cutting
        off anything after it: lines a crash left uncommitted (None: everything)."""
        # Unbuffered append mode: each append is one write(2) at the end of the file.
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open
        if committed is not None:
            self.count, self.bytes = committed["count"], committed["bytes"]
            crc = committed.get("crc32")
            if crc is None:
                with open(self.path, "rb") as handle:
                    crc = zlib.crc32(handle.read(self.bytes))
            self.crc = crc
        self._file.truncate(self.bytes)

    def append(self, lines: list[str]) -> None:
        """Append serialised entries, forced to the device with ``fsync``."""
        if not lines:
            return
        data = ("\n".join(lines) + "\n").encode()
        try:
            append_lines(self._file, data, self.fsync)
        except BaseException:
            # Part of a line left at the end would sit inside the next commit's prefix.
            with contextlib.suppress(OSError):
                self._file.truncate(self.bytes)
            raise
        self.count += len(lines)
        self.bytes += len(data)
        self.crc = zlib.crc32(data, self.crc)

    def state(self) -> dict[str, int]:
        """What the manifest records: how many lines and bytes are committed, and their CRC-32."""
        return {"count": self.count, "bytes": self.bytes, "crc32": self.crc}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
