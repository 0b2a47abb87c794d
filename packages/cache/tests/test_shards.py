from __future__ import annotations

import json
import os
import re
import struct
import zlib
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from endoscope_cache import CorruptCacheError, load
from endoscope_cache._journal import writer_running
from endoscope_cache._shards import (
    MANIFEST,
    RECORDS,
    SHARDS,
    VERSION,
    ShardReader,
    StoredValue,
    read_manifest,
    shard_checks,
    shard_name,
)
from endoscope_cache._writer import ShardWriter


def manifest(directory: Path) -> dict:
    """The manifest's fields, with the committed records (from records.jsonl)."""
    return read_manifest(directory, check_sizes=False)


def as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def all_dtypes() -> list[torch.Tensor]:
    base = torch.arange(-3, 9).reshape(3, 4)
    tensors = [
        base.to(dtype)
        for dtype in (
            torch.float64,
            torch.float32,
            torch.float16,
            torch.bfloat16,
            torch.int64,
            torch.int32,
            torch.int16,
            torch.int8,
        )
    ]
    tensors += [
        torch.arange(12, dtype=torch.uint8).reshape(3, 4),
        base > 2,
        torch.complex(base.float(), -base.float()),  # stored as raw bytes
        torch.tensor(3.25),  # 0-dim
        torch.zeros(0, 5),  # empty
        base.float().t(),  # non-contiguous
        base.float()[:, ::2],  # strided
    ]
    for name in ("uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2"):
        dtype = getattr(torch, name, None)
        if isinstance(dtype, torch.dtype):
            tensors.append(torch.arange(6).reshape(2, 3).to(dtype))
    return tensors


def test_every_dtype_round_trips_and_shards_are_valid_safetensors(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, shard_size=1 << 16)
    tensors = all_dtypes()
    stored = writer.write_value("model.x", 0, 0, "output", tensors)
    writer.close()
    back = stored.load()
    assert len(back) == len(tensors)
    for got, want in zip(back, tensors):
        assert got.dtype == want.dtype and got.shape == want.shape
        # Bitwise: float8 and unsigned dtypes lack some comparison kernels.
        assert torch.equal(as_bytes(got), as_bytes(want))
    # The shard opens with safetensors itself, native dtypes as themselves.
    with safe_open(str(tmp_path / shard_name(0)), framework="pt") as shard:
        assert shard.metadata() == {"format": "endoscope-cache"}
        assert torch.equal(shard.get_tensor("0"), tensors[0])
        assert shard.get_tensor("3").dtype == torch.bfloat16
        assert shard.get_tensor("10").dtype == torch.uint8  # complex64, raw bytes
    raw = (tmp_path / shard_name(0)).read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert length % 8 == 0  # data section 8-byte aligned


def test_buffer_rolls_over_into_shards_and_large_tensors_get_their_own(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, shard_size=256)
    small = [torch.full((16,), float(i)) for i in range(10)]  # 64 bytes each
    values = [writer.write_value("model.a", i, i, "output", t) for i, t in enumerate(small)]
    # A value whose two tensors straddle a shard boundary.
    pair = writer.write_value("model.b", 0, 0, "output", (torch.ones(40), torch.zeros(40)))
    big = torch.arange(1000, dtype=torch.float64)  # 8000 bytes > shard_size
    large = writer.write_value("model.c", 0, 0, "output", {"big": big, "tail": small[0]})
    writer.close()
    for value, t in zip(values, small):
        assert torch.equal(value.load(), t)
    assert torch.equal(pair.load()[0], torch.ones(40)) and torch.equal(
        pair.load()[1], torch.zeros(40)
    )
    assert pair.node["items"][0]["shard"] != pair.node["items"][1]["shard"]
    assert torch.equal(large.load()["big"], big)
    big_shard = large.node["items"][0][1]["shard"]
    with safe_open(str(tmp_path / shard_name(big_shard)), framework="pt") as shard:
        assert list(shard.keys()) == [large.node["items"][0][1]["key"]]
    written = manifest(tmp_path)
    assert written["complete"] is True
    assert written["shards"] == [shard_name(i) for i in range(len(written["shards"]))]
    assert all((tmp_path / name).is_file() for name in written["shards"])
    assert [r["index"] for r in written["records"] if r["path"] == "model.a"] == list(range(10))
    assert writer.bytes_written == 10 * 64 + 2 * 160 + 8000 + 64
    assert not list(tmp_path.glob("*.partial"))


