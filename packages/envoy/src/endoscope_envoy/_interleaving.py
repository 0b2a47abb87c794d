"""Telling an out-of-order read from a value that never comes.

Hooks are installed on demand, so when an intervention asks for a module the
model has already passed, no hook saw that module run and the request simply
waits until the forward ends. To still name the mistake, each model learns the
order its points run in (``<path>.input`` / ``<path>.output``) from its first
trace, using torch's global module hooks for that one forward only. A request
left waiting at the end whose point comes, in that order, before the point where
it was asked becomes an :class:`OutOfOrderError` instead of a
:class:`MissedProviderError`. The learned order only labels errors: it never
changes what a valid program does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from endoscope_interleaver import Interleaver, MissedProviderError

if TYPE_CHECKING:
    from ._nnsight import NNsight

__all__ = ["EnvoyInterleaver", "recording_point_order"]


def _base(requester: str | None) -> str | None:
    if requester is None:
        return None
    head, sep, tail = requester.rpartition(".i")
    return head if sep and tail.isdigit() else requester


class EnvoyInterleaver(Interleaver):
    """An :class:`Interleaver` that labels late reads of passed modules as out of order."""

    def __init__(self, *args: Any, model: NNsight, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model = model

    def missed_error(self, requester: str, asked_at: str | None) -> MissedProviderError:
        order = self.model._point_order
        wanted, at = _base(requester), _base(asked_at)
        if order and wanted in order and at in order and order[wanted] < order[at]:
            return self.out_of_order_error(requester, asked_at)
        return super().missed_error(requester, asked_at)


@contextmanager
def recording_point_order(model: NNsight) -> Iterator[None]:
    """Record, for one forward, the order of ``model``'s input and output points."""
    paths = {id(envoy._module): path for path, envoy in model.named_modules()}
    order: dict[str, int] = {}

    def pre(module: torch.nn.Module, args: Any) -> None:
        path = paths.get(id(module))
        if path is not None:
            order.setdefault(f"{path}.input", len(order))

    def post(module: torch.nn.Module, args: Any, output: Any) -> None:
        path = paths.get(id(module))
        if path is not None:
            order.setdefault(f"{path}.output", len(order))

    handles = [
        torch.nn.modules.module.register_module_forward_pre_hook(pre),
        torch.nn.modules.module.register_module_forward_hook(post),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
    if order:
        model._point_order = order
