"""What the integration tests compare against: the same reads and writes done with
plain torch forward hooks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["hooked", "record"]


@contextmanager
def hooked(
    *hooks: tuple[torch.nn.Module, Callable[..., Any]],
    pre: tuple[tuple[torch.nn.Module, Callable[..., Any]], ...] = (),
) -> Iterator[None]:
    """Plain torch forward hooks (and ``with_kwargs`` pre-hooks), removed afterwards."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    handles += [module.register_forward_pre_hook(hook, with_kwargs=True) for module, hook in pre]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def record(store: dict[str, Any], key: str) -> Callable[..., None]:
    """A forward hook that keeps the module's output in ``store[key]``."""

    def hook(module: Any, args: Any, output: Any) -> None:
        store[key] = output

    return hook
