"""``model.scan(x)``: a trace on fake tensors, for shapes without computing.

The trace runs under torch's ``FakeTensorMode``: every tensor the model and the
intervention code make is a fake one, with a shape, dtype and device but no data,
so a scan of a large model costs almost nothing and needs no real weights in
memory. Interventions run as in a real trace, so a write of the wrong shape
fails at the user's line. Global module hooks record, for every module of the
model, the :class:`TensorSpec` of its inputs and output (``tracer.shapes``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, NamedTuple

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ._batching import map_tensors
from ._tracer import InterleavingTracer

__all__ = ["ScanTracer", "TensorSpec"]


class TensorSpec(NamedTuple):
    """The shape, dtype and device of a tensor, without its values."""

    shape: torch.Size
    dtype: torch.dtype
    device: torch.device


def spec_of(value: Any) -> Any:
    """``value`` with every tensor replaced by its :class:`TensorSpec`."""
    return map_tensors(value, lambda t: TensorSpec(t.shape, t.dtype, t.device))


class ScanTracer(InterleavingTracer):
    """A trace whose forward runs on fake tensors (see :meth:`NNsight.scan`).

    Attributes:
        shapes: after the block, module path -> ``{"inputs": args, "output":
            value}`` with every tensor as a :class:`TensorSpec` (the first call of
            each module; keyword arguments are not recorded).
    """

    def __init__(self, model: Any, *inputs: Any, **kwargs: Any) -> None:
        super().__init__(model, *inputs, **kwargs)
        self.shapes: dict[str, dict[str, Any]] = {}

    def execute(self, fn: Any) -> Any:
        paths = {id(envoy._module): path for path, envoy in self.model.named_modules()}
        shapes = self.shapes
        # torch's global hooks see every thread's calls: only this one's are the scan's.
        thread = threading.get_ident()

        def record_inputs(module: torch.nn.Module, args: Any) -> None:
            path = paths.get(id(module))
            if path is not None and path not in shapes and threading.get_ident() == thread:
                shapes[path] = {"inputs": spec_of(args)}

        def record_output(module: torch.nn.Module, args: Any, output: Any) -> None:
            entry = shapes.get(paths.get(id(module), ""))
            if entry is not None and "output" not in entry and threading.get_ident() == thread:
                entry["output"] = spec_of(output)

        handles = [
            torch.nn.modules.module.register_module_forward_pre_hook(record_inputs),
            torch.nn.modules.module.register_module_forward_hook(record_output),
        ]
        # Fake tensors log the failing op before raising; the user gets the error itself.
        logger = logging.getLogger("torch._subclasses.fake_tensor")
        level = logger.level
        logger.setLevel(logging.CRITICAL)
        try:
            with FakeTensorMode(allow_non_fake_inputs=True):
                return super().execute(fn)
        finally:
            logger.setLevel(level)
            for handle in handles:
                handle.remove()
