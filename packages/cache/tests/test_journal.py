"""The writer's journal: started values, the lock that tells a running writer, names."""

from __future__ import annotations

from pathlib import Path

import pytest

from endoscope_cache import LostValueError
from endoscope_cache._journal import (
    JOURNAL,
    Interruption,
    Journal,
    LostValue,
    provider,
    read_journal,
    writer_running,
)


def test_lines_name_started_values_and_commits_forget_them(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.start("model.h.0", 0, 0, "output")
    journal.done()
    journal.start("model.h.0", 1, None, "inputs")
    assert read_journal(tmp_path) == [
        ("model.h.0", 0, 0, "output"),
        ("model.h.0", 1, None, "inputs"),
    ]
    # A commit while the second value is still being encoded keeps only that one.
    journal.committed()
    assert read_journal(tmp_path) == [("model.h.0", 1, None, "inputs")]
    journal.done()
    journal.committed()
    assert read_journal(tmp_path) == []
    journal.start("model", 0, 0, "output")
    journal.truncate()
    assert (tmp_path / JOURNAL).read_bytes() == b""
    journal.close(remove=True)
    assert not (tmp_path / JOURNAL).exists()
    journal.close(remove=True)  # idempotent


def test_a_damaged_line_is_skipped(tmp_path: Path) -> None:
    (tmp_path / JOURNAL).write_bytes(b'["model.a",0,0,"output"]\n["model.b",0,0,"outp')
    assert read_journal(tmp_path) == [("model.a", 0, 0, "output")]
    assert read_journal(tmp_path / "nowhere") == []


def test_the_lock_tells_a_running_writer_from_an_interrupted_one(tmp_path: Path) -> None:
    assert not writer_running(tmp_path)  # no journal at all
    journal = Journal(tmp_path)
    assert writer_running(tmp_path)
    with pytest.raises(RuntimeError, match="being written by another running writer"):
        Journal(tmp_path)
    journal.close(remove=False)  # what a killed process leaves: the file, no lock
    assert (tmp_path / JOURNAL).exists() and not writer_running(tmp_path)
    Journal(tmp_path).close(remove=True)


def test_names_and_messages() -> None:
    assert provider("model.h.0", "output", 3, 3) == "model.h.0.output.i3"
    assert provider("model.h.0", "inputs", 0, 2) == "model.h.0.input.i0 (call 2)"
    assert provider("model", "output", None, 1) == "model.output (call 1)"
    killed = Interruption("/c", False, 3, 2, 1, "model.a.output.i0", ("model.b.output.i0",))
    assert killed.summary() == (
        "complete: 3 values of 2 modules in 1 shard, the last recorded being "
        "model.a.output.i0; lost: 1 value it had started (model.b.output.i0)"
    )
    with pytest.raises(
        LostValueError, match=r"^model\.b\.output\.i0 was lost: its writer was interrupted"
    ):
        LostValue("model.b.output.i0", killed).load()
    running = Interruption("/c", True, 0, 0, 0, None, ("model.b.output.i0",))
    assert running.summary().startswith("complete: 0 values of 0 modules in 0 shards; lost")
    with pytest.raises(
        LostValueError, match="not in the cache at /c yet: its writer is still running"
    ):
        LostValue("model.b.output.i0", running).load()
    assert LostValue("x", killed).describe() == "<lost>"
