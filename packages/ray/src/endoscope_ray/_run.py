"""``map_traces``: run a step holding trace code over a dataset on Ray replicas."""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ._dataset import Batch, Chunk, chunks, dataset_rows
from ._errors import BatchError, FactoryError, RunMismatchError, StepOutputError
from ._fingerprint import PART_NAMES, fingerprint_parts, run_fingerprint
from ._progress import Progress
from ._replica import Replica, describe_function
from ._store import (
    FORMAT,
    INDEX,
    VERSION,
    Store,
    clean_partial,
    read_index,
    write_chunk,
    write_index,
)

__all__ = ["map_traces"]

DEFAULT_SHARD_SIZE = 32 * 1024 * 1024
# Batches queued on each replica, so it starts the next one as soon as one ends.
_QUEUED_PER_REPLICA = 2


class _Keys:
    """What each key's rows must look like: fixed at the first batch, or declared."""

    def __init__(self, known: Mapping[str, Any] | None, shapes: Mapping[str, Sequence[Any]]):
        self.known: dict[str, Any] | None = dict(known) if known else None
        self.shapes = {key: list(shape) for key, shape in shapes.items()}

    def check(self, values: Mapping[str, list[torch.Tensor]], batch: Batch, step: Any) -> None:
        where = f"the step {describe_function(step)} on rows {batch.start}-{batch.stop - 1}"
        for key, declared in self.shapes.items():
            if key not in values:
                raise StepOutputError(
                    f"{where} returned no {key!r}, whose shape was declared in shapes=: "
                    f"return it, or drop it from shapes="
                )
            for offset, row in enumerate(values[key]):
                if len(row.shape) != len(declared) or any(
                    want is not None and want != got for want, got in zip(declared, row.shape)
                ):
                    raise StepOutputError(
                        f"{where} returned {key!r} with row {batch.start + offset} of shape "
                        f"{list(row.shape)}, but shapes= declares {declared} (None: any "
                        f"size): fix the step or the declaration"
                    )
        info = {
            key: {
                "dtype": str(rows[0].dtype).removeprefix("torch."),
                "shape": self.shapes.get(key) or self._shape(rows),
            }
            for key, rows in values.items()
        }
        if self.known is None:
            self.known = info
            return
        if list(info) != list(self.known):
            raise StepOutputError(
                f"{where} returned keys {list(info)}, but earlier batches returned "
                f"{list(self.known)}: return the same keys for every batch"
            )
        for key, now in info.items():
            before = self.known[key]
            if now["dtype"] != before["dtype"] or len(now["shape"]) != len(before["shape"]):
                raise StepOutputError(
                    f"{where} returned {key!r} as {now['dtype']} rows of {len(now['shape'])} "
                    f"dims, but earlier rows are {before['dtype']} with {len(before['shape'])}: "
                    f"return one dtype and rank per key"
                )

    @staticmethod
    def _shape(rows: list[torch.Tensor]) -> list[int | None]:
        first = list(rows[0].shape)
        return [
            size if all(len(r.shape) == len(first) and r.shape[d] == size for r in rows) else None
            for d, size in enumerate(first)
        ]


class _Pool:
    """The replicas: starting, alive, dead, and what each has queued."""

    def __init__(self, ray: Any, make: Callable[[], Any], threads: int, restarts: int) -> None:
        self.ray = ray
        self.make = make
        self.threads = threads
        self.restarts = restarts
        self.alive: list[Any] = []
        self.starting: dict[Any, Any] = {}  # setup ref -> actor
        self.queued: dict[Any, int] = {}
        self.all: list[Any] = []

    def start(self, count: int) -> None:
        for _ in range(count):
            actor = self.make()
            self.all.append(actor)
            self.starting[actor.setup.remote(self.threads)] = actor

    def ready(self, ref: Any, factory: Any) -> None:
        actor = self.starting.pop(ref)
        try:
            self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as error:
            cause = getattr(error, "cause", None) or error
            raise FactoryError(
                f"the model factory {describe_function(factory)} failed in a replica: "
                f"{type(cause).__name__}: {cause}. Fix the factory (try calling it once "
                f"in this process); nothing was written"
            ) from cause
        except self.ray.exceptions.RayActorError:
            self.died(actor)
            return
        self.alive.append(actor)
        self.queued[actor] = 0

    def died(self, actor: Any) -> None:
        if actor in self.alive:
            self.alive.remove(actor)
            self.queued.pop(actor, None)
            if self.restarts > 0:
                self.restarts -= 1
                self.start(1)

    def shutdown(self) -> None:
        for actor in self.all:
            try:
                self.ray.kill(actor)
            except Exception:  # already gone
                pass


