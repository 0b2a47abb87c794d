"""``Envoy.output`` / ``Envoy.inputs``: eproperty's read and write, specialized.

Every read of a module value inside a trace runs this code, on the intervention's
side, between two switches to the model. :class:`eproperty` does it generically
(a stub call to hook the provider, the requester string built from ``path`` and
``key``, the interleaver's ``iterate_requester``); a module value needs less:
the wrapper check is inlined, the requester's base and its first call
(``<path>.output.i0``) are kept on the Envoy, and the run's request counter is
bumped here. Whatever the fast path does not cover (no trace running, no
intervention current, another interleaver type, preprocess/transform steps of a
subclass) goes through :class:`eproperty` unchanged, errors included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from endoscope_interleaver import eproperty

from ._hooks import ENVOY_WRAPPER_ATTR, ensure_inputs, run_forward
from ._interleaving import EnvoyInterleaver

if TYPE_CHECKING:
    from endoscope_interleaver import Mediator

    from ._envoy import Envoy

__all__ = ["ModuleValue"]


class ModuleValue(eproperty):
    """An Envoy's output (``key="output"``) or inputs (``key="input"``).

    Args:
        key: ``"output"`` or ``"input"``: the point in the module's call.
    """

    def __init__(self, key: str, description: str | None = None) -> None:
        super().__init__(key=key, description=description, iterate=True)
        self._serves_output = key == "output"
        # Per Envoy, in its __dict__: "<path>.<key>" and "<path>.<key>.i0".
        self._base_attr = f"_endoscope_{key}_base"
        self._first_attr = f"_endoscope_{key}_i0"

    def _requester(self, envoy: Envoy, mediator: Mediator) -> str:
        state = envoy.__dict__
        base = state.get(self._base_attr)
        if base is None:
            base = state[self._base_attr] = f"{envoy.path}.{self.key}"
            state[self._first_attr] = f"{base}.i0"
        iteration = mediator.iteration
        if iteration is None:
            iteration = mediator.iteration_tracker.get(base, 0)
        if iteration == 0:
            return state[self._first_attr]
        return f"{base}.i{iteration}"

    def _fast(self, envoy: Envoy) -> Mediator | None:
        """The running intervention, with the value's provider hooked, when the fast
        path applies (else ``None``: eproperty's general path takes over)."""
        root = envoy._root_ref()
        interleaver = root._interleaver if root is not None else None
        if type(interleaver) is not EnvoyInterleaver:
            return None
        mediator = interleaver.current
        if mediator is None or self._preprocess is not None or self._transform is not None:
            return None
        if not self._serves_output:
            ensure_inputs(envoy, interleaver)
        else:
            wrapper = envoy.__dict__.get(ENVOY_WRAPPER_ATTR)
            if wrapper is None or wrapper.run.interleaver is not interleaver:
                run_forward(envoy, interleaver)
        interleaver.requests += 1
        return mediator

    def _first_call(self, envoy: Envoy) -> tuple[EnvoyInterleaver, Mediator, str] | None:
        """The common case, checked in one frame: the output of the module's first
        call, its wrapper already lent to the running trace, no processing steps.

        Returns:
            ``(interleaver, mediator, "<path>.output.i0")``, else ``None``.
        """
        root = envoy._root_ref()
        interleaver = root._interleaver if root is not None else None
        if type(interleaver) is not EnvoyInterleaver or not self._serves_output:
            return None
        mediator = interleaver.current
        state = envoy.__dict__
        wrapper = state.get(ENVOY_WRAPPER_ATTR)
        first = state.get(self._first_attr)
        if (
            mediator is None
            or wrapper is None
            or wrapper.run.interleaver is not interleaver
            or first is None
            or mediator.iteration is not None
            or mediator.iteration_tracker
            or self._preprocess is not None
            or self._transform is not None
            or self._postprocess is not None
        ):
            return None
        return interleaver, mediator, first

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        common = self._first_call(obj)
        if common is not None:
            interleaver, mediator, first = common
            interleaver.requests += 1
            return mediator.request(first)
        running = self._fast(obj)
        if running is None:
            return super().__get__(obj, objtype)
        return running.request(self._requester(obj, running))

    def __set__(self, obj: Any, value: Any) -> None:
        common = self._first_call(obj)
        if common is not None:
            interleaver, mediator, first = common
            interleaver.requests += 1
            mediator.swap(first, value)
            return
        running = self._fast(obj) if self._postprocess is None else None
        if running is None:
            super().__set__(obj, value)
            return
        running.swap(self._requester(obj, running), value)
