"""Streaming to disk, reopening in this and other processes, crashes, bounded memory."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from endoscope_cache import (
    Cache,
    CorruptCacheError,
    EntryList,
    IncompleteCacheError,
    IncompleteCacheWarning,
    LostValueError,
    dump,
    load,
)
from endoscope_cache._disk import read_manifest
from endoscope_cache._journal import LostValue
from endoscope_cache._shards import MANIFEST, RECORDS, SHARDS, VERSION, shard_name

# The toy model of conftest.py, rebuilt in child processes from the same seed.
CONFTEST = Path(__file__).with_name("conftest.py")


def run_child(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    code = textwrap.dedent(script)
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result


def test_streamed_model_matches_plain_torch_hooks(
    tmp_path, toy, ids, recorder_factory, same, matches_reference
) -> None:
    with Cache(include_inputs=True, directory=tmp_path, shard_size=2048) as cache:
        ref = recorder_factory(toy, cache)
        with torch.no_grad():
            toy(ids, mask=torch.ones(2, 5))
        # Readable while streaming, as well as after.
        same(cache.cache.model.transformer.h[1].output, ref.outputs["model.transformer.h.1"][0])
    assert len(list(tmp_path.glob("shard-*.safetensors"))) > 3
    matches_reference(cache.cache, ref)
    loaded = load(tmp_path)
    matches_reference(loaded, ref)
    # Structure survives: the dataclass output, the tuple-with-dict block output.
    head = loaded.model.head.output
    assert type(head).__name__ == "HeadOut" and head.step == 1
    block = loaded.model.transformer.h[0].output
    assert block[1]["count"] == 8 and block[1]["none"] is None
    assert loaded.model.transformer.h[0].inputs[1] == {"scale": 0.5}
    assert torch.equal(loaded.model.inputs[1]["mask"], torch.ones(2, 5))
    same(loaded.model.shared.output[1], ref.outputs["model.shared"][1])


def test_repr_lists_paths_with_shapes_without_reading(tmp_path, monkeypatch) -> None:
    with Cache(directory=tmp_path) as cache:
        cache.add("model.h.0.output.i0", torch.zeros(2, 5, 8))
        cache.add("model.h.0.output.i1", torch.zeros(2, 6, 8))
        cache.add("model.lm_head.output.i0", (torch.zeros(2, 5, 11, dtype=torch.float16), None))
    loaded = load(tmp_path)
    import endoscope_cache._shards as shards

    def no_reading(*args, **kwargs):
        raise AssertionError("repr must not read tensors")

    monkeypatch.setattr(shards.ShardReader, "get_tensor", no_reading)
    text = repr(loaded)
    assert text.splitlines()[0] == f"CacheDict(2 modules, on disk at {tmp_path})"
    assert "model.h.0" in text and "2 calls" in text
    assert "i0: output=float32[2, 5, 8]" in text and "i1: output=float32[2, 6, 8]" in text
    assert "model.lm_head  output=(float16[2, 5, 11], None)" in text
    assert repr(cache.cache) == text


def test_load_is_lazy(tmp_path) -> None:
    with Cache(directory=tmp_path, shard_size=64) as cache:
        for i in range(6):
            cache.add(f"model.layers.{i}.output.i0", torch.full((16,), float(i)))
    loaded = load(tmp_path)
    reader = loaded["model.layers.0"]._output.source
    assert reader._handles == {}  # nothing opened yet
    assert torch.equal(loaded.model.layers[4].output, torch.full((16,), 4.0))
    assert list(reader._handles) == [4]
    first, second = loaded.model.layers[4].output, loaded.model.layers[4].output
    assert first is not second  # read on each access, nothing kept in memory


def test_device_and_navigation_after_load(tmp_path) -> None:
    with Cache(directory=tmp_path, rename={"layers": "blocks"}, include_inputs=True) as cache:
        cache.add("model.layers.0.input.i0", ((torch.ones(3),), {"k": 2}))
        cache.add("model.layers.0.output.i0", torch.ones(3) * 2)
    loaded = load(tmp_path)
    assert torch.equal(loaded.model.blocks[0].output, torch.full((3,), 2.0))
    assert torch.equal(loaded.model.blocks[0].input, torch.ones(3))
    assert loaded.model.layers[0].inputs[1] == {"k": 2}
    with pytest.raises(IndexError, match="out of range"):
        _ = loaded.model.layers[1]
    with pytest.raises(AttributeError, match=r"model\.layers"):
        _ = loaded.model.layer
    assert load(tmp_path, device="meta").model.layers[0].output.device.type == "meta"
    meta = Cache(directory=tmp_path / "meta", device="meta")
    meta.add("model.output.i0", torch.ones(2))
    assert meta.cache.model.output.device.type == "meta"
    meta.close()


def test_dump_copies_memory_and_disk_caches(
    tmp_path, toy, ids, recorder_factory, same, matches_reference
) -> None:
    cache = Cache(include_inputs=True, rename={"transformer": "tf"})
    ref = recorder_factory(toy, cache)
    toy(ids)
    assert dump(cache, tmp_path / "a", shard_size=4096) == tmp_path / "a"
    first = load(tmp_path / "a")
    matches_reference(first, ref)
    assert torch.equal(first.model.tf.h[0].output[0], ref.outputs["model.transformer.h.0"][0][0])
    first.dump(tmp_path / "b")  # a disk-backed cache copies value by value
    matches_reference(load(tmp_path / "b"), ref)
    cache.cache.model.transformer.h[2].dump(tmp_path / "c")  # a view writes its subtree
    assert all(k.startswith("model.transformer.h.2") for k in load(tmp_path / "c"))
    with pytest.raises(FileExistsError):
        dump(cache, tmp_path / "a")
    with pytest.raises(TypeError, match="Cache or CacheDict"):
        dump({"model": 1}, tmp_path / "d")


def test_manifest_problems_are_reported(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no manifest\.json"):
        load(tmp_path)
    with Cache(directory=tmp_path / "ok", shard_size=8) as cache:
        cache.add("model.output.i0", torch.ones(4))
    manifest = json.loads((tmp_path / "ok" / MANIFEST).read_text())
    assert manifest["complete"] is True and manifest["version"] == VERSION
    newer = dict(manifest, version=99)
    (tmp_path / "ok" / MANIFEST).write_text(json.dumps(newer))
    with pytest.raises(ValueError, match="newer endoscope-cache"):
        read_manifest(tmp_path / "ok")
    (tmp_path / "ok" / MANIFEST).write_text(json.dumps(manifest))
    (tmp_path / "ok" / shard_name(0)).unlink()
    with pytest.raises(FileNotFoundError, match="copy the cache directory whole"):
        load(tmp_path / "ok")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / MANIFEST).write_text("{}")
    with pytest.raises(ValueError, match="not an endoscope cache manifest"):
        load(tmp_path / "other")


def test_closed_cache_refuses_values_and_finalizer_flushes(tmp_path) -> None:
    cache = Cache(directory=tmp_path / "a")
    cache.close()
    with pytest.raises(ValueError, match="closed; create a new Cache"):
        cache.add("model.output.i0", torch.ones(1))
    cache.add("model.unparsed", torch.ones(1))  # filtered-out providers stay silent

    dropped = Cache(directory=tmp_path / "b")
    dropped.add("model.output.i0", torch.arange(5))
    del dropped
    gc.collect()
    assert torch.equal(load(tmp_path / "b").model.output, torch.arange(5))
    assert json.loads((tmp_path / "b" / MANIFEST).read_text())["complete"] is True


LEFT_OPEN = """
import sys, torch
from endoscope_cache import Cache
cache = Cache(directory=sys.argv[1], shard_size=64)
cache.add("model.a.output.i0", torch.zeros(16))
cache.add("model.b.output.i0", torch.ones(16))
if sys.argv[2] == "raise":
    raise KeyError("batch 3")
