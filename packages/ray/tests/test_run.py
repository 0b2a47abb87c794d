"""map_traces on the session's local Ray cluster: values, dataset kinds, faults, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import _models
import pytest
import torch

import endoscope_ray
from endoscope_ray import BatchError, FactoryError, RunMismatchError, StepOutputError


def _same_rows(store_column: Any, expected: list[torch.Tensor], exact: bool = True) -> None:
    assert len(store_column) == len(expected)
    for got, want in zip(store_column, expected):
        assert got.shape == want.shape
        if exact:
            assert torch.equal(got, want)
        else:  # plain torch on one big batch may round the last bit differently
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_demo_model_rows_equal_a_plain_loop(ray_cluster: Any, tmp_path: Path) -> None:
    prompts = _models.PROMPTS
    store = endoscope_ray.map_traces(
        _models.load_demo, _models.demo_step, prompts, out=tmp_path / "acts",
        batch_size=3, replicas=2, mask="mask", chunk_rows=6, progress=False,
    )  # fmt: skip
    assert store.complete and len(store) == len(prompts)
    assert store.keys == ["hidden", "last"]  # the mask is a means, not stored
    lm = _models.load_demo()
    # The same step over the same batches in a plain loop: identical values, padding cut.
    # On one torch thread, as each replica (one CPU each) runs: a CI run on a loaded
    # machine saw the driver's two-thread result differ in the 4th decimal, as when a
    # math library splits a sum across a varying number of threads.
    hidden: list[torch.Tensor] = []
    last: list[torch.Tensor] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for start in range(0, len(prompts), 3):
            result = _models.demo_step(lm, prompts[start : start + 3])
            for row, m in zip(result["hidden"], result["mask"].bool()):
                hidden.append(row[m].detach())
            last.extend(result["last"].detach())
    finally:
        torch.set_num_threads(threads)
    _same_rows(store["hidden"], hidden)
    _same_rows(store["last"], last)
    # And one prompt at a time (no padding at all): a row is exactly its prompt's tokens.
    tokens = 0
    for i, prompt in enumerate(prompts):
        with lm.trace(prompt):
            alone = lm.transformer.h[1].output.save()
        tokens += alone.shape[1]
        assert store["hidden"][i].shape == alone[0].shape
        torch.testing.assert_close(store["hidden"][i], alone[0].detach(), rtol=1e-5, atol=1e-5)
    assert store.tokens == tokens
    # Chunks are endoscope-cache directories under one index; reopening reads lazily.
    index = json.loads((tmp_path / "acts" / "index.json").read_text())
    assert [c["start"] for c in index["chunks"]] == [0, 6]
    again = endoscope_ray.open_store(tmp_path / "acts")
    assert torch.equal(again["hidden"][-1], hidden[-1])
    assert [r.shape for r in again["hidden"][2:5]] == [r.shape for r in hidden[2:5]]
    loader = torch.utils.data.DataLoader(again["last"], batch_size=4)
    assert torch.equal(torch.cat(list(loader)), torch.stack(last))


def test_in_memory_dataset_kinds_and_tensor_rows(ray_cluster: Any) -> None:
    import datasets

    data = _models.rows(10)
    expected = _models.mlp_reference(torch.stack(data))
    table = datasets.Dataset.from_dict({"x": [row.tolist() for row in data], "id": list(range(10))})
    ray_data = ray_cluster.data.from_items([{"x": row} for row in data])
    # Lists and generators are read by the same code (test_dataset.py).
    sources: list[tuple[Any, str | None]] = [
        (ray_data, None),
        (table.with_format("torch"), "x"),
    ]
    for source, column in sources:
        store = endoscope_ray.map_traces(
            _models.load_mlp, _models.mlp_step, source, batch_size=4, column=column,
            progress=False,
        )  # fmt: skip
        assert store.path is None and len(store) == 10
        for key in ("hidden", "out"):
            got = torch.stack(store[key][:])
            torch.testing.assert_close(got, expected[key], rtol=1e-6, atol=1e-6)


def test_killed_replica_batches_run_elsewhere(ray_cluster: Any, tmp_path: Path) -> None:
    data = _models.rows(24)
    data[8][0] = _models.KILL_VALUE  # the batch of rows 8-11 kills its replica
    marker = tmp_path / "killed"
    store = endoscope_ray.map_traces(
        _models.load_mlp, _models.killing_step(str(marker)), data, out=tmp_path / "out",
        batch_size=4, replicas=2, chunk_rows=8, progress=False,
    )  # fmt: skip
    assert marker.exists()  # a replica did die mid-batch
    expected = _models.mlp_reference(torch.stack(data))
    assert len(store) == 24
    _same_rows(store["out"], list(expected["out"]), exact=False)
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert sorted((c["start"], c["stop"]) for c in index["chunks"]) == [(0, 8), (8, 16), (16, 24)]


def test_every_replica_dead_stops_resumably_and_restarts_replace_them(
    ray_cluster: Any, tmp_path: Path
) -> None:
    data = _models.rows(16)
    data[8][0] = _models.KILL_VALUE
    out = tmp_path / "out"
    marker = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="every replica died; rows 8 onwards were not run"):
        endoscope_ray.map_traces(
            _models.load_mlp, _models.killing_step(str(marker)), data, out=out,
            batch_size=4, chunk_rows=8, progress=False,
        )  # fmt: skip
    assert len(endoscope_ray.open_store(out)) == 8
    # Same run (same step, built with the same marker), resumed; with the marker gone
    # its only replica dies again and is replaced.
    marker.unlink()
    store = endoscope_ray.map_traces(
        _models.load_mlp, _models.killing_step(str(marker)), data, out=out,
        batch_size=4, chunk_rows=8, replica_restarts=1, progress=False,
    )  # fmt: skip
    assert marker.exists() and store.complete
    expected = _models.mlp_reference(torch.stack(data))
    _same_rows(store["out"], list(expected["out"]), exact=False)


def test_step_exception_stops_with_row_range_or_is_skipped(
    ray_cluster: Any, tmp_path: Path
) -> None:
    data = _models.rows(16)
    data[9][0] = -1000.0
    with pytest.raises(BatchError, match=r"rows 8-11: ValueError: bad row") as caught:
        endoscope_ray.map_traces(
            _models.load_mlp, _models.failing_step, data, out=tmp_path / "a",
            batch_size=4, chunk_rows=8, progress=False,
        )  # fmt: skip
    assert (caught.value.start, caught.value.stop) == (8, 12)
    assert 'raised at File "' in str(caught.value) and "in failing_step" in str(caught.value)
    assert isinstance(caught.value.__cause__, ValueError)
    partial = endoscope_ray.open_store(tmp_path / "a")
    assert not partial.complete and len(partial) == 8  # the first chunk was kept
    expected = _models.mlp_reference(torch.stack(data))
    _same_rows(partial["out"], list(expected["out"][:8]), exact=False)

    store = endoscope_ray.map_traces(
        _models.load_mlp, _models.failing_step, data, out=tmp_path / "b",
        batch_size=4, chunk_rows=8, on_error="skip", progress=False,
    )  # fmt: skip
    assert store.complete and len(store) == 16
    assert [(start, stop) for start, stop, _ in store.failed] == [(8, 12)]
    with pytest.raises(KeyError, match="row 9 has no value: its batch failed"):
        store["out"][9]
    for i in [*range(8), *range(12, 16)]:
        torch.testing.assert_close(store["out"][i], expected["out"][i], rtol=1e-6, atol=1e-6)


def test_bad_input_is_reported_early_and_damages_nothing(ray_cluster: Any, tmp_path: Path) -> None:
    data = _models.rows(8)

    def returns_list(model: Any, x: torch.Tensor) -> Any:
        return [x]

    with pytest.raises(StepOutputError, match=r"returns_list .*returned list: return a tensor"):
        endoscope_ray.map_traces(_models.load_mlp, returns_list, data, out=tmp_path / "a",
                                 batch_size=4, progress=False)  # fmt: skip
    assert json.loads((tmp_path / "a" / "index.json").read_text())["chunks"] == []

    def grows(model: Any, x: torch.Tensor) -> Any:
        return {"h": torch.zeros(x.shape[0], 2 + int(x[0, 1] == data[4][1]))}

    with pytest.raises(
        StepOutputError, match=r"rows 4-7 .*shape \[3\], but shapes= declares \[2\]"
    ):
        endoscope_ray.map_traces(_models.load_mlp, grows, data, out=tmp_path / "b",
                                 batch_size=4, chunk_rows=4, shapes={"h": (2,)},
                                 progress=False)  # fmt: skip
    kept = endoscope_ray.open_store(tmp_path / "b")
    assert len(kept) == 4 and torch.equal(kept["h"][3], torch.zeros(2))

    # Another run's directory: refused before any replica starts, files untouched.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "b").rglob("*")}
    with pytest.raises(RunMismatchError, match="holds a different run's data"):
        endoscope_ray.map_traces(_models.load_mlp, _models.mlp_step, data, out=tmp_path / "b",
                                 batch_size=4, progress=False)  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "b").rglob("*")} == before
    # The same code built with another captured value is another run.
    endoscope_ray.map_traces(_models.load_mlp, _models.scaled_step(2.0), data,
                             out=tmp_path / "scaled", batch_size=4, progress=False)  # fmt: skip
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "scaled").rglob("*")}
    with pytest.raises(
        RunMismatchError, match=r"would mix with it: the step \(its code or the values it was built"
    ):
        endoscope_ray.map_traces(_models.load_mlp, _models.scaled_step(3.0), data,
                                 out=tmp_path / "scaled", batch_size=4, progress=False)  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "scaled").rglob("*")} == written
    # The same run over other data: refused at the first chunk it holds, files untouched.
    other = _models.rows(8)
    other[0][0] += 1
    with pytest.raises(RunMismatchError, match=r"rows 0-3 of the dataset differ from the rows"):
        endoscope_ray.map_traces(_models.load_mlp, grows, other, out=tmp_path / "b",
                                 batch_size=4, chunk_rows=4, shapes={"h": (2,)},
                                 progress=False)  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "b").rglob("*")} == before

    def broken_factory() -> Any:
        raise OSError("no weights at /nowhere")

    with pytest.raises(FactoryError, match=r"broken_factory .*OSError: no weights at /nowhere"):
        endoscope_ray.map_traces(broken_factory, _models.mlp_step, data, out=tmp_path / "c",
                                 progress=False)  # fmt: skip
    assert json.loads((tmp_path / "c" / "index.json").read_text())["chunks"] == []


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import _models, ray
from ray import cloudpickle
import endoscope_ray
cloudpickle.register_pickle_by_value(_models)
ray.init(address={address!r}, log_to_driver=False)
endoscope_ray.map_traces(
    _models.load_mlp, _models.gated_step({hold!r}, {progress!r}), _models.numbered_rows(20),
    out={out!r}, batch_size=4, chunk_rows=4, progress=False,
)
"""