def test_records_reach_the_manifest_as_shards_fill(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, shard_size=128)
    assert manifest(tmp_path)["records"] == [] and manifest(tmp_path)["complete"] is False
    writer.write_value("m", 0, 0, "output", torch.zeros(16))  # 64 bytes, buffered
    writer.write_value("m", 1, 1, "output", torch.zeros(16))  # buffer full
    assert manifest(tmp_path)["records"] == []
    writer.write_value("m", 2, 2, "output", torch.zeros(16))  # shard 0 written
    assert len(manifest(tmp_path)["records"]) == 2 and manifest(tmp_path)["shards"] == [
        shard_name(0)
    ]
    writer.write_value("m", 3, 3, "output", None)  # no tensor: waits for the next flush
    writer.flush()
    assert len(manifest(tmp_path)["records"]) == 4
    writer.close()
    writer.close()  # idempotent
    assert manifest(tmp_path)["complete"] is True


def test_reading_a_buffered_value_writes_its_shard_first(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path)
    source = torch.randn(4, 4)
    original = source.clone()
    stored = writer.write_value("m", 0, 0, "output", source)
    source.add_(1)  # the writer copied the value when it arrived
    assert not (tmp_path / shard_name(0)).exists()
    assert torch.equal(stored.load(), original)
    assert (tmp_path / shard_name(0)).exists()
    assert stored.describe() == "float32[4, 4]"
    writer.close()


def test_closed_and_existing_directories(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path / "new" / "nested")
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write_value("m", 0, 0, "output", torch.ones(1))
    with pytest.raises(FileExistsError, match="already holds a cache"):
        ShardWriter(tmp_path / "new" / "nested")
    with pytest.raises(ValueError, match="positive"):
        ShardWriter(tmp_path / "other", shard_size=0)


def test_reader_places_tensors_and_reports_missing_shards(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path)
    stored = writer.write_value("m", 0, 0, "output", torch.ones(2))
    writer.close()
    meta = ShardReader(tmp_path, device="meta")
    assert StoredValue(stored.node, meta).load().device.type == "meta"
    (tmp_path / shard_name(0)).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        StoredValue(stored.node, ShardReader(tmp_path)).load()


def test_reader_keeps_a_bounded_number_of_shards_open(tmp_path: Path, monkeypatch) -> None:
    import endoscope_cache._shards as shards

    monkeypatch.setattr(shards, "_OPEN_SHARDS", 2)
    writer = ShardWriter(tmp_path, shard_size=8)
    values = [writer.write_value("m", i, i, "output", torch.tensor([i])) for i in range(5)]
    writer.close()
    reader = ShardReader(tmp_path)
    for i, value in enumerate(values):
        assert StoredValue(value.node, reader).load().item() == i
    assert len(reader._handles) == 2


def test_manifest_records_each_shards_size_and_crc32(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, shard_size=256)
    for i in range(10):
        writer.write_value("m", i, i, "output", torch.full((16,), float(i)))
    writer.write_value("m", 10, 10, "output", torch.arange(100, dtype=torch.float64))  # large
    writer.close()
    written = manifest(tmp_path)
    assert len(written["shards"]) == len(written["shard_bytes"]) == len(written["shard_crc32"])
    for name, size, crc in zip(written["shards"], written["shard_bytes"], written["shard_crc32"]):
        data = (tmp_path / name).read_bytes()
        assert size == len(data) and crc == zlib.crc32(data)


def test_each_file_is_forced_to_disk_before_it_is_renamed_into_place(
    tmp_path: Path, monkeypatch
) -> None:
    import endoscope_cache._shards as shards

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def replace(source, destination) -> None:
        events.append(("replace", os.path.basename(source)))
        real_replace(source, destination)

    monkeypatch.setattr(shards.os, "fsync", fsync)
    monkeypatch.setattr(shards.os, "replace", replace)
    writer = ShardWriter(tmp_path / "durable", shard_size=64)
    for i in range(3):
        writer.write_value("m", i, i, "output", torch.zeros(16))
    writer.close()
    renamed = [name for kind, name in events if kind == "replace"]
    assert "shard-00002.safetensors.partial" in renamed and "manifest.json.partial" in renamed
    for name in renamed:
        # fsync of the file's data comes before its rename...
        assert events.index(("fsync", name)) < events.index(("replace", name))
    # ...and the directory is synced after each manifest, making the renames durable.
    assert events[-1] == ("fsync", "durable")
    events.clear()
    fast = ShardWriter(tmp_path / "fast", shard_size=64, fsync=False)
    fast.write_value("m", 0, 0, "output", torch.zeros(32))
    fast.close()
    assert [kind for kind, _ in events] == ["replace", "replace", "replace"]