def map_traces(
    factory: Callable[[], Any],
    step: Callable[[Any, Any], Any],
    dataset: Any,
    out: str | os.PathLike[str] | None = None,
    *,
    batch_size: int = 32,
    replicas: int = 1,
    resources_per_replica: Mapping[str, float] | None = None,
    threads_per_replica: int | None = None,
    column: str | None = None,
    mask: str | None = None,
    lengths: str | None = None,
    per_token: Collection[str] | None = None,
    shapes: Mapping[str, Sequence[int | None]] | None = None,
    chunk_rows: int = 1024,
    shard_size: int = DEFAULT_SHARD_SIZE,
    on_error: str = "raise",
    max_attempts: int = 3,
    replica_restarts: int = 0,
    progress: bool | None = None,
    address: str | None = None,
) -> Store:
    """Run ``step(model, batch)`` over every row of ``dataset`` on Ray replicas.

    Each replica is a Ray actor that calls ``factory()`` once and then runs ``step``
    (any trace code) on the batches it is given; batches are spread over the
    replicas, and the tensors the step returns are split into rows and written in
    dataset order to ``out`` as endoscope-cache shards, one chunk of ``chunk_rows``
    rows at a time, with one index over all chunks. Running again with the same
    ``out`` resumes: whole chunks are kept, the rest is redone.

    Args:
        factory: builds the model in each replica, e.g.
            ``lambda: endoscope.LanguageModel("gpt2", dispatch=True)``.
        step: ``step(model, batch) -> tensor | dict[str, tensor]``; every tensor's
            first dimension is the batch's rows. ``batch`` is a list of the dataset's
            rows (tensors of one shape are stacked into one tensor).
        dataset: an iterable of prompts or tensors, a ``datasets.Dataset`` (or one of
            its columns) or a ``ray.data.Dataset``.
        out: a directory to stream rows to (created; resumed if it holds this run),
            or None to return the rows in memory (small runs).
        batch_size: rows per batch.
        replicas: how many actors to start.
        resources_per_replica: Ray resources per actor, e.g. ``{"GPU": 1}``;
            ``{"CPU": 1}`` by default.
        threads_per_replica: torch threads in each replica; by default its CPUs.
        column: which field holds the prompts (``datasets``/``ray.data`` rows).
        mask: key of the step's result holding the ``[rows, tokens]`` attention mask;
            per-token values keep only the masked-in positions, so a row is exactly
            its prompt's tokens. The mask itself is not stored.
        lengths: key holding each row's token count (left padding: the last
            ``length`` positions are kept); an alternative to ``mask``.
        per_token: keys to cut with ``mask``/``lengths``; by default every value
            whose second dimension is the mask's width.
        shapes: declared shape of one row per key (None for any size); a batch that
            differs stops the run.
        chunk_rows: rows per chunk (rounded to whole batches): the unit of resume.
        shard_size: bytes per safetensors shard inside a chunk.
        on_error: ``"raise"`` stops at the first batch whose step raises;
            ``"skip"`` records its rows in ``store.failed`` and goes on.
        max_attempts: runs of one batch on replicas that died before it is failed.
        replica_restarts: replacement replicas started when replicas die.
        progress: show a progress bar; None shows it on a terminal or in a notebook.
        address: the Ray cluster to connect to when Ray is not initialised yet
            (None starts a local one, or uses ``RAY_ADDRESS``).

    Returns:
        A :class:`Store`: ``store[key][row]``, ``store[key][a:b]``, and
        ``store[key]`` is a ``torch.utils.data.Dataset``.

    Raises:
        BatchError: the step raised on a batch (with ``on_error="raise"``).
        StepOutputError: the step returned something that is not a tensor, or rows
            whose shape or dtype differ from earlier batches or from ``shapes``.
        RunMismatchError: ``out`` holds a different run's data.
        FactoryError: ``factory`` failed in a replica.
    """
    if not callable(factory) or not callable(step):
        raise TypeError("map_traces(factory, step, dataset): factory and step must be callables")
    if batch_size < 1 or replicas < 1 or chunk_rows < 1 or max_attempts < 1:
        raise ValueError("batch_size, replicas, chunk_rows and max_attempts must be at least 1")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if mask is not None and lengths is not None:
        raise ValueError("pass mask= or lengths=, not both")
    chunk_batches = max(1, chunk_rows // batch_size)
    shapes = dict(shapes or {})
    config = {
        "batch_size": batch_size,
        "chunk_batches": chunk_batches,
        "mask": mask,
        "lengths": lengths,
        "per_token": sorted(per_token) if per_token is not None else None,
        "shapes": {key: list(shape) for key, shape in shapes.items()},
        "column": column,
    }
    parts = fingerprint_parts(factory, step, config)
    path = None if out is None else Path(out)
    index = _open_out(path, parts, config, factory, step)
    if index["complete"]:
        return Store(index, path=path)
    done = {chunk["number"]: chunk for chunk in index["chunks"]}
    memory: dict[int, dict[str, list[torch.Tensor | None]]] | None = None if path else {}

    rows_iter, total = dataset_rows(dataset, column)
    todo: Iterator[Chunk] = chunks(rows_iter, batch_size, chunk_batches)

    import ray

    if not ray.is_initialized():
        ray.init(address=address)
    resources = dict(resources_per_replica or {"CPU": 1})
    cpus = float(resources.pop("CPU", 1))
    gpus = float(resources.pop("GPU", 0))
    threads = threads_per_replica or max(1, int(cpus))
    actor_class = ray.remote(Replica).options(
        num_cpus=cpus, num_gpus=gpus, resources=resources or None, max_restarts=0
    )
    pool = _Pool(
        ray,
        lambda: actor_class.remote(factory, step, mask, lengths, per_token),
        threads,
        replica_restarts,
    )
    initial = sum(chunk["stop"] - chunk["start"] for chunk in done.values())
    bar = Progress(progress, total, initial)
    keys = _Keys(index.get("keys"), shapes)
    began = time.monotonic()
    try:
        pool.start(replicas)
        # Every replica loads its model before the first batch: a failing factory
        # stops the run here, with nothing written.
        while pool.starting:
            ready, _ = ray.wait(list(pool.starting), num_returns=1)
            pool.ready(ready[0], factory)
        if not pool.alive:
            raise RuntimeError("every replica died while loading the model; see the Ray logs")
        bar.begin(len(pool.alive))
        loaded = time.monotonic()
        index["timing"] = {"load_seconds": round(loaded - began, 3), "run_seconds": None}
        _schedule(ray, pool, todo, done, index, path, memory, keys, step, factory,
                  on_error, max_attempts, shard_size, bar)  # fmt: skip
    finally:
        bar.close()
        pool.shutdown()
    index["timing"]["run_seconds"] = round(time.monotonic() - loaded, 3)
    index["rows"] = max((c["stop"] for c in index["chunks"]), default=0)
    index["complete"] = True
    if path is not None:
        write_index(path, index)
    if memory is None:
        return Store(index, path=path)
    columns: dict[str, list[torch.Tensor | None]] = {key: [] for key in index["keys"] or {}}
    for number in sorted(memory):
        for key, rows in columns.items():
            rows.extend(memory[number].get(key) or [None] * _rows_of(index, number))
    return Store(index, rows=columns)


def _rows_of(index: Mapping[str, Any], number: int) -> int:
    chunk = next(c for c in index["chunks"] if c["number"] == number)
    return int(chunk["stop"] - chunk["start"])


def _open_out(
    path: Path | None,
    parts: Mapping[str, str],
    config: Mapping[str, Any],
    factory: Any,
    step: Any,
) -> dict[str, Any]:
    """The index to continue: ``out``'s own (same run), or a new one."""
    fingerprint = run_fingerprint(parts)
    fresh: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": fingerprint,
        "fingerprint_parts": dict(parts),
        "run": {
            "factory": describe_function(factory),
            "step": describe_function(step),
            **config,
        },
        "keys": None,
        "chunks": [],
        "failed": [],
        "tokens": 0,
        "rows": None,
        "complete": False,
    }
    if path is None:
        return fresh
    index = read_index(path)
    if index is not None:
        if index.get("fingerprint") != fingerprint:
            # An index written before the parts were kept names no part.
            theirs = index.get("fingerprint_parts") or {}
            differ = [
                PART_NAMES[name] for name in parts if name in theirs and theirs[name] != parts[name]
            ]
            what = " and ".join(differ) or "its fingerprint"
            raise RunMismatchError(
                f"{path} holds a different run's data (step {index['run'].get('step')}, "
                f"batch_size={index['run'].get('batch_size')}); this run "
                f"(step {describe_function(step)}) would mix with it: {what} "
                f"{'differ' if len(differ) > 1 else 'differs'}. Pass a new out=, or "
                f"delete {path} to start over. Nothing was changed"
            )
        clean_partial(path, index)
        return index
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RunMismatchError(
            f"{path} already exists and is not an endoscope-ray run (no {INDEX}): pass a "
            f"new or empty directory as out=. Nothing was changed"
        )
    path.mkdir(parents=True, exist_ok=True)
    write_index(path, fresh)
    return fresh


