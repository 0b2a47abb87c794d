"""``Envoy.output`` / ``Envoy.inputs``: eproperty's read and write, specialized.

Every read of a module value inside a trace runs this code, on the intervention's
side, between two switches to the model. :class:`eproperty` does it generically
(a stub call to hook the provider, the requester string built from ``path`` and
``key``, the interleaver's ``iterate_requester``); a module value needs less:
the wrapper check is inlined, the first call's requester (``<path>.output.i0``)
comes from the module's wrapper, later calls' are kept on the Envoy, a swap of
the value being read replaces it in place, and the run's request counter is
bumped here. Whatever the fast path does not cover (no trace running, no
intervention current, another interleaver type, processing steps, which switch
it off as they are registered) goes through :class:`eproperty` unchanged, errors
included.
"""

from __future__ import annotations

from collections.abc import Callable
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
        # Whether the common case may apply at all: an output, no processing steps.
        self._plain = self._serves_output

    def _steps_changed(self) -> None:
        self._plain = self._serves_output and (
            self._preprocess is None and self._transform is None and self._postprocess is None
        )

    def preprocess(self, fn: Callable[[Any, Any], Any]) -> eproperty:
        super().preprocess(fn)
        self._steps_changed()
        return self

    def postprocess(self, fn: Callable[[Any, Any], Any]) -> eproperty:
        super().postprocess(fn)
        self._steps_changed()
        return self

    def transform(self, fn: Callable[[Any], Any]) -> eproperty:
        super().transform(fn)
        self._steps_changed()
        return self

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

    def _first_call(self, envoy: Envoy) -> Mediator | None:
        """The running intervention when the common case applies: the output of the
        module's first call, its wrapper lent to this Envoy tree's running trace
        (not an outer trace's, when a trace of this model runs inside an
        intervention), no processing steps, no iteration. Counts the request."""
        wrapper = envoy.__dict__.get(ENVOY_WRAPPER_ATTR)
        if wrapper is None or not self._plain:
            return None
        interleaver = wrapper.run.interleaver
        if type(interleaver) is not EnvoyInterleaver:
            return None
        mediator = interleaver.current
        if mediator is None or mediator.iteration is not None or mediator.iteration_tracker:
            return None
        root = envoy._root_ref()
        if root is None or root._interleaver is not interleaver:
            return None
        interleaver.requests += 1
        return mediator

    def _check_running(self, obj: Envoy) -> None:
        """Raise, naming the value, when ``obj``'s model is not running."""
        if obj._root._interleaver is None:
            raise obj._not_running(f"`{obj.path}.{self.key}`")

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        # _first_call, inlined: every read of a module value runs it.
        wrapper = obj.__dict__.get(ENVOY_WRAPPER_ATTR)
        if wrapper is not None and self._plain:
            interleaver = wrapper.run.interleaver
            if type(interleaver) is EnvoyInterleaver:
                mediator = interleaver.current
                if (
                    mediator is not None
                    and mediator.iteration is None
                    and not mediator.iteration_tracker
                ):
                    root = obj._root_ref()
                    if root is not None and root._interleaver is interleaver:
                        interleaver.requests += 1
                        return mediator.request(wrapper.first)
        running = self._fast(obj)
        if running is None:
            self._check_running(obj)
            return super().__get__(obj, objtype)
        return running.request(self._requester(obj, running))

    def __set__(self, obj: Any, value: Any) -> None:
        mediator = self._first_call(obj)
        if mediator is not None:
            mediator.swap(obj.__dict__[ENVOY_WRAPPER_ATTR].first, value)
            return
        running = self._fast(obj) if self._postprocess is None else None
        if running is None:
            self._check_running(obj)
            super().__set__(obj, value)
            return
        running.swap(self._requester(obj, running), value)
