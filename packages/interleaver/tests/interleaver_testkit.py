"""Helpers shared by the tests: a pure-Python "model", a tiny envoy, fake hook handles.

conftest.py puts this directory on sys.path (pytest runs in importlib mode).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from typing import Any

from endoscope_interleaver import Interleaver, Mediator, Scheduler, eproperty, idle_greenlets

try:
    import greenlet
except ImportError:  # the suite is meant to run with the extra; see conftest's fixture
    greenlet = None


def live_greenlets() -> int:
    """Greenlets other than a thread's main one that have not ended, except the idle
    ones parked in this thread's pool for reuse (bounded by POOL_LIMIT)."""
    if greenlet is None:
        return 0
    gc.collect()
    alive = sum(
        1
        for o in gc.get_objects()
        if isinstance(o, greenlet.greenlet) and o.parent is not None and not o.dead
    )
    return alive - idle_greenlets()


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("endoscope-")]


class Handle:
    """A hook handle like torch's RemovableHandle: idempotent remove()."""

    def __init__(self, registry: list[Handle] | None = None) -> None:
        self.removed = 0
        self.registry = registry
        if registry is not None:
            registry.append(self)

    def remove(self) -> None:
        self.removed += 1
        if self.registry is not None and self in self.registry:
            self.registry.remove(self)


def model(
    interleaver: Interleaver,
    layers: int = 3,
    steps: int = 1,
    x: Any = 0,
    log: list[str] | None = None,
) -> Any:
    """A pure-Python "model": each layer adds 1; inputs and outputs are providers.

    Providers are ``model.layer{i}.input`` and ``model.layer{i}.output``, numbered
    per call by the interleaver (``.i0``, ``.i1``, ... over ``steps``).
    """
    for _ in range(steps):
        for i in range(layers):
            x = interleaver.handle(f"model.layer{i}.input", x, iterate=True)
            if log is not None:
                log.append(f"layer{i}")
            x = x + 1
            x = interleaver.handle(f"model.layer{i}.output", x, iterate=True)
    return x


class Envoy:
    """A minimal IEnvoy: ``.output`` and ``.input`` of one layer of :func:`model`."""

    def __init__(self, interleaver: Interleaver, path: str) -> None:
        self.interleaver = interleaver
        self.path = path

    @eproperty()
    def output(self) -> Any:
        """The layer's output."""

    @eproperty()
    def input(self) -> Any:
        """The layer's input."""

    def skip(self, value: Any) -> None:
        mediator = self.interleaver.current
        assert mediator is not None
        mediator.skip(self.interleaver.iterate_requester(f"{self.path}.input"), value)


def layers(interleaver: Interleaver, n: int = 3) -> list[Envoy]:
    return [Envoy(interleaver, f"model.layer{i}") for i in range(n)]


def run(
    scheduler: Scheduler,
    *interventions: Callable[..., Any],
    n: int = 3,
    steps: int = 1,
    batcher: Any = None,
) -> tuple[Any, Interleaver]:
    """Run :func:`model` with one mediator per intervention; each gets the layer envoys.

    Returns the model's output (``None`` if an intervention stopped it) and the
    interleaver.
    """
    interleaver = Interleaver(scheduler=scheduler, batcher=batcher)
    envoys = layers(interleaver, n)
    interleaver.initialize([Mediator(fn, args=(envoys,)) for fn in interventions], batcher=batcher)
    out = None
    with interleaver:
        out = model(interleaver, n, steps)
    return out, interleaver