def _schedule(
    ray: Any,
    pool: _Pool,
    todo: Iterator[Chunk],
    done: Mapping[int, Any],
    index: dict[str, Any],
    path: Path | None,
    memory: dict[int, dict[str, list[torch.Tensor | None]]] | None,
    keys: _Keys,
    step: Any,
    factory: Any,
    on_error: str,
    max_attempts: int,
    shard_size: int,
    bar: Progress,
) -> None:
    """Feed batches to the replicas in dataset order; write each chunk when whole."""
    queue: collections.deque[Batch] = collections.deque()
    open_chunks: dict[int, tuple[Chunk, dict[int, Any]]] = {}
    running: dict[Any, tuple[Batch, Any]] = {}
    exhausted = False

    def refill() -> None:
        nonlocal exhausted
        while not queue and not exhausted:
            chunk = next(todo, None)
            if chunk is None:
                exhausted = True
                return
            stored = done.get(chunk.number)
            if stored is not None:
                if stored["digest"] != chunk.digest or stored["stop"] != chunk.stop:
                    raise RunMismatchError(
                        f"rows {chunk.start}-{chunk.stop - 1} of the dataset differ from the "
                        f"rows {path} holds for them: this is another dataset (or order). "
                        f"Pass a new out=, or delete {path} to start over"
                    )
                continue
            open_chunks[chunk.number] = (chunk, {})
            queue.extend(chunk.batches)

    while True:
        refill()
        for actor in list(pool.alive):
            while queue and pool.queued.get(actor, 0) < _QUEUED_PER_REPLICA:
                batch = queue.popleft()
                ref = actor.run.remote(batch.start, batch.stop, batch.data)
                running[ref] = (batch, actor)
                pool.queued[actor] += 1
        waiting = list(running) + list(pool.starting)
        if not waiting:
            if queue:
                raise RuntimeError(
                    f"every replica died; rows {queue[0].start} onwards were not run. "
                    f"Call map_traces again with the same out= to resume, or pass "
                    f"replica_restarts= to replace replicas that die"
                )
            return
        ready, _ = ray.wait(waiting, num_returns=1, timeout=1.0)
        for ref in ready:
            if ref in pool.starting:
                pool.ready(ref, factory)
                bar.replicas(len(pool.alive))
                continue
            batch, actor = running.pop(ref)
            if actor in pool.queued:
                pool.queued[actor] -= 1
            try:
                result: Any = ray.get(ref)
            except ray.exceptions.RayActorError:
                # The replica died (killed, out of memory, node lost): run elsewhere.
                pool.died(actor)
                bar.replicas(len(pool.alive))
                batch.attempts += 1
                if batch.attempts >= max_attempts:
                    raise BatchError(
                        f"rows {batch.start}-{batch.stop - 1}: the replica running them died "
                        f"{batch.attempts} times (out of memory?). Use a smaller batch_size, "
                        f"then call map_traces again with the same out= to resume",
                        batch.start,
                        batch.stop,
                    ) from None
                # Back in dataset order (the queue holds at most a chunk's batches), so
                # chunks still complete in order.
                queue.append(batch)
                ordered = sorted(queue, key=lambda queued: queued.start)
                queue.clear()
                queue.extend(ordered)
                continue
            except ray.exceptions.RayTaskError as error:
                cause = getattr(error, "cause", None) or error
                if isinstance(cause, StepOutputError):
                    raise StepOutputError(str(cause)) from None
                message = f"{type(cause).__name__}: {cause}"
                if on_error == "raise":
                    raise BatchError(
                        f"the step {describe_function(step)} raised on rows "
                        f"{batch.start}-{batch.stop - 1}: {message}{_raised_at(error)}\nRows "
                        f"of whole chunks "
                        f"before it are kept; fix the step and call map_traces again with "
                        f"the same out= to resume (or pass on_error='skip')",
                        batch.start,
                        batch.stop,
                    ) from cause
                result = {"error": message}
            else:
                keys.check(result["values"], batch, step)
            chunk, results = open_chunks[batch.chunk]
            results[batch.start] = result
            bar.update(batch.stop - batch.start, int(result.get("tokens", 0)), len(pool.alive))
            if len(results) == len(chunk.batches):
                del open_chunks[batch.chunk]
                _finish_chunk(chunk, results, index, path, memory, keys, shard_size)