def test_killed_driver_resumes_with_the_same_out(ray_cluster: Any, tmp_path: Path) -> None:
    out, hold, progress = tmp_path / "out", tmp_path / "hold", tmp_path / "progress"
    hold.touch()
    progress.mkdir()
    address = ray_cluster.get_runtime_context().gcs_address
    script = DRIVER.format(
        tests=str(Path(__file__).parent), address=address, hold=str(hold),
        progress=str(progress), out=str(out),
    )  # fmt: skip
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)])
    try:
        # The step holds at row 8: wait until rows 0-7 (two chunks) are in the index.
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None:
            index = out / "index.json"
            if index.is_file() and len(json.loads(index.read_text())["chunks"]) == 2:
                break
            time.sleep(0.2)
        assert driver.poll() is None, "the driver ended before it was killed"
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
    chunks = json.loads((out / "index.json").read_text())["chunks"]
    assert sorted(c["start"] for c in chunks) == [0, 4]
    kept = {p: p.stat().st_mtime_ns for p in out.glob("chunk-*/*")}
    hold.unlink()
    for done in progress.iterdir():
        done.unlink()
    data = _models.numbered_rows(20)
    store = endoscope_ray.map_traces(
        _models.load_mlp, _models.gated_step(str(hold), str(progress)), data, out=out,
        batch_size=4, chunk_rows=4, progress=False,
    )  # fmt: skip
    # Completed chunks were kept as they were; only the rest ran again.
    assert {p: p.stat().st_mtime_ns for p in out.glob("chunk-0000[01]/*")} == kept
    assert sorted(int(p.name) for p in progress.iterdir()) == [8, 12, 16]
    expected = _models.mlp_reference(torch.stack(data))
    assert store.complete and len(store) == 20
    _same_rows(store["hidden"], list(expected["hidden"]), exact=False)
    _same_rows(store["out"], list(expected["out"]), exact=False)
    # Called again when complete: the stored run, nothing recomputed.
    index_before = (out / "index.json").stat().st_mtime_ns
    again = endoscope_ray.map_traces(
        _models.load_mlp, _models.gated_step(str(hold), str(progress)), data, out=out,
        batch_size=4, chunk_rows=4, progress=False,
    )  # fmt: skip
    assert (out / "index.json").stat().st_mtime_ns == index_before
    assert torch.equal(again["out"][19], store["out"][19])
