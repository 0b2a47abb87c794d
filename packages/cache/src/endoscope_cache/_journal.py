"""The writer's journal: which values it has started, and its lock on the directory.

A writer appends one short line per value *before* encoding it (``[path, index,
iteration, kind]``) to ``journal.jsonl`` and empties the file each time the manifest
commits what the lines named, so the file stays small. While it writes, it holds an
exclusive ``flock`` on the journal. After a crash, the lines whose values are not in
the manifest are exactly the values the interruption lost; a lock that can be taken
tells a reader that no writer is running any more. ``close()`` removes the journal.

Locks are advisory and need ``fcntl`` (POSIX); elsewhere a running writer cannot be
told from an interrupted one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._entry import Deferred
from ._errors import LostValueError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "JOURNAL",
    "Interruption",
    "Journal",
    "LostValue",
    "Started",
    "provider",
    "read_journal",
    "writer_running",
]

JOURNAL = "journal.jsonl"
# One value a writer started: module path, entry index, iteration, "output" | "inputs".
Started = tuple[str, int, "int | None", str]


def _lock(fileno: int, exclusive: bool) -> bool:
    """Take a non-blocking lock; False when another open file holds a conflicting one."""
    if fcntl is None:  # pragma: no cover - Windows
        return True
    try:
        fcntl.flock(fileno, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class Journal:
    """The open journal of one writer, holding the directory's writer lock.

    Args:
        directory: the cache directory.

    Raises:
        RuntimeError: another writer (in this or another process) holds the lock.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / JOURNAL
        # Append mode: after truncate(0) the next write lands at the new end.
        self._file: Any = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open
        if not _lock(self._file.fileno(), exclusive=True):
            self._file.close()
            raise RuntimeError(
                f"the cache at {directory} is being written by another running writer "
                f"(it holds the lock on {self.path}): wait until it has closed its Cache, "
                f"or write to another directory"
            )
        self._current: bytes | None = None
        self._quoted: dict[str, str] = {}

    def start(self, path: str, index: int, iteration: int | None, kind: str) -> None:
        """Note that the value ``kind`` of entry ``index`` of ``path`` is being written."""
        quoted = self._quoted.get(path)
        if quoted is None:  # json.dumps once per module path: this runs for every value
            quoted = self._quoted[path] = json.dumps(path)
        step = "null" if iteration is None else int(iteration)
        line = f'[{quoted},{int(index)},{step},"{kind}"]\n'.encode()
        self._file.write(line)  # unbuffered: one write(2), whole even if killed
        self._current = line

    @property
    def writing(self) -> bool:
        """Whether a value was started and not finished (see :meth:`done`)."""
        return self._current is not None

    def done(self) -> None:
        """The value last started is encoded (it now waits for its shard)."""
        self._current = None

    def committed(self) -> None:
        """The manifest now lists every finished value: forget them."""
        self._file.truncate(0)
        if self._current is not None:  # a value mid-encoding when its shard filled
            self._file.write(self._current)

    def truncate(self) -> None:
        """Forget every line (a writer taking over an interrupted directory)."""
        self._file.truncate(0)

    def close(self, remove: bool) -> None:
        """Release the lock; ``remove`` deletes the file first (the cache is complete)."""
        if self._file.closed:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        self._file.close()


def read_journal(directory: Path) -> list[Started]:
    """The values an interrupted writer had started since its last manifest commit."""
    path = directory / JOURNAL
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return []
    started: list[Started] = []
    for line in lines:
        try:
            path_, index, iteration, kind = json.loads(line)
        except (ValueError, TypeError):
            continue  # a damaged line names nothing reliable
        started.append((str(path_), int(index), iteration, str(kind)))
    return started


def writer_running(directory: Path) -> bool:
    """Whether a writer holds the directory's lock (is still writing) right now."""
    try:
        with open(directory / JOURNAL, "rb") as handle:
            return not _lock(handle.fileno(), exclusive=False)
    except FileNotFoundError:
        return False


def provider(path: str, kind: str, iteration: int | None, index: int) -> str:
    """How a value is named in messages and ``CacheDict.lost``: ``model.h.0.output.i3``.

    The provider string of ``Cache.add``, with the entry's position when it differs
    from the iteration (a module whose iterations restart, trace after trace):
    ``model.h.0.output.i0 (call 2)`` is ``cache["model.h.0"][2].output``.
    """
    word = "output" if kind == "output" else "input"
    name = f"{path}.{word}" if iteration is None else f"{path}.{word}.i{iteration}"
    return name if index == iteration else f"{name} (call {index})"


@dataclass(frozen=True)
class Interruption:
    """What an incomplete cache directory holds and what its writer lost.

    Attributes:
        directory: the cache directory.
        running: its writer still held the lock when the cache was opened.
        values: how many values are complete (in the manifest).
        modules: how many modules those values belong to.
        shards: how many whole shards hold them.
        last: the value recorded last, or None.
        lost: the values the writer had started but not finished writing.
        failure: the error that ended the run writing the cache, when the writer
            was closed because of it (``"ValueError: ..."``); None if it was killed.
    """

    directory: str
    running: bool
    values: int
    modules: int
    shards: int
    last: str | None
    lost: tuple[str, ...]
    failure: str | None = None

    def state(self) -> str:
        """Why the cache is incomplete, in one clause."""
        if self.failure is not None:
            return f"the run writing it stopped with an error before the end ({self.failure})"
        if self.running:
            return "its writer is still running (it holds the lock on journal.jsonl)"
        return "its writer was interrupted (killed or crashed) before close()"

    def summary(self) -> str:
        """What is complete and what was lost."""
        shards = f"{self.shards} shard{'' if self.shards == 1 else 's'}"
        text = (
            f"complete: {self.values} value{'' if self.values == 1 else 's'} of "
            f"{self.modules} module{'' if self.modules == 1 else 's'} in {shards}"
        )
        if self.last is not None:
            text += f", the last recorded being {self.last}"
        if self.lost:
            shown = ", ".join(self.lost[:5]) + (", ..." if len(self.lost) > 5 else "")
            text += (
                f"; lost: {len(self.lost)} value{'' if len(self.lost) == 1 else 's'} it had "
                f"started ({shown})"
            )
        return text

    def note(self) -> str:
        """A sentence for messages about a value that is not in the cache."""
        started = f" ({len(self.lost)} it had started are listed in .lost)" if self.lost else ""
        return (
            f" This cache is incomplete: {self.state()}, so values it had not reached "
            f"are missing{started}."
        )


class LostValue(Deferred):
    """Stands for a value the interruption lost: reading it raises :class:`LostValueError`."""

    __slots__ = ("interruption", "name")

    def __init__(self, name: str, interruption: Interruption) -> None:
        self.name = name
        self.interruption = interruption

    def load(self) -> Any:
        where = self.interruption.directory
        if self.interruption.running:
            raise LostValueError(
                f"{self.name} is not in the cache at {where} yet: its writer is still "
                f"running and has not written the shard holding it. Open the cache again "
                f"once the writer has closed it"
            )
        raise LostValueError(
            f"{self.name} was lost: {self.interruption.state()} while this value was "
            f"being written, before the shard holding it reached {where}. Run the model "
            f"again to get it (Cache(directory=..., append=True) adds to this cache)"
        )

    def describe(self) -> str:
        return "<lost>"
