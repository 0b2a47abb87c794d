"""Run intervention code beside a running computation: mediators, events, eproperty and swappable schedulers."""

from ._eproperty import IEnvoy, eproperty
from ._errors import (
    Cancelation,
    EarlyStopException,
    MissedProviderError,
    OutOfOrderError,
    SkipException,
    intervention_traceback,
)
from ._events import Events
from ._greenlet import GreenletScheduler, greenlet_available, idle_greenlets
from ._interleaver import Barrier, Batcher, Gate, Interleaver
from ._mediator import HookHandle, Mediator
from ._scheduler import Scheduler, ThreadScheduler, Worker, default_scheduler
from ._version import __version__

__all__ = [
    "Barrier",
    "Batcher",
    "Cancelation",
    "EarlyStopException",
    "Events",
    "Gate",
    "GreenletScheduler",
    "HookHandle",
    "IEnvoy",
    "Interleaver",
    "Mediator",
    "MissedProviderError",
    "OutOfOrderError",
    "Scheduler",
    "SkipException",
    "ThreadScheduler",
    "Worker",
    "__version__",
    "default_scheduler",
    "eproperty",
    "greenlet_available",
    "idle_greenlets",
    "intervention_traceback",
]