"""


def test_a_cache_left_open_at_exit_is_complete_unless_the_process_died_of_an_error(
    tmp_path,
) -> None:
    run_child(LEFT_OPEN, str(tmp_path / "ended"), "end")
    ended = load(tmp_path / "ended")
    assert ended.complete and torch.equal(ended.model.b.output, torch.ones(16))
    died = subprocess.run(
        [sys.executable, "-c", LEFT_OPEN, str(tmp_path / "died"), "raise"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert died.returncode == 1 and "KeyError: 'batch 3'" in died.stderr
    with pytest.raises(IncompleteCacheError) as raised:
        load(tmp_path / "died")
    assert (
        "stopped with an error before the end (KeyError: 'batch 3', uncaught: the process "
        "exited before close())" in str(raised.value)
    )
    with pytest.warns(IncompleteCacheWarning):
        partial = load(tmp_path / "died", allow_incomplete=True)
    assert torch.equal(partial.model.b.output, torch.ones(16))  # what it recorded is there


CHILD_WRITES = """
import importlib.util, sys, torch
from endoscope_cache import Cache
spec = importlib.util.spec_from_file_location("toy_conftest", sys.argv[1])
toy_module = importlib.util.module_from_spec(spec)
sys.modules["toy_conftest"] = toy_module
spec.loader.exec_module(toy_module)
torch.manual_seed(0)
model = toy_module.Toy().eval()
cache = Cache(include_inputs=True, directory=sys.argv[2], shard_size=1024)
toy_module.Recorder(model, cache)
with torch.no_grad():
    model(torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]))
