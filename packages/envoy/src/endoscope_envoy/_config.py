"""Settings of endoscope-envoy, settable in code or by environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CONFIG", "EnvoyConfig"]


def _default_scheduler() -> str:
    choice = os.environ.get("ENDOSCOPE_SCHEDULER", "").strip().lower()
    if choice in {"thread", "greenlet"}:
        return choice
    try:
        import greenlet  # noqa: F401
    except ImportError:
        return "thread"
    return "greenlet"


@dataclass
class EnvoyConfig:
    """Process-wide settings of endoscope-envoy.

    Attributes:
        scheduler: how interventions run when a model does not say:
            ``"greenlet"`` (default when greenlet is installed; fastest) or
            ``"thread"``, or a Scheduler instance. From ``ENDOSCOPE_SCHEDULER``.
    """

    scheduler: Any = field(default_factory=_default_scheduler)


CONFIG = EnvoyConfig()