def _raised_at(error: Any) -> str:
    """Where in the user's code the step raised, from the replica's traceback."""
    frames = [
        line.strip()
        for line in str(error).splitlines()  # Ray puts the replica's traceback in the message
        if line.strip().startswith("File ") and "endoscope_ray" not in line
    ]
    return f"\n  raised at {frames[-1]}" if frames else ""


def _finish_chunk(
    chunk: Chunk,
    results: Mapping[int, Any],
    index: dict[str, Any],
    path: Path | None,
    memory: dict[int, dict[str, list[torch.Tensor | None]]] | None,
    keys: _Keys,
    shard_size: int,
) -> None:
    """Store a whole chunk's rows in order and record it in the index."""
    rows: dict[str, list[torch.Tensor]] = {key: [] for key in keys.known or {}}
    # In memory, failed rows are None so rows stay at their dataset positions.
    held: dict[str, list[torch.Tensor | None]] = {key: [] for key in keys.known or {}}
    failed = []
    tokens = 0
    for batch in chunk.batches:
        result = results[batch.start]
        if "error" in result:
            failed.append({"start": batch.start, "stop": batch.stop, "error": result["error"]})
            for column in held.values():
                column.extend([None] * (batch.stop - batch.start))
            continue
        tokens += int(result["tokens"])
        for key, values in result["values"].items():
            rows[key].extend(values)
            held[key].extend(values)
    if memory is not None:
        memory[chunk.number] = held
    if path is not None:
        name = write_chunk(path, chunk.number, rows, shard_size) if any(rows.values()) else None
    index["keys"] = keys.known
    index["tokens"] = int(index.get("tokens", 0)) + tokens
    index["failed"].extend(failed)
    index["chunks"].append(
        {"number": chunk.number, "start": chunk.start, "stop": chunk.stop,
         "digest": chunk.digest, "dir": name if path is not None else None}
    )  # fmt: skip
    if path is not None:
        write_index(path, index)
