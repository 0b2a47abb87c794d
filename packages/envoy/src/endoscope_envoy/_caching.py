"""``tracer.cache()``: record module values of a trace with endoscope-cache.

Cache hooks are appended after the intervention hooks (which are prepended), so
they record values as they are after interventions. They are run-level hooks of
the trace's interleaver, removed when the run ends. Call ``tracer.cache()`` before
reading values in the same block: a module already running when it is called is
not recorded for that call.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from endoscope_cache import Cache, CacheDict

from ._envoy import Envoy
from ._hooks import add_forward_hook, add_forward_pre_hook, ensure_slow_path

if TYPE_CHECKING:
    from ._tracer import InterleavingTracer

__all__ = ["attach_cache"]


def _paths(model: Envoy, modules: Any) -> list[str] | None:
    if modules is None:
        return None
    if isinstance(modules, (str, Envoy)):
        modules = [modules]
    paths = []
    for item in modules if isinstance(modules, Iterable) else [modules]:
        if isinstance(item, Envoy):
            paths.append(item.path)
        elif isinstance(item, str):
            paths.append(model.get(item).path)
        else:
            raise TypeError(
                f"tracer.cache(modules=...) takes Envoys or module paths, got {type(item).__name__}"
            )
    return paths


def attach_cache(
    tracer: InterleavingTracer,
    modules: Any = None,
    *,
    device: Any = "cpu",
    dtype: Any = None,
    detach: bool = True,
    include_output: bool = True,
    include_inputs: bool = False,
    directory: Any = None,
) -> CacheDict:
    """Record the outputs (and optionally inputs) of ``modules`` during ``tracer``'s run.

    Args:
        tracer: the trace to record.
        modules: Envoys or paths to record; every module when ``None``.
        device: where recorded tensors go (``None`` keeps them where they are).
        dtype: convert recorded floating tensors to this dtype.
        detach: detach recorded tensors from the autograd graph.
        include_output: record outputs.
        include_inputs: record inputs (``(args, kwargs)``; ``.input`` is the first).
        directory: stream values to safetensors shards there instead of memory.

    Returns:
        The cache's :class:`CacheDict`, filled as the model runs:
        ``cache["model.layers.0"].output`` or ``cache.model.layers[0].output``.
    """
    model = tracer.model
    paths = _paths(model, modules)
    cache = Cache(
        modules=paths,
        device=device,
        dtype=dtype,
        detach=detach,
        include_output=include_output,
        include_inputs=include_inputs,
        directory=directory,
    )
    interleaver = tracer.interleaver
    wanted = set(paths) if paths is not None else None
    for path, envoy in model.named_modules():
        if wanted is not None and path not in wanted:
            continue
        module = envoy._module
        if include_output:
            interleaver.ensure_hook(
                (id(module), "cache-output", id(cache)), _output_hook(cache, module, path)
            )
        if include_inputs:
            interleaver.ensure_hook(
                (id(module), "cache-input", id(cache)), _input_hook(cache, module, path)
            )
        if interleaver.interleaving:
            ensure_slow_path(envoy)
    interleaver.hooks.append(_Finish(cache))
    return cache.cache


class _Finish:
    """Closes the cache's disk writer when the run ends (a hook handle's remove)."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def remove(self) -> None:
        close = getattr(self.cache, "close", None)
        if close is not None:
            close()


def _output_hook(cache: Cache, module: Any, path: str) -> Any:
    def install() -> Any:
        count = [0]
        add = cache.add

        def record(module_: Any, args: Any, output: Any) -> None:
            add(f"{path}.output.i{count[0]}", output)
            count[0] += 1

        return add_forward_hook(module, record, first=False)

    return install


def _input_hook(cache: Cache, module: Any, path: str) -> Any:
    def install() -> Any:
        count = [0]
        add = cache.add

        def record(module_: Any, args: Any, kwargs: Any) -> None:
            add(f"{path}.input.i{count[0]}", (args, kwargs))
            count[0] += 1

        return add_forward_pre_hook(module, record, with_kwargs=True, first=False)

    return install
