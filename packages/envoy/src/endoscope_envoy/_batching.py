"""Batching several invokes' inputs into one forward pass, and slicing values back.

Each invoke with inputs owns a contiguous block of rows along dim 0 of the batched
forward, its *batch group* ``(start, size)``. :class:`TorchBatcher` implements the
interleaver's ``Batcher`` protocol: ``narrow`` gives an invoke a view of its rows
(so in-place edits reach the model), ``swap`` puts a replacement for those rows
back into the whole value. Tensors whose first dimension is not the batch size
(weights, scalars, caches laid out differently) are shared whole by every invoke.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["BatchGroup", "BatchingError", "TorchBatcher", "batch_inputs", "map_tensors"]

BatchGroup = tuple[int, int]


class BatchingError(ValueError):
    """The inputs of several invokes cannot be combined into one batch."""


def map_tensors(value: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """Apply ``fn`` to every tensor inside nested tuples, lists, dicts and dataclasses."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple):
        mapped = [map_tensors(v, fn) for v in value]
        return type(value)(*mapped) if hasattr(value, "_fields") else type(value)(mapped)
    if isinstance(value, list):
        return [map_tensors(v, fn) for v in value]
    if isinstance(value, dict):
        out = value.__class__.__new__(value.__class__) if _is_model_output(value) else None
        if out is not None:
            # transformers ModelOutput: a dataclass and an OrderedDict at once.
            for key, item in value.items():
                out[key] = map_tensors(item, fn)
            return out
        return type(value)((k, map_tensors(v, fn)) for k, v in value.items())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: map_tensors(getattr(value, f.name), fn) for f in dataclasses.fields(value)
        }
        return dataclasses.replace(value, **changes)
    return value


