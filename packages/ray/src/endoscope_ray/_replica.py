"""A replica: one Ray actor holding one model, running the step on the batches it gets."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import torch

from ._errors import StepOutputError

__all__ = ["Replica", "describe_function", "pack"]

# The key a step's lone tensor is stored under.
DEFAULT_KEY = "output"


def describe_function(function: Any) -> str:
    """``name (file:line)`` of a user function, for error messages."""
    name = getattr(function, "__qualname__", None) or repr(function)
    code = getattr(function, "__code__", None)
    if code is None:
        return str(name)
    return f"{name} ({code.co_filename}:{code.co_firstlineno})"


def pack(
    result: Any,
    start: int,
    stop: int,
    step: Any,
    mask: str | None,
    lengths: str | None,
    per_token: Collection[str] | None,
) -> dict[str, Any]:
    """Check what the step returned for rows ``start:stop`` and split it into rows.

    Returns ``{"values": {key: [row tensor, ...]}, "tokens": n}`` with every row
    detached, on the CPU and in its own storage (a view would pickle its whole batch).
    """
    where = f"the step {describe_function(step)} on rows {start}-{stop - 1}"
    rows = stop - start
    if isinstance(result, torch.Tensor):
        result = {DEFAULT_KEY: result}
    if not isinstance(result, dict) or not result:
        raise StepOutputError(
            f"{where} returned {type(result).__name__}: return a tensor or a dict of "
            f"tensors whose first dimension is the batch's rows, e.g. "
            f"return {{'h': lm.transformer.h[0].output.save()}}"
        )
    for key, value in result.items():
        if not isinstance(key, str) or not key:
            raise StepOutputError(f"{where} returned a dict with key {key!r}: keys must be names")
        if not isinstance(value, torch.Tensor):
            raise StepOutputError(
                f"{where} returned {type(value).__name__} under {key!r}: every value must "
                f"be a tensor (call .save() on it inside the trace and return the tensor)"
            )
        if value.dim() == 0 or value.shape[0] != rows:
            raise StepOutputError(
                f"{where} returned {key!r} of shape {list(value.shape)}: its first "
                f"dimension must be the batch's {rows} rows"
            )
    keep: list[torch.Tensor] | None = None
    tokens = 0
    width = None
    for option, name in (("mask", mask), ("lengths", lengths)):
        if name is not None and name not in result:
            raise StepOutputError(
                f"{where} returned no {name!r}, which {option}={name!r} names: return the "
                f"attention mask (or lengths) under that key"
            )
    if mask is not None:
        m = result[mask].detach().cpu().bool()
        if m.dim() != 2:
            raise StepOutputError(
                f"{where}: mask {mask!r} must be [rows, tokens], not {list(m.shape)}"
            )
        width = m.shape[1]
        keep = [row.nonzero().flatten() for row in m]
    elif lengths is not None:
        n = result[lengths].detach().cpu().long().flatten()
        if n.numel() != rows:
            raise StepOutputError(f"{where}: lengths {lengths!r} must have one entry per row")
        keep = list(n)  # kept as counts: the last n positions (left padding)
    if keep is not None:
        tokens = int(sum(int(k.numel()) if mask is not None else int(k) for k in keep))
    values: dict[str, list[torch.Tensor]] = {}
    for key, value in result.items():
        if key in (mask, lengths):
            continue
        value = value.detach().cpu()
        if keep is None:
            values[key] = [row.clone() for row in value]
            continue
        if per_token is not None:
            token_valued = key in per_token
        else:
            token_valued = value.dim() >= 2 and (width is None or value.shape[1] == width)
        if token_valued and value.dim() < 2:
            raise StepOutputError(f"{where}: {key!r} is not per-token (shape {list(value.shape)})")
        if not token_valued:
            values[key] = [row.clone() for row in value]
        elif mask is not None:
            if value.shape[1] != width:
                raise StepOutputError(
                    f"{where}: {key!r} has {value.shape[1]} tokens per row but the mask has {width}"
                )
            values[key] = [row[k].clone() for row, k in zip(value, keep)]
        else:
            values[key] = [row[row.shape[0] - int(k) :].clone() for row, k in zip(value, keep)]
    return {"values": values, "tokens": tokens}


class Replica:
    """The actor: loads the model once (``setup``), then runs the step per batch."""

    def __init__(
        self,
        factory: Callable[[], Any],
        step: Callable[[Any, Any], Any],
        mask: str | None,
        lengths: str | None,
        per_token: Collection[str] | None,
    ) -> None:
        self.factory = factory
        self.step = step
        self.mask = mask
        self.lengths = lengths
        self.per_token = per_token
        self.model: Any = None

    def setup(self, threads: int) -> int:
        """Load the model (the factory's exceptions reach the driver); return the pid."""
        import os

        torch.set_num_threads(threads)
        self.model = self.factory()
        return os.getpid()

    def run(self, start: int, stop: int, data: Any) -> dict[str, Any]:
        """Run the step on rows ``start:stop`` and return them split into rows."""
        result = self.step(self.model, data)
        return pack(result, start, stop, self.step, self.mask, self.lengths, self.per_token)