cache.close()
print("written")
"""


def test_cache_written_by_another_process_reopens_here(
    tmp_path, toy, ids, recorder_factory, same
) -> None:
    result = run_child(CHILD_WRITES, str(CONFTEST), str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    ref = recorder_factory(toy)
    with torch.no_grad():
        toy(ids)
    loaded = load(tmp_path / "cache")
    # Values equal this process's plain-torch captures; dataclasses from the child's
    # module come back as plain dicts here, so compare the head's fields directly.
    for path in ref.outputs:
        if path != "model" and not path.startswith("model.head"):
            value = loaded[path]
            entries = value if isinstance(value, EntryList) else [value]
            for entry, output, inputs in zip(entries, ref.outputs[path], ref.inputs[path]):
                same(entry.output, output)
                same(entry.inputs, inputs)
    head = loaded.model.head.output
    same(head["logits"], ref.outputs["model.head"][0].logits)
    assert head["step"] == 1


CHILD_READS = """
import sys, torch
from endoscope_cache import load
d = load(sys.argv[1])
expected = torch.load(sys.argv[2])
assert list(d) == expected["paths"], (list(d), expected["paths"])
for path, output in expected["outputs"].items():
    got = d[path].output
    assert got.dtype == output.dtype and torch.equal(got, output), path
assert torch.equal(d.model.transformer.h[2].attn.output, expected["outputs"]["model.transformer.h.2.attn"])
assert torch.equal(d.model.embed.input, expected["ids"])
assert len(d.model.shared.output) == 2
try:
    d.model.transformer.h[3]
except IndexError as error:
    print("index error:", error)
print(repr(d))
"""


def test_cache_saved_here_reopens_in_another_process(tmp_path, toy, ids, recorder_factory) -> None:
    cache = Cache(include_inputs=True)
    ref = recorder_factory(toy, cache)
    with torch.no_grad():
        toy(ids)
    dump(cache, tmp_path / "cache")
    single = {
        path: outs[0]
        for path, outs in ref.outputs.items()
        if len(outs) == 1 and isinstance(outs[0], torch.Tensor)
    }
    torch.save(
        {"paths": list(cache.cache), "outputs": single, "ids": ids}, tmp_path / "expected.pt"
    )
    result = run_child(CHILD_READS, str(tmp_path / "cache"), str(tmp_path / "expected.pt"))
    assert result.returncode == 0, result.stderr
    assert "index 3 is out of range for 'model.transformer.h'" in result.stdout
    assert f"on disk at {tmp_path / 'cache'}" in result.stdout
    assert "model.transformer.h.0.mlp.0  output=float32[2, 5, 16]" in result.stdout


CHILD_STREAMS = """
import gc, json, re, sys, torch
from endoscope_cache import Cache

def status(field):
    text = open("/proc/self/status").read()
    return int(re.search(field + r":\\s+(\\d+) kB", text).group(1)) * 1024

