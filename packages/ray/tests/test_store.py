"""The on-disk layout and the readers, without Ray: chunks, index, failed rows, resume cleanup."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from endoscope_cache import load
from endoscope_ray import Store, open_store
from endoscope_ray._store import FORMAT, VERSION, clean_partial, write_chunk, write_index


def _index(chunks: list[dict], failed: list[dict] | None = None, rows: int | None = None) -> dict:
    return {
        "format": FORMAT, "version": VERSION, "fingerprint": "x", "run": {},
        "keys": {"h": {"dtype": "float32", "shape": [None, 2]}}, "chunks": chunks,
        "failed": failed or [], "tokens": 0, "rows": rows, "complete": rows is not None,
    }  # fmt: skip


def test_chunks_are_cache_directories_read_by_row_slice_and_dataset(tmp_path: Path) -> None:
    rows = [torch.randn(n, 2) for n in (3, 1, 4, 2, 5)]
    write_chunk(tmp_path, 0, {"h": rows[:3]}, shard_size=64)  # several shards
    write_chunk(tmp_path, 1, {"h": rows[3:]}, shard_size=1 << 20)
    chunks = [
        {"number": 0, "start": 0, "stop": 3, "digest": "a", "dir": "chunk-00000"},
        {"number": 1, "start": 3, "stop": 5, "digest": "b", "dir": "chunk-00001"},
    ]
    write_index(tmp_path, _index(chunks, rows=5))
    # Each chunk is a plain endoscope-cache directory.
    assert torch.equal(load(tmp_path / "chunk-00000")["h"][1].output, rows[1])
    store = open_store(tmp_path)
    column = store["h"]
    assert len(store) == 5 and store.complete
    for i, row in enumerate(rows):
        assert torch.equal(column[i], row)
    assert torch.equal(column[-1], rows[-1])
    assert [r.shape for r in column[1:4]] == [r.shape for r in rows[1:4]]
    assert isinstance(column, torch.utils.data.Dataset)
    again = pickle.loads(pickle.dumps(column))  # what DataLoader workers get
    assert torch.equal(again[4], rows[4])
    with pytest.raises(IndexError, match="row 5 is out of range: 'h' has 5 rows"):
        column[5]
    with pytest.raises(KeyError, match="no key 'x' in this run: the step returned 'h'"):
        store["x"]
    assert "5 rows, complete" in repr(store)


def test_rows_of_a_failed_batch_raise_and_the_rest_keep_their_positions(tmp_path: Path) -> None:
    rows = [torch.full((1, 2), float(i)) for i in range(8)]
    kept = rows[:2] + rows[4:]  # rows 2-3 failed
    write_chunk(tmp_path, 0, {"h": kept}, shard_size=1 << 20)
    chunk = {"number": 0, "start": 0, "stop": 8, "digest": "a", "dir": "chunk-00000"}
    failed = [{"start": 2, "stop": 4, "error": "ValueError: bad"}]
    write_index(tmp_path, _index([chunk], failed, rows=8))
    store = open_store(tmp_path)
    assert store.failed == [(2, 4, "ValueError: bad")]
    for i in (0, 1, 4, 5, 6, 7):
        assert torch.equal(store["h"][i], rows[i])
    with pytest.raises(KeyError, match="row 3 has no value: its batch failed .*ValueError: bad"):
        store["h"][3]


def test_in_memory_store_reads_the_same_way() -> None:
    rows = [torch.ones(2), None, torch.zeros(2)]
    store = Store(_index([], [{"start": 1, "stop": 2, "error": "E"}], rows=3), rows={"h": rows})
    assert store.path is None and len(store) == 3
    assert torch.equal(store["h"][2], torch.zeros(2))
    with pytest.raises(KeyError, match="row 1 has no value"):
        store["h"][1]


def test_an_unfinished_run_and_what_a_killed_run_left(tmp_path: Path) -> None:
    write_chunk(tmp_path, 0, {"h": [torch.ones(2)]}, shard_size=1 << 20)
    chunk = {"number": 0, "start": 0, "stop": 1, "digest": "a", "dir": "chunk-00000"}
    index = _index([chunk])
    write_index(tmp_path, index)
    # A chunk renamed into place but not yet indexed, a half-written one, a stray index.
    write_chunk(tmp_path, 1, {"h": [torch.ones(2)]}, shard_size=1 << 20)
    (tmp_path / ".chunk-00002.tmp-1").mkdir()
    (tmp_path / ".index.json.tmp-1").write_text("{")
    store = open_store(tmp_path)
    assert not store.complete and len(store) == 1
    with pytest.raises(IndexError, match="out of range"):
        store["h"][1]
    clean_partial(tmp_path, index)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunk-00000", "index.json"]
    assert json.loads((tmp_path / "index.json").read_text())["chunks"] == [chunk]


def test_open_store_says_what_a_directory_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="holds no endoscope-ray run .*map_traces"):
        open_store(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"format": FORMAT, "version": VERSION + 1}))
    with pytest.raises(ValueError, match="newer endoscope-ray"):
        open_store(tmp_path)
