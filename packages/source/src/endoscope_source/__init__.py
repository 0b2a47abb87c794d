"""Call-site hooks inside any Python function through an AST rewrite.

``SourceAccessor(fn)`` rewrites ``fn`` so each call in its body is an
operation with hook lists; unhooked calls run as before at the cost of one
attribute check. See the package README for a tour.
"""

from ._accessor import SourceAccessor, Watch, operation_path
from ._convert import Conversion, convert
from ._errors import (
    SourceError,
    SourceMismatchError,
    SourceUnavailableError,
    UnsupportedFunctionError,
)
from ._forward import (
    SOURCE_ACCESSOR_ATTR,
    TRUE_FORWARD_ATTR,
    get_or_create_source_accessor,
    resolve_true_forward,
)
from ._functions import NO_INSTANCE
from ._naming import callee_name
from ._operation import HookList, OperationAccessor, wrap_operation
from ._rewrite import CallSite, FunctionCallWrapper
from ._version import __version__

__all__ = [
    "NO_INSTANCE",
    "SOURCE_ACCESSOR_ATTR",
    "TRUE_FORWARD_ATTR",
    "CallSite",
    "Conversion",
    "FunctionCallWrapper",
    "HookList",
    "OperationAccessor",
    "SourceAccessor",
    "SourceError",
    "SourceMismatchError",
    "SourceUnavailableError",
    "UnsupportedFunctionError",
    "Watch",
    "__version__",
    "callee_name",
    "convert",
    "get_or_create_source_accessor",
    "operation_path",
    "resolve_true_forward",
    "wrap_operation",
]