cache = Cache(directory=sys.argv[1])
count, side = int(sys.argv[2]), 1024
# Warm up torch's allocator paths with one value of the same size, then measure.
torch.full((side, side), -1.0)
gc.collect()
base = status("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak-RSS mark to the current RSS
    exact = True
except OSError:
    exact = False
peak = base
total = 0
for i in range(count):
    value = torch.full((side, side), float(i))  # 4 MiB
    cache.add(f"model.layers.{i % 10}.output.i{i // 10}", value)
    total += value.numel() * value.element_size()
    del value
    peak = max(peak, status("VmRSS"))
cache.close()
if exact:
    peak = max(peak, status("VmHWM"))
print(json.dumps({"total": total, "growth": peak - base, "exact": exact,
                  "written": cache._writer.bytes_written}))
"""


def test_streaming_400_mb_keeps_memory_bounded(tmp_path) -> None:
    count = 100  # 100 x 4 MiB = 419 MB
    result = run_child(CHILD_STREAMS, str(tmp_path), str(count))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["total"] >= 400 * 10**6 and report["written"] == report["total"]
    assert report["growth"] < 100 * 10**6, report
    print(
        f"streamed {report['total'] / 1e6:.0f} MB, peak RSS growth {report['growth'] / 1e6:.1f} MB"
    )
    loaded = load(tmp_path)
    assert len(loaded) == 10 and all(len(loaded[k]) == count // 10 for k in loaded)
    assert torch.equal(loaded["model.layers.3"][5].output, torch.full((1024, 1024), 53.0))
    assert torch.equal(loaded["model.layers.9"][9].output, torch.full((1024, 1024), 99.0))
    assert sum(f.stat().st_size for f in tmp_path.glob("shard-*")) >= report["total"]


# Writers that stream two forward passes of the toy model through plain hooks and the
# public API, each stopping for good at one chosen point of the write: it reports
# "paused <point> <pid>" and the test kills it there with SIGKILL. The writers are
# forked from one process so that torch is imported once.
CHILD_PAUSES = """
import importlib.util, os, signal, sys, torch
import endoscope_cache._logs as logs
import endoscope_cache._shards as shards
from endoscope_cache import Cache

torch.set_num_threads(1)
conftest, base, target = sys.argv[1], sys.argv[2], int(sys.argv[3])
spec = importlib.util.spec_from_file_location("toy_conftest", conftest)
toy_module = importlib.util.module_from_spec(spec)
sys.modules["toy_conftest"] = toy_module
spec.loader.exec_module(toy_module)
target_shard = shards.shard_name(target)
real_write, real_replace = shards.Sink.write, os.replace
real_append = logs.append_lines


def write_and_pause(point, directory):
    def pause():
        os.write(1, f"paused {point} {os.getpid()}\\n".encode())
        while True:
            signal.pause()

    def write(self, data):
        name = os.path.basename(self.handle.name)
        halfway = (
            # the data section of the target shard (after its length and header)
            (point == "mid-shard" and name == target_shard + ".partial" and self.size > 8)
            # the first manifest that would list the target shard
            or (point == "manifest" and name == "manifest.json.partial"
                and os.path.exists(os.path.join(directory, target_shard)))
            # the last manifest, the one that says the cache is complete
            or (point == "closing" and name == "manifest.json.partial"
                and b'"complete": true' in bytes(data))
        )
        if halfway:
            view = memoryview(data).cast("B")
            real_write(self, view[: len(view) // 2])
            self.handle.flush()
            pause()
        real_write(self, data)

    def replace(source, destination):
        real_replace(source, destination)
        if point == "between-shards" and os.path.basename(destination) == target_shard:
            pause()  # the shard is in place; the manifest does not list it yet

    def append(handle, data, fsync=True):
        # the records and shard table lines of the commit that lists the target shard
        log = os.path.basename(handle.name)
        if os.path.exists(os.path.join(directory, target_shard)):
            if (point, log) in (("mid-records", "records.jsonl"), ("mid-table", "shards.jsonl")):
                real_append(handle, data[: len(data) // 2], fsync)
                pause()
            real_append(handle, data, fsync)
            if (point, log) == ("after-records", "records.jsonl"):
                pause()  # records appended, the manifest does not commit them yet
        else:
            real_append(handle, data, fsync)

    shards.Sink.write = write
    os.replace = replace
    logs.append_lines = append
    torch.manual_seed(0)
    model = toy_module.Toy().eval()
    cache = Cache(include_inputs=True, directory=directory, shard_size=1024)
    recorder = toy_module.Recorder(model, cache)
    with torch.no_grad():
        for _ in range(2):
            recorder.new_pass()
            model(torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]))
    cache.close()
    os.write(1, f"finished {point} without pausing\\n".encode())


writers = {}
for point in sys.argv[4:]:
    pid = os.fork()
    if pid == 0:
        try:
            write_and_pause(point, os.path.join(base, point))
        finally:
            os._exit(1)
    writers[pid] = point
for pid, point in writers.items():
    _, status = os.waitpid(pid, 0)
    print("ended", point, os.waitstatus_to_exitcode(status), flush=True)
"""
# Two passes write 51 shards of 1 KiB; shard 35 is filled in the middle of the second.
KILL_POINTS = (
    "mid-shard",
    "between-shards",
    "mid-records",
    "after-records",
    "mid-table",
    "manifest",
    "closing",
)
TARGET_SHARD = 35


@pytest.fixture(scope="module")
def killed_writers(tmp_path_factory) -> dict[str, Path]:
    """One cache directory per kill point, each left by a writer killed with SIGKILL."""
    base = tmp_path_factory.mktemp("killed")
    child = subprocess.Popen(
        [
            *(sys.executable, "-W", "ignore", "-c", CHILD_PAUSES),
            *(str(CONFTEST), str(base), str(TARGET_SHARD), *KILL_POINTS),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so a failure can end the writers
    )
    ended = []
    try:
        while len(ended) < len(KILL_POINTS):
            line = child.stdout.readline()  # blocks until a writer has paused or ended
            if line.startswith("paused "):
                os.kill(int(line.split()[2]), signal.SIGKILL)
            else:
                assert line.startswith("ended "), line + child.stderr.read()
                ended.append(line.strip())
    finally:
        if len(ended) < len(KILL_POINTS):
            os.killpg(child.pid, signal.SIGKILL)
        _, err = child.communicate()
    assert child.returncode == 0, err
    assert sorted(ended) == sorted(f"ended {p} {-signal.SIGKILL}" for p in KILL_POINTS)
    return {point: base / point for point in KILL_POINTS}


def reference_passes(toy, ids, recorder_factory, passes: int):
    ref = recorder_factory(toy)
    with torch.no_grad():
        for _ in range(passes):
            ref.new_pass()
            toy(ids)
    return ref


def plain(value):
    """A dataclass as the dict a process without its class reads back."""
    if dataclasses.is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return value


def entries_of(value) -> list:
    return list(value) if isinstance(value, EntryList) else [value]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_writer_killed_at_any_point_leaves_a_cache_that_says_what_it_holds(
    point, killed_writers, toy, ids, recorder_factory, same
) -> None:
    directory = killed_writers[point]
    leftovers = {
        "mid-shard": directory / (shard_name(TARGET_SHARD) + ".partial"),
        "between-shards": directory / shard_name(TARGET_SHARD),
        "mid-records": directory / shard_name(TARGET_SHARD),
        "after-records": directory / shard_name(TARGET_SHARD),
        "mid-table": directory / shard_name(TARGET_SHARD),
        "manifest": directory / "manifest.json.partial",
        "closing": directory / "manifest.json.partial",
    }
    assert leftovers[point].exists()  # the kill really hit the write in progress
    manifest = read_manifest(directory)
    assert manifest["complete"] is False
    committed = manifest["records_file"]["bytes"]
    on_disk = (directory / RECORDS).read_bytes()
    table = (directory / SHARDS).read_bytes()
    # Killed in or after the appends to the logs, they hold more than the manifest
    # commits (half a line, or whole lines): readers see only the committed prefix.
    before_logs = ("mid-shard", "between-shards")
    assert (len(on_disk) > committed) == (point not in before_logs)
    assert on_disk.endswith(b"\n") == (point != "mid-records")
    grown = len(table) > manifest["shards_file"]["bytes"]
    assert grown == (point not in (*before_logs, "mid-records", "after-records"))
    assert table.endswith(b"\n") == (point != "mid-table")
    assert len(manifest["records"]) == manifest["records_file"]["count"]
    listed = len(manifest["shards"])
    assert listed == (50 if point == "closing" else TARGET_SHARD)

    # Opening says it is incomplete, what is complete and how to open it anyway.
    with pytest.raises(IncompleteCacheError) as raised:
        load(directory)
    message = str(raised.value)
    values = len(manifest["records"])
    assert f"complete: {values} values of" in message and f"in {listed} shards" in message
    assert "interrupted (killed or crashed) before close()" in message
    assert f"load({str(directory)!r}, allow_incomplete=True)" in message
    assert "append=True" in message
    last = manifest["records"][-1]
    assert f"the last recorded being {last['path']}." in message

    with pytest.warns(IncompleteCacheWarning, match=f"complete: {values} values"):
        loaded = load(directory, allow_incomplete=True)
    assert loaded.complete is False and loaded.model.complete is False
    assert "INCOMPLETE: its writer was interrupted" in repr(loaded).splitlines()[0]
    assert loaded.lost and all(name in message for name in loaded.lost[:5])
    assert "<lost>" in repr(loaded)

    # Everything complete equals plain torch; every lost value says it was lost.
    ref = reference_passes(toy, ids, recorder_factory, 2)
    read = lost = 0
    for path in loaded:
        for index, entry in enumerate(entries_of(loaded[path])):
            for kind, expected in (("output", ref.outputs), ("inputs", ref.inputs)):
                if not entry._has(kind):
                    continue
                name = f"{path}.{'output' if kind == 'output' else 'input'}.i{entry.iteration}"
                if index != entry.iteration:
                    name += f" (call {index})"
                if name in loaded.lost:
                    with pytest.raises(LostValueError) as raised:
                        getattr(entry, kind)
                    assert str(raised.value).startswith(f"{name} was lost: its writer was ")
                    lost += 1
                else:
                    same(getattr(entry, kind), plain(expected[path][index]))
                    read += 1
    assert read == values and lost == len(loaded.lost) > 0
    # The first pass (a whole trace) was complete before the kill and reads back whole.
    assert values > 52
    # What the writer never reached is missing, and the messages say why.
    shared = loaded["model.shared"]
    assert isinstance(shared, EntryList) and len(shared) <= 4  # two calls per pass
    with pytest.raises(IndexError, match="This cache is incomplete: its writer was interrupted"):
        shared[len(shared)]
    if "model.output.i0 (call 1)" in loaded.lost:  # the last value, lost while closing
        with pytest.raises(LostValueError, match=r"model\.output\.i0 \(call 1\) was lost"):
            _ = loaded.model.output
    else:
        with pytest.raises(AttributeError, match="holds no output.*This cache is incomplete"):
            _ = loaded.model.output

    # A new writer checks the cache, clears what the kill left, and appends a pass.
    with Cache(include_inputs=True, directory=directory, shard_size=1024, append=True) as cache:
        assert not leftovers[point].exists() and not list(directory.glob("*.partial"))
        # What the kill left past the committed records is cut off before appending.
        assert (directory / RECORDS).read_bytes() == on_disk[:committed]
        assert (directory / SHARDS).read_bytes() == table[: manifest["shards_file"]["bytes"]]
        assert len(cache.cache["model.embed"]) == 2  # the old values, readable
        recorder = recorder_factory(toy, cache)
        with torch.no_grad():
            toy(ids)
        recorder.remove()
    assert not (directory / "journal.jsonl").exists()
    whole = load(directory)  # the old complete values and the appended pass
    assert len(whole["model.embed"]) == 3
    same(whole["model.embed"][2].output, ref.outputs["model.embed"][0])
    same(whole["model.embed"][0].output, ref.outputs["model.embed"][0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = load(directory)
    assert again.complete and again.lost == ()
    new = reference_passes(toy, ids, recorder_factory, 1)
    for path in new.outputs:
        entries = entries_of(again[path])
        # The old entries that held anything complete stay, in order, untouched.
        old = [
            entry
            for entry in (entries_of(loaded[path]) if path in loaded else [])
            if any(
                e._has(k) and not isinstance(e._raw(k), LostValue)
                for e in [entry]
                for k in ("output", "inputs")
            )
        ]
        calls = len(new.outputs[path])
        assert len(entries) == len(old) + calls
        for entry, output, inputs in zip(entries[-calls:], new.outputs[path], new.inputs[path]):
            same(entry.output, output)
            same(entry.inputs, inputs)
        for entry, before in zip(entries, old):
            for kind in ("output", "inputs"):
                kept = before._has(kind) and not isinstance(before._raw(kind), LostValue)
                assert entry._has(kind) == kept
                if kept:
                    same(getattr(entry, kind), getattr(before, kind))


def test_a_cache_still_being_written_says_so(tmp_path) -> None:
    cache = Cache(directory=tmp_path, shard_size=64)
    cache.add("model.a.output.i0", torch.zeros(16))
    cache.add("model.b.output.i0", torch.ones(16))  # shard 0 written, this one buffered
    with pytest.raises(IncompleteCacheError, match="its writer is still running") as raised:
        load(tmp_path)
    assert raised.value.directory == str(tmp_path)
    assert "complete: 1 value of 1 module in 1 shard" in str(raised.value)
    with pytest.warns(IncompleteCacheWarning, match="still running"):
        partial = load(tmp_path, allow_incomplete=True)
    assert torch.equal(partial.model.a.output, torch.zeros(16))
    assert partial.lost == ("model.b.output.i0",)
    with pytest.raises(LostValueError, match="not in the cache at .* yet: its writer is still"):
        _ = partial.model.b.output
    with pytest.raises(FileExistsError, match="incomplete cache .* append=True"):
        Cache(directory=tmp_path)
    with pytest.raises(RuntimeError, match="another running writer"):
        Cache(directory=tmp_path, append=True)
    cache.close()
    done = load(tmp_path)
    assert done.complete and torch.equal(done.model.b.output, torch.ones(16))
    assert "INCOMPLETE" not in repr(done) and not (tmp_path / "journal.jsonl").exists()


def test_damaged_shards_are_named_and_the_rest_stays_readable(tmp_path) -> None:
    with Cache(directory=tmp_path, shard_size=64) as cache:
        for i in range(3):
            cache.add(f"model.layers.{i}.output.i0", torch.full((16,), float(i)))
    path = tmp_path / shard_name(1)
    data = path.read_bytes()
    path.write_bytes(data[:-4] + bytes(4))  # the last value's bytes zeroed
    loaded = load(tmp_path)  # sizes match: found on the first read from that shard
    with pytest.raises(CorruptCacheError, match=f"cache shard {path} is corrupted"):
        _ = loaded.model.layers[1].output
    assert torch.equal(loaded.model.layers[2].output, torch.full((16,), 2.0))
    unchecked = load(tmp_path, verify=False)
    assert unchecked.model.layers[1].output[-1] == 0.0
    path.write_bytes(data[:-8])
    with pytest.raises(CorruptCacheError, match=f"cache shard {path} is truncated") as raised:
        load(tmp_path)
    assert "load(directory, verify=False) reads the values in the other shards" in str(raised.value)
    damaged = load(tmp_path, verify=False)
    with pytest.raises(CorruptCacheError, match=f"cache shard {path} is damaged"):
        _ = damaged.model.layers[1].output
    assert torch.equal(damaged.model.layers[0].output, torch.zeros(16))
    (tmp_path / MANIFEST).write_text('{"format": "endoscope-cache", "rec')
    with pytest.raises(CorruptCacheError, match=f"{tmp_path / MANIFEST} is corrupted"):
        load(tmp_path)


def interrupted_writer(directory: Path) -> None:
    """What a killed writer leaves, made in this process: no close(), the lock let go."""
    cache = Cache(directory=directory, shard_size=64, include_inputs=True)
    cache._finalizer.detach()  # a killed process runs no finalizer
    cache.add("model.a.input.i0", ((torch.zeros(16),), {}))
    cache.add("model.a.output.i0", torch.ones(16))
    cache.add("model.b.input.i0", ((torch.full((16,), 2.0),), {}))
    cache.add("model.b.output.i0", torch.full((16,), 3.0))
    cache._writer._journal.close(remove=False)


def test_dump_of_an_incomplete_cache_writes_its_complete_part(tmp_path) -> None:
    interrupted_writer(tmp_path / "killed")
    with pytest.warns(IncompleteCacheWarning):
        loaded = load(tmp_path / "killed", allow_incomplete=True)
    assert loaded.lost == ("model.b.output.i0",)
    assert "model.b  output=<lost> inputs=((float32[16],), {})" in repr(loaded)
    loaded.model.b.dump(tmp_path / "copy")
    copy = load(tmp_path / "copy")
    assert copy.complete and list(copy) == ["model.b"]
    assert torch.equal(copy.model.b.input, torch.full((16,), 2.0))
    with pytest.raises(AttributeError, match="holds no output"):
        _ = copy.model.b.output


def test_append_needs_a_directory_and_starts_a_cache_where_there_is_none(tmp_path) -> None:
    with pytest.raises(ValueError, match="append=True adds to a cache on disk: pass directory="):
        Cache(append=True)
    with Cache(directory=tmp_path, append=True) as cache:
        cache.add("model.output.i0", torch.ones(2))
    with Cache(directory=tmp_path, append=True) as cache:
        cache.add("model.output.i0", torch.zeros(2))  # a second run: a second call
        assert torch.equal(cache.cache.model.output[0], torch.ones(2))
    assert [t.tolist() for t in load(tmp_path).model.output] == [[1.0, 1.0], [0.0, 0.0]]


def test_a_with_block_that_raises_leaves_a_cache_that_says_why_it_is_incomplete(
    tmp_path,
) -> None:
    with pytest.raises(KeyError, match="batch 3"), Cache(directory=tmp_path, shard_size=64) as c:
        c.add("model.a.output.i0", torch.zeros(16))
        c.add("model.b.output.i0", torch.ones(16))  # still buffered when the error comes
        raise KeyError("batch 3")
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["complete"] is False and manifest["failure"] == "KeyError: 'batch 3'"
    assert not (tmp_path / "journal.jsonl").exists()  # nothing was caught mid-encoding
    with pytest.raises(IncompleteCacheError) as raised:
        load(tmp_path)
    message = str(raised.value)
    assert (
        "the run writing it stopped with an error before the end (KeyError: 'batch 3')" in message
    )
    assert "complete: 2 values of 2 modules in 2 shards" in message  # the buffer was written
    assert "allow_incomplete=True" in message and "append=True" in message
    with pytest.warns(IncompleteCacheWarning, match="stopped with an error"):
        partial = load(tmp_path, allow_incomplete=True)
    assert not partial.complete and partial.lost == ()
    assert torch.equal(partial.model.b.output, torch.ones(16))
    with pytest.raises(IndexError, match="stopped with an error"):
        _ = partial.model.b[1]  # a call the run never reached
    # Adding to it (the failed batch run again) makes it whole; the failure is gone.
    with Cache(directory=tmp_path, append=True) as again:
        again.add("model.c.output.i0", torch.full((16,), 2.0))
    whole = load(tmp_path)
    assert whole.complete and "failure" not in json.loads((tmp_path / MANIFEST).read_text())
    assert torch.equal(whole.model.a.output, torch.zeros(16))
    assert torch.equal(whole.model.b.output, torch.ones(16))
    assert torch.equal(whole.model.c.output, torch.full((16,), 2.0))


def test_a_value_caught_mid_encoding_by_the_failure_is_listed_as_lost(tmp_path) -> None:
    cache = Cache(directory=tmp_path, shard_size=64)
    cache.add("model.a.output.i0", torch.zeros(16))
    writer = cache._writer
    writer._journal.start("model.b", 0, 0, "output")  # as if its encoding were under way
    cache.close(error=OSError(28, "No space left on device"))
    with pytest.raises(IncompleteCacheError, match=r"\(OSError: \[Errno 28\] No space left"):
        load(tmp_path)
    with pytest.warns(IncompleteCacheWarning):
        partial = load(tmp_path, allow_incomplete=True)
    assert partial.lost == ("model.b.output.i0",)
    with pytest.raises(LostValueError, match="model.b.output.i0 was lost: the run writing it"):
        _ = partial.model.b.output
    cache.close()  # idempotent: the failure stays
    assert json.loads((tmp_path / MANIFEST).read_text())["complete"] is False


def test_a_failure_that_also_breaks_the_flush_keeps_the_run_s_error_first(
    tmp_path, monkeypatch
) -> None:
    cache = Cache(directory=tmp_path, shard_size=1 << 20)
    cache.add("model.a.output.i0", torch.zeros(16))  # buffered, not yet in a shard
    writer = cache._writer

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "_flush_buffer", full_disk)
    cache.close(error=RuntimeError("the model failed"))  # does not raise the disk's error
    with pytest.raises(IncompleteCacheError, match="interrupted") as raised:
        load(tmp_path)
    assert "complete: 0 values" in str(raised.value)
    assert writer.closed
