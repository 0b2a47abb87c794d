"""endoscope: look inside PyTorch models while they run.

The user API follows nnsight 0.8: ``from endoscope import LanguageModel`` where
one wrote ``from nnsight import LanguageModel``.
"""

from endoscope_envoy import (
    BackwardTracer,
    BatchingError,
    EarlyStopException,
    EditTracer,
    Envoy,
    InterleavingTracer,
    Invoker,
    MissedProviderError,
    NNsight,
    NotInTraceError,
    OutOfOrderError,
    RemoteSerializationError,
    ScanTracer,
    Session,
    TensorSpec,
    TraceDeadlockError,
    UnsavedValueWarning,
    WithBlockNotFoundError,
    eproperty,
    save,
)

from ._config import CONFIG
from ._decorators import requires_input, requires_inputs, requires_output
from ._demo import demo_facts, demo_model, demo_model_path
from ._language_model import LanguageModel, TransformersModel
from ._version import __version__
from ._wrapper_module import WrapperModule

__all__ = [
    "CONFIG",
    "BackwardTracer",
    "BatchingError",
    "EarlyStopException",
    "EditTracer",
    "Envoy",
    "InterleavingTracer",
    "Invoker",
    "LanguageModel",
    "MissedProviderError",
    "NNsight",
    "NotInTraceError",
    "OutOfOrderError",
    "RemoteSerializationError",
    "ScanTracer",
    "Session",
    "TensorSpec",
    "TraceDeadlockError",
    "TransformersModel",
    "UnsavedValueWarning",
    "WithBlockNotFoundError",
    "WrapperModule",
    "__version__",
    "demo_facts",
    "demo_model",
    "demo_model_path",
    "eproperty",
    "requires_input",
    "requires_inputs",
    "requires_output",
    "save",
]
