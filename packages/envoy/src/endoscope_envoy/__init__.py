"""endoscope-envoy: trace, invoke, read and write any ``torch.nn.Module``."""

from endoscope_interleaver import (
    EarlyStopException,
    MissedProviderError,
    OutOfOrderError,
    eproperty,
)
from endoscope_tracing import (
    UnsavedValueWarning,
    WithBlockNotFoundError,
    opens_with,
    register_internal_module,
    register_internal_package,
)

from ._backward import BackwardTracer, mount_backward, mount_backward_at_import, unmount_backward
from ._batching import BatchingError, TorchBatcher, batch_inputs
from ._config import CONFIG, EnvoyConfig
from ._envoy import Envoy, NotInTraceError
from ._hooks import requires_inputs, requires_output, serve_module
from ._locking import TraceDeadlockError
from ._nnsight import NNsight
from ._remote import RemoteSerializationError
from ._saving import mount_save, save, unmount_save
from ._scan import ScanTracer, TensorSpec
from ._session import EditTracer, Session
from ._tracer import InterleavingTracer, Invoker
from ._version import __version__

register_internal_package("endoscope_envoy")
register_internal_package("endoscope_interleaver")
mount_save()
mount_backward_at_import()

__all__ = [
    "CONFIG",
    "BackwardTracer",
    "BatchingError",
    "EarlyStopException",
    "EditTracer",
    "Envoy",
    "EnvoyConfig",
    "InterleavingTracer",
    "Invoker",
    "MissedProviderError",
    "NNsight",
    "NotInTraceError",
    "OutOfOrderError",
    "RemoteSerializationError",
    "ScanTracer",
    "Session",
    "TensorSpec",
    "TorchBatcher",
    "TraceDeadlockError",
    "UnsavedValueWarning",
    "WithBlockNotFoundError",
    "__version__",
    "batch_inputs",
    "eproperty",
    "mount_backward",
    "mount_save",
    "opens_with",
    "register_internal_module",
    "register_internal_package",
    "requires_inputs",
    "requires_output",
    "save",
    "serve_module",
    "unmount_backward",
    "unmount_save",
]
