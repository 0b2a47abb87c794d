"""Settings of the capture layer, settable in code or by environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["CONFIG", "TracingConfig"]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class TracingConfig:
    """Process-wide settings of endoscope-tracing.

    Attributes:
        debug: show endoscope's own frames in tracebacks of errors raised inside a
            traced block. Off by default so a traceback shows only the user's lines.
            Initialised from the ``ENDOSCOPE_DEBUG`` environment variable.
    """

    debug: bool = field(default_factory=lambda: _env_flag("ENDOSCOPE_DEBUG"))


CONFIG = TracingConfig()