def _is_model_output(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and isinstance(value, dict)


def _zip_map(value: Any, other: Any, fn: Callable[[torch.Tensor, Any], Any], where: str) -> Any:
    """Walk two values of the same structure, applying ``fn`` to tensors of ``value``."""
    if isinstance(value, torch.Tensor):
        return fn(value, other)
    if isinstance(value, (tuple, list)) and isinstance(other, (tuple, list)):
        if len(value) != len(other):
            raise BatchingError(
                f"{where}: the replacement has {len(other)} items where the value has "
                f"{len(value)}. Assign a value of the same structure."
            )
        mapped = [_zip_map(v, o, fn, f"{where}[{i}]") for i, (v, o) in enumerate(zip(value, other))]
        if isinstance(value, list):
            return mapped
        return type(value)(*mapped) if hasattr(value, "_fields") else type(value)(mapped)
    if isinstance(value, dict) and isinstance(other, dict):
        out = value.__class__.__new__(value.__class__) if _is_model_output(value) else {}
        for key, item in value.items():
            out[key] = _zip_map(item, other[key], fn, f"{where}[{key!r}]") if key in other else item
        return out if _is_model_output(value) else type(value)(out)
    if dataclasses.is_dataclass(value) and dataclasses.is_dataclass(other):
        changes = {
            f.name: _zip_map(
                getattr(value, f.name), getattr(other, f.name), fn, f"{where}.{f.name}"
            )
            for f in dataclasses.fields(value)
        }
        return dataclasses.replace(value, **changes)  # type: ignore[type-var]
    return other


class TorchBatcher:
    """Slices values along dim 0 for the invokes sharing one forward pass.

    Args:
        batch_size: the total number of rows of the batched forward.
    """

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"TorchBatcher(batch_size={self.batch_size})"

    def _batched(self, tensor: torch.Tensor) -> bool:
        return tensor.dim() > 0 and tensor.shape[0] == self.batch_size

    def narrow(self, value: Any, batch_group: BatchGroup) -> Any:
        """The rows of ``batch_group`` of every batched tensor in ``value`` (views)."""
        start, size = batch_group
        if start == 0 and size == self.batch_size:
            return value
        return map_tensors(value, lambda t: t.narrow(0, start, size) if self._batched(t) else t)

    def swap(self, value: Any, replacement: Any, batch_group: BatchGroup) -> Any:
        """``value`` with ``batch_group``'s rows replaced by ``replacement``'s."""
        start, size = batch_group
        if start == 0 and size == self.batch_size:
            return replacement

        def put(whole: torch.Tensor, part: Any) -> Any:
            if not self._batched(whole):
                return part
            if not isinstance(part, torch.Tensor):
                part = torch.as_tensor(part, dtype=whole.dtype, device=whole.device)
            if part.dim() == 0 or part.shape[0] != size:
                part = part.expand(size, *whole.shape[1:])
            if (
                part.data_ptr() == whole.narrow(0, start, size).data_ptr()
                and part.shape == whole.narrow(0, start, size).shape
            ):
                return whole  # the invoke's own view, edited in place
            pieces = [
                whole.narrow(0, 0, start),
                part.to(whole.dtype),
                whole.narrow(0, start + size, self.batch_size - start - size),
            ]
            return torch.cat(pieces, dim=0)

        return _zip_map(value, replacement, put, "value")


def _leading_size(value: Any) -> int | None:
    found: list[int] = []

    def visit(tensor: torch.Tensor) -> torch.Tensor:
        if not found and tensor.dim() > 0:
            found.append(tensor.shape[0])
        return tensor

    map_tensors(value, visit)
    return found[0] if found else None


def _combine(values: Sequence[Any], where: str) -> Any:
    first = values[0]
    if isinstance(first, torch.Tensor):
        if not all(isinstance(v, torch.Tensor) for v in values):
            raise BatchingError(f"{where}: some invokes pass a tensor here and some do not.")
        shapes = {tuple(v.shape[1:]) for v in values}
        if any(v.dim() == 0 for v in values) or len(shapes) > 1:
            listed = ", ".join(str(tuple(v.shape)) for v in values)
            raise BatchingError(
                f"{where}: tensors of shapes {listed} cannot be stacked along dim 0 "
                "(every dimension but the first must match). Pad them to one shape, "
                "or run them in separate traces."
            )
        return torch.cat(list(values), dim=0)
    if isinstance(first, (tuple, list)):
        if any(not isinstance(v, (tuple, list)) or len(v) != len(first) for v in values):
            raise BatchingError(f"{where}: invokes pass sequences of different lengths.")
        items = [_combine([v[i] for v in values], f"{where}[{i}]") for i in range(len(first))]
        return (
            type(first)(items)
            if isinstance(first, list) or not hasattr(first, "_fields")
            else type(first)(*items)
        )
    if isinstance(first, dict):
        keys = list(first)
        if any(not isinstance(v, dict) or list(v) != keys for v in values):
            raise BatchingError(f"{where}: invokes pass different keyword arguments.")
        return type(first)((k, _combine([v[k] for v in values], f"{where}[{k!r}]")) for k in keys)
    if all(v is first or v == first for v in values):
        return first
    raise BatchingError(
        f"{where}: invokes pass different non-tensor values ({values!r}), which cannot be batched."
    )


def batch_inputs(
    inputs: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
) -> tuple[tuple[Any, ...], dict[str, Any], list[BatchGroup], int]:
    """Combine several invokes' ``(args, kwargs)`` into one batch along dim 0.

    Returns:
        The batched args and kwargs, each invoke's ``(start, size)`` rows, and the
        total batch size.

    Raises:
        BatchingError: the inputs do not share a structure, tensors differ in
            shape beyond dim 0, or non-tensor arguments differ.
    """
    groups: list[BatchGroup] = []
    start = 0
    for index, (args, kwargs) in enumerate(inputs):
        size = _leading_size((args, kwargs))
        if size is None:
            raise BatchingError(
                f"invoke {index} has no tensor input with a batch dimension to batch along."
            )
        groups.append((start, size))
        start += size
    if len(inputs) == 1:
        args, kwargs = inputs[0]
        return args, kwargs, groups, start
    arg_counts = {len(args) for args, _ in inputs}
    if len(arg_counts) > 1:
        raise BatchingError("invokes pass different numbers of positional arguments.")
    args = tuple(
        _combine([a[i] for a, _ in inputs], f"positional argument {i}")
        for i in range(arg_counts.pop())
    )
    kwargs = _combine([k for _, k in inputs], "keyword arguments")
    return args, kwargs, groups, start
