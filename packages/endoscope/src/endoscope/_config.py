"""CONFIG: endoscope's settings, in nnsight's shape (``CONFIG.APP.DEBUG``).

The settings are views of the lower layers' own settings, not copies: setting
``CONFIG.APP.SCHEDULER`` sets ``endoscope_envoy.CONFIG.scheduler``, and reading it
reads that back, so the two can never disagree. Each setting also has an
environment variable, read once when endoscope is imported:

=========================  ======================  ==================================
setting                    environment variable    effect
=========================  ======================  ==================================
``CONFIG.APP.DEBUG``       ``ENDOSCOPE_DEBUG``     tracebacks of errors in a trace
                                                   also show endoscope's own frames
``CONFIG.APP.SCHEDULER``   ``ENDOSCOPE_SCHEDULER`` ``"greenlet"`` or ``"thread"``
``CONFIG.APP.PYMOUNT``     ``ENDOSCOPE_PYMOUNT``   tensors, tuples, lists and dicts
                                                   have a ``.save()`` method
=========================  ======================  ==================================
"""

from __future__ import annotations

import os
from typing import Any

import endoscope_envoy
from endoscope_envoy import mount_save, unmount_save

__all__ = ["CONFIG", "AppConfig", "Config"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _env_flag(name: str) -> bool | None:
    """``True``/``False`` for a set boolean environment variable, else ``None``."""
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None


class AppConfig:
    """How endoscope behaves while tracing.

    Attributes:
        DEBUG: show endoscope's own frames in tracebacks of errors raised inside
            a trace (off: only the user's lines). ``ENDOSCOPE_DEBUG=1``.
        SCHEDULER: how interventions run beside the model: ``"greenlet"``
            (the default when greenlet is installed), ``"thread"``, or a
            Scheduler instance. ``ENDOSCOPE_SCHEDULER=thread``.
        PYMOUNT: whether tensors, tuples, lists and dicts have a ``.save()``
            method (on by default; ``endoscope.save(value)`` works either way).
            ``ENDOSCOPE_PYMOUNT=0``.
        REMOTE_LOGGING: nnsight 0.8.1's setting for NDIF's logs; kept, and
            meaning nothing here (models run in this process).
        DISABLE_CPP_BACKTRACE: nnsight 0.8.1's setting for its C++ tracebacks;
            kept, and meaning nothing here.
    """

    # nnsight's remaining APP settings: a script that sets or reads them still runs.
    REMOTE_LOGGING: bool = True
    DISABLE_CPP_BACKTRACE: bool = True

    def __repr__(self) -> str:
        return (
            f"AppConfig(DEBUG={self.DEBUG!r}, SCHEDULER={self.SCHEDULER!r}, "
            f"PYMOUNT={self.PYMOUNT!r})"
        )

    @property
    def DEBUG(self) -> bool:
        return bool(getattr(endoscope_envoy.CONFIG, "debug", _env_flag("ENDOSCOPE_DEBUG")))

    @DEBUG.setter
    def DEBUG(self, value: bool) -> None:
        endoscope_envoy.CONFIG.debug = bool(value)

    @property
    def SCHEDULER(self) -> Any:
        return endoscope_envoy.CONFIG.scheduler

    @SCHEDULER.setter
    def SCHEDULER(self, value: Any) -> None:
        if isinstance(value, str):
            value = value.strip().lower()
            if value not in {"greenlet", "thread"}:
                raise ValueError(f"unknown scheduler {value!r}: use 'greenlet' or 'thread'")
        endoscope_envoy.CONFIG.scheduler = value

    @property
    def PYMOUNT(self) -> bool:
        return "save" in vars(list)

    @PYMOUNT.setter
    def PYMOUNT(self, value: bool) -> None:
        if value:
            mount_save()
        else:
            unmount_save()


class Config:
    """endoscope's settings: ``CONFIG.APP`` holds them, as in nnsight.

    Attributes:
        APP: how endoscope behaves while tracing (:class:`AppConfig`).
    """

    def __init__(self) -> None:
        self.APP = AppConfig()

    def __repr__(self) -> str:
        return f"Config(APP={self.APP!r})"

    def apply_environment(self) -> None:
        """Read ``ENDOSCOPE_DEBUG``, ``ENDOSCOPE_SCHEDULER`` and ``ENDOSCOPE_PYMOUNT``.

        Called once when endoscope is imported; call it again after changing
        the environment. Unset (or unrecognised) variables leave settings alone.
        """
        debug = _env_flag("ENDOSCOPE_DEBUG")
        if debug is not None:
            self.APP.DEBUG = debug
        scheduler = os.environ.get("ENDOSCOPE_SCHEDULER", "").strip().lower()
        if scheduler in {"greenlet", "thread"}:
            self.APP.SCHEDULER = scheduler
        pymount = _env_flag("ENDOSCOPE_PYMOUNT")
        if pymount is not None:
            self.APP.PYMOUNT = pymount


CONFIG = Config()
CONFIG.apply_environment()