def test_a_damaged_shard_is_named_on_first_read(tmp_path: Path, monkeypatch) -> None:
    import endoscope_cache._shards as shards

    writer = ShardWriter(tmp_path, shard_size=64)
    values = [
        writer.write_value("m", i, i, "output", torch.full((16,), float(i))) for i in range(3)
    ]
    writer.close()
    checks = shard_checks(manifest(tmp_path))
    path = tmp_path / shard_name(1)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one flipped bit in the tensor data
    path.write_bytes(bytes(data))
    reader = ShardReader(tmp_path, checks=checks)
    assert StoredValue(values[0].node, reader).load()[0] == 0.0
    with pytest.raises(
        CorruptCacheError, match=rf"cache shard {re.escape(str(path))} is corrupted"
    ):
        StoredValue(values[1].node, reader).load()
    assert StoredValue(values[2].node, reader).load()[0] == 2.0
    # Without checks the flipped bit is read as it is.
    assert StoredValue(values[1].node, ShardReader(tmp_path)).load()[-1] != 1.0
    # A shard is checked once per reader, not on every read.
    sums = []
    monkeypatch.setattr(
        shards, "file_crc32", lambda p: sums.append(p) or zlib.crc32(p.read_bytes())
    )
    fresh = ShardReader(tmp_path, checks=checks)
    for _ in range(3):
        StoredValue(values[2].node, fresh).load()
    assert sums == [tmp_path / shard_name(2)]

    path.write_bytes(bytes(data[:-10]))  # truncated
    with pytest.raises(
        CorruptCacheError, match=r"is truncated: it holds \d+ bytes, its writer recorded"
    ):
        StoredValue(values[1].node, ShardReader(tmp_path, checks=checks)).load()
    with pytest.raises(CorruptCacheError, match=rf"{re.escape(str(path))} is truncated") as raised:
        read_manifest(tmp_path)
    assert raised.value.path == str(path)
    read_manifest(tmp_path, check_sizes=False)
    # Unchecked, safetensors itself refuses the file; the error still names it.
    with pytest.raises(CorruptCacheError, match=rf"cache shard {re.escape(str(path))} is damaged"):
        StoredValue(values[1].node, ShardReader(tmp_path)).load()


def test_appending_continues_a_cache_after_checking_it(tmp_path: Path) -> None:
    first = ShardWriter(tmp_path, shard_size=64, header={"rename": {"h": "layers"}})
    first.write_value("m", 0, 0, "output", torch.zeros(16))
    first.write_value("m", 1, 1, "output", torch.ones(16))
    first.close()
    with pytest.raises(FileExistsError, match=r"already holds a cache: .* append=True"):
        ShardWriter(tmp_path)
    with pytest.raises(ValueError, match=r"written with rename=\{'h': 'layers'\}, not \{\}"):
        ShardWriter(tmp_path, append=True)
    (tmp_path / "shard-00007.safetensors").write_bytes(b"left by a crash")
    (tmp_path / "shard-00002.safetensors.partial").write_bytes(b"half")
    second = ShardWriter(tmp_path, shard_size=64, append=True, header={"rename": {"h": "layers"}})
    assert [r["index"] for r in second.resumed] == [0, 1]
    assert manifest(tmp_path)["complete"] is False  # while appending
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "journal.jsonl",
        "manifest.json",
        "records.jsonl",
        shard_name(0),
        shard_name(1),
        "shards.jsonl",
    ]
    with pytest.raises(RuntimeError, match="being written by another running writer"):
        ShardWriter(tmp_path, append=True, header={"rename": {"h": "layers"}})
    added = second.write_value("m", 2, 2, "output", torch.full((16,), 2.0))
    second.close()
    assert added.node["shard"] == 2
    written = manifest(tmp_path)
    assert written["complete"] is True and [r["index"] for r in written["records"]] == [0, 1, 2]
    assert written["shards"] == [shard_name(i) for i in range(3)]
    assert len(written["shard_crc32"]) == 3
    # A damaged shard stops the append, naming the file.
    path = tmp_path / shard_name(0)
    path.write_bytes(path.read_bytes()[:-1] + b"\x7f")
    with pytest.raises(CorruptCacheError, match=rf"{re.escape(str(path))} is corrupted"):
        ShardWriter(tmp_path, append=True, header={"rename": {"h": "layers"}})
    assert not writer_running(tmp_path)  # the failed writer let go of the lock


