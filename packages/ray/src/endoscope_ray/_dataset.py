"""Turning what the user passes as a dataset into rows, batches and chunks."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Batch", "Chunk", "chunks", "dataset_rows"]


def dataset_rows(dataset: Any, column: str | None) -> tuple[Iterator[Any], int | None]:
    """An iterator over the dataset's rows in order, and its length when known.

    Accepts any iterable (a list of prompts, a tensor whose first dimension is rows, a
    generator), a ``datasets.Dataset`` (with ``column``) or one of its columns, and a
    ``ray.data.Dataset`` (with ``column`` when its rows have several fields).
    """
    kind = type(dataset).__module__.split(".")[0]
    length: int | None
    if kind == "ray" and hasattr(dataset, "iter_rows"):
        rows: Iterable[Any] = dataset.iter_rows()
        # count() would run the whole pipeline of a transformed dataset just to size the
        # progress bar; the bar runs without a total instead.
        length = None
        if column is None:
            rows = (_only_field(row, "ray.data.Dataset") for row in rows)
        else:
            rows = (row[column] for row in rows)
        return iter(rows), length
    if kind == "datasets" and hasattr(dataset, "column_names") and column is None:
        names = list(dataset.column_names)
        if len(names) != 1:
            raise ValueError(
                f"this datasets.Dataset has columns {names}: pass column=... to say which "
                f"one holds the prompts (or pass dataset['text'])"
            )
        column = names[0]
    if column is not None and hasattr(dataset, "column_names"):
        dataset = dataset[column]
    if isinstance(dataset, (str, bytes)):
        raise TypeError("the dataset is a single string: pass a list of prompts, e.g. [prompt]")
    try:
        length = len(dataset)
    except TypeError:
        length = None
    try:
        return iter(dataset), length
    except TypeError:
        raise TypeError(
            f"the dataset must be an iterable of prompts or tensors, a datasets.Dataset "
            f"or a ray.data.Dataset, not {type(dataset).__name__}"
        ) from None


def _only_field(row: Any, what: str) -> Any:
    if isinstance(row, dict):
        if len(row) != 1:
            raise ValueError(
                f"the {what}'s rows have fields {sorted(row)}: pass column=... to say which "
                f"one holds the prompts"
            )
        return next(iter(row.values()))
    return row


def as_row(row: Any) -> Any:
    """A dataset row as the step gets it: numpy arrays (ray.data's tensors) as tensors."""
    if type(row).__module__ == "numpy" and hasattr(row, "__array__") and row.ndim > 0:
        return torch.tensor(row)  # a copy: ray.data's arrays are read-only
    return row


def hash_rows(rows: list[Any], hasher: Any) -> None:
    """Feed each row's content to ``hasher`` (to recognise the same data on resume)."""
    for row in rows:
        if isinstance(row, torch.Tensor):
            hasher.update(f"tensor {row.dtype} {tuple(row.shape)}".encode())
            hasher.update(row.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        elif isinstance(row, (str, bytes)):
            hasher.update(repr(row).encode())
        else:
            # Lists of ids, dicts of fields, numpy arrays: their repr is their content.
            hasher.update(repr(row).encode())
        hasher.update(b"\0")


def collate(rows: list[Any]) -> Any:
    """What the step receives: tensors of one shape stacked, anything else as a list."""
    if rows and all(isinstance(row, torch.Tensor) for row in rows):
        shapes = {tuple(row.shape) for row in rows}
        if len(shapes) == 1:
            return torch.stack(rows)
    return rows


@dataclass
class Batch:
    """Rows ``start:stop`` of the dataset, as the step receives them."""

    start: int
    stop: int
    data: Any
    chunk: int
    attempts: int = 0


@dataclass
class Chunk:
    """Rows ``start:stop``, stored together in one chunk directory."""

    number: int
    start: int
    stop: int
    digest: str
    batches: list[Batch]


def chunks(rows: Iterator[Any], batch_size: int, chunk_batches: int) -> Iterator[Chunk]:
    """Group the rows into chunks of ``chunk_batches`` batches of ``batch_size`` rows."""
    start = 0
    for number in itertools.count():
        taken = [as_row(row) for row in itertools.islice(rows, batch_size * chunk_batches)]
        if not taken:
            return
        hasher = hashlib.sha256()
        hash_rows(taken, hasher)
        batches = [
            Batch(
                start + offset,
                start + min(offset + batch_size, len(taken)),
                collate(taken[offset : offset + batch_size]),
                number,
            )
            for offset in range(0, len(taken), batch_size)
        ]
        yield Chunk(number, start, start + len(taken), hasher.hexdigest(), batches)
        start += len(taken)
