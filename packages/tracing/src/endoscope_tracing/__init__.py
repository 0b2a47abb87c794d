"""endoscope-tracing: capture the body of a ``with`` block and run it later.

The layer every endoscope trace stands on, usable alone: it works on any Python
code and imports nothing outside the standard library.
"""

from ._config import CONFIG, TracingConfig
from ._errors import ExitTracingException, UnsupportedBlockError, WithBlockNotFoundError
from ._exceptions import clean_exception, strip_internal_frames
from ._frames import (
    opens_with,
    register_internal_module,
    register_internal_package,
    write_locals,
)
from ._saving import SAVED, save
from ._source import read_source
from ._tracer import Backend, ExecutionBackend, Tracer, TracerInfo
from ._unsaved import UnsavedName, UnsavedValueWarning
from ._version import __version__

__all__ = [
    "CONFIG",
    "SAVED",
    "Backend",
    "ExecutionBackend",
    "ExitTracingException",
    "Tracer",
    "TracerInfo",
    "TracingConfig",
    "UnsavedName",
    "UnsavedValueWarning",
    "UnsupportedBlockError",
    "WithBlockNotFoundError",
    "__version__",
    "clean_exception",
    "opens_with",
    "read_source",
    "register_internal_module",
    "register_internal_package",
    "save",
    "strip_internal_frames",
    "write_locals",
]