def test_appending_without_a_cache_starts_one(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path / "new", append=True)
    assert writer.resumed == []
    writer.close()
    assert manifest(tmp_path / "new")["complete"] is True


def test_a_commit_writes_only_what_is_new(tmp_path: Path, monkeypatch) -> None:
    import endoscope_cache._logs as logs
    import endoscope_cache._shards as shards

    written: dict[str, int] = {}  # bytes written, by file
    real_write, real_append = shards.Sink.write, logs.append_lines

    def write(self, data) -> None:
        name = os.path.basename(self.handle.name)
        written[name] = written.get(name, 0) + memoryview(data).nbytes
        real_write(self, data)

    def append(handle, data, fsync=True) -> None:
        name = os.path.basename(handle.name)
        written[name] = written.get(name, 0) + len(data)
        real_append(handle, data, fsync)

    monkeypatch.setattr(shards.Sink, "write", write)
    monkeypatch.setattr(logs, "append_lines", append)
    writer = ShardWriter(tmp_path, shard_size=64, fsync=False)
    per_commit = []  # bytes of everything but the shards, per commit
    manifest_sizes = []
    for i in range(201):
        before = sum(n for name, n in written.items() if not name.startswith("shard-"))
        # 64 bytes fill a shard: each value writes the previous one's shard and commits it
        writer.write_value("model.layers.0", i, i, "output", torch.full((16,), float(i)))
        if i:
            after = sum(n for name, n in written.items() if not name.startswith("shard-"))
            per_commit.append(after - before)
            manifest_sizes.append((tmp_path / MANIFEST).stat().st_size)
    assert len(per_commit) == 200 and len(manifest(tmp_path)["records"]) == 200
    # One record, one shard-table line and a manifest of fixed fields per commit: the
    # 200th costs what the 10th did (give or take the digits of growing numbers),
    # where rewriting every record would cost 200 times one record.
    record = len((tmp_path / RECORDS).read_bytes().splitlines()[-1]) + 1
    assert max(per_commit[9:]) - per_commit[9] < 40 < record
    assert max(manifest_sizes) < 400 and max(manifest_sizes) - manifest_sizes[9] < 20
    assert written["manifest.json.partial"] < 201 * 400
    writer.close()
    loaded = manifest(tmp_path)
    assert loaded["complete"] and [r["index"] for r in loaded["records"]] == list(range(201))
    assert loaded["shards"] == [shard_name(i) for i in range(201)]
    reader = ShardReader(tmp_path, checks=shard_checks(loaded))
    for record_ in loaded["records"][::50]:
        value = StoredValue(record_["value"], reader).load()
        assert torch.equal(value, torch.full((16,), float(record_["index"])))


def small_cache(directory: Path, count: int = 3, **kwargs) -> None:
    writer = ShardWriter(directory, shard_size=64, **kwargs)
    for i in range(count):
        writer.write_value("m", i, i, "output", torch.full((16,), float(i)))
    writer.close()


def test_lines_past_the_committed_prefix_are_ignored_and_cut_off_on_append(
    tmp_path: Path,
) -> None:
    small_cache(tmp_path)
    committed = (tmp_path / RECORDS).read_bytes()
    lines = committed.splitlines(keepends=True)
    # As a writer killed between appending its records and replacing the manifest
    # leaves them: a whole uncommitted line and half of another.
    (tmp_path / RECORDS).write_bytes(committed + lines[0] + lines[1][:20])
    (tmp_path / SHARDS).write_bytes((tmp_path / SHARDS).read_bytes() + b'{"name":"shard-0')
    read = manifest(tmp_path)
    assert [r["index"] for r in read["records"]] == [0, 1, 2] and len(read["shards"]) == 3
    assert read_manifest(tmp_path)["records"] == read["records"]  # CRC-32 checked too
    writer = ShardWriter(tmp_path, shard_size=64, append=True)
    assert [r["index"] for r in writer.resumed] == [0, 1, 2]
    assert (tmp_path / RECORDS).read_bytes() == committed  # cut to the committed prefix
    writer.write_value("m", 3, 3, "output", torch.full((16,), 3.0))
    writer.close()
    read = read_manifest(tmp_path)
    assert [r["index"] for r in read["records"]] == [0, 1, 2, 3]
    reader = ShardReader(tmp_path, checks=shard_checks(read))
    for record in read["records"]:
        value = StoredValue(record["value"], reader).load()
        assert torch.equal(value, torch.full((16,), float(record["index"])))


def old_layout(directory: Path, sizes: bool = True) -> list[dict]:
    """Rewrite a cache as version 1 wrote it: records and shard table in the manifest."""
    current = read_manifest(directory)
    old = {
        "format": "endoscope-cache",
        "version": 1,
        "complete": current["complete"],
        "shards": current["shards"],
        "rename": {},
        "alias": {},
    }
    if sizes:
        old["shard_bytes"], old["shard_crc32"] = current["shard_bytes"], current["shard_crc32"]
    fields = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in old.items()]
    records = ",\n".join(json.dumps(r, separators=(",", ":")) for r in current["records"])
    text = "{\n" + ",\n".join(fields) + ',\n "records": [\n' + records + "\n ]\n}\n"
    (directory / MANIFEST).write_text(text)
    (directory / RECORDS).unlink()
    (directory / SHARDS).unlink()
    return current["records"]


@pytest.mark.parametrize("sizes", [True, False], ids=["checked", "before-checks"])
def test_an_old_layout_cache_loads_and_is_converted_by_appending(
    tmp_path: Path, sizes: bool
) -> None:
    small_cache(tmp_path)
    records = old_layout(tmp_path, sizes)
    read = read_manifest(tmp_path)
    assert read["version"] == 1 and read["records"] == records
    # A records file beside a version 1 manifest (a conversion cut short) is not read.
    (tmp_path / RECORDS).write_bytes(b"half a conver")
    assert read_manifest(tmp_path)["records"] == records
    writer = ShardWriter(tmp_path, shard_size=64, append=True)
    assert writer.resumed == records
    writer.write_value("m", 3, 3, "output", torch.full((16,), 3.0))
    writer.close()
    converted = read_manifest(tmp_path)
    assert converted["version"] == VERSION and "records" not in json.loads(
        (tmp_path / MANIFEST).read_text()
    )
    assert converted["records"][:3] == records and len(converted["records"]) == 4
    assert converted["shards"] == [shard_name(i) for i in range(4)]
    crcs = [zlib.crc32((tmp_path / name).read_bytes()) for name in converted["shards"]]
    assert converted["shard_crc32"] == crcs
    reader = ShardReader(tmp_path, checks=shard_checks(converted))
    for record in converted["records"]:
        value = StoredValue(record["value"], reader).load()
        assert torch.equal(value, torch.full((16,), float(record["index"])))


@pytest.mark.parametrize("log", [RECORDS, SHARDS])
def test_a_damaged_records_or_shards_file_is_named(tmp_path: Path, log: str) -> None:
    small_cache(tmp_path)
    path = tmp_path / log
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    with pytest.raises(CorruptCacheError, match=rf"{re.escape(str(path))} is truncated") as raised:
        load(tmp_path)
    assert raised.value.path == str(path)
    with pytest.raises(CorruptCacheError, match="is truncated"):
        read_manifest(tmp_path, check_sizes=False)  # cannot be read unchecked either
    second = data.index(b"\n") + 1
    path.write_bytes(data[:second] + b"x" + data[second + 1 :])  # line 2 broken
    with pytest.raises(CorruptCacheError, match=rf"{re.escape(str(path))} is corrupted"):
        read_manifest(tmp_path)
    with pytest.raises(
        CorruptCacheError, match=rf"{re.escape(str(path))} is damaged: line 2 is not"
    ) as raised:
        read_manifest(tmp_path, check_sizes=False)
    assert raised.value.path == str(path)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(path))} is missing"):
        read_manifest(tmp_path)
    # A manifest that does not say how much of the log is committed is named instead.
    path.write_bytes(data)
    head = json.loads((tmp_path / MANIFEST).read_text())
    del head["records_file" if log == RECORDS else "shards_file"]
    (tmp_path / MANIFEST).write_text(json.dumps(head))
    with pytest.raises(
        CorruptCacheError, match=rf"{re.escape(str(tmp_path / MANIFEST))} does not say how much"
    ):
        load(tmp_path)
