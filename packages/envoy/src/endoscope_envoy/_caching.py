"""``tracer.cache()``: record module values of a trace with endoscope-cache.

Values are recorded by each module's run wrapper (see ``_hooks``), right after
interventions were served, so the cache holds values as they are after
interventions; a module with forward hooks of its own gets an appended torch
hook instead, so that it records after them. Recorders belong to the trace's
run and go when it ends. Call ``tracer.cache()`` before reading values in the
same block: a module already running when it is called is not recorded for that
call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from endoscope_cache import Cache, CacheDict

from ._envoy import Envoy
from ._hooks import (
    ENVOY_WRAPPER_ATTR,
    add_forward_hook,
    add_forward_pre_hook,
    lend_early,
    run_forward,
    theirs,
)

if TYPE_CHECKING:
    from endoscope_interleaver import Interleaver

    from ._tracer import InterleavingTracer

__all__ = ["attach_cache"]

# Where a model keeps ``(children tuple, Envoys below the root, their paths)``.
_MODULES_ATTR = "_endoscope_cache_modules"


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
    append: bool = False,
    fsync: bool = True,
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
        append: with ``directory``, add this trace's values to the cache already
            there (complete, or left by an interrupted writer) after checking it;
            each module's calls come after the ones it holds.
        fsync: with ``directory``, force each shard and manifest to the device
            before renaming it into place.

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
        fsync=fsync,
        append=append,
    )
    interleaver = tracer.interleaver
    rows = _invoke_rows(interleaver)
    if (
        paths is None
        and include_output
        and not include_inputs
        and interleaver.provider is None
        and not interleaver.calls
    ):
        # Every module's output, before the first provider: the modules are listed
        # parents before children, so each wrapper can simply be lent to the run.
        envoys, every = _named_modules(model)
        # None for no path: every output is kept.
        records = cast("list[Callable[[Any], None]]", cache.recorders(every))
        if rows is not None:
            records = [rows(record) for record in records]
        for envoy, record in zip(envoys, records):
            wrapper = envoy.__dict__.get(ENVOY_WRAPPER_ATTR)
            if wrapper is None or wrapper.run.interleaver is not interleaver:
                wrapper = lend_early(envoy, interleaver)
            if wrapper is None or envoy._module._forward_hooks:
                _record_outputs(record, envoy, interleaver, True)
                continue
            wrapper.records.append(record)
            run = wrapper.run
            if run.general is None:
                run.general = wrapper._call_records
            else:
                wrapper._update()
    else:
        wanted = set(paths) if paths is not None else None
        for envoy, path in zip(*_named_modules(model)):
            if wanted is not None and path not in wanted:
                continue
            output = cache.recorder(path)
            if output is not None:
                output = rows(output) if rows is not None else output
                _record_outputs(output, envoy, interleaver, wanted is None)
            inputs = cache.recorder(path, "inputs")
            if inputs is not None:
                inputs = rows(inputs) if rows is not None else inputs
                _record_inputs(inputs, envoy, interleaver, wanted is None)
    if directory is not None:
        interleaver.hooks.append(_Finish(cache, interleaver))
    return cache.cache


def _invoke_rows(
    interleaver: Interleaver,
) -> Callable[[Callable[[Any], None]], Callable[[Any], None]] | None:
    """For a cache made inside an invoke that owns some rows of the batch: what
    makes a recorder keep only those rows (as the invoke's own reads see them).
    ``None`` when the cache records whole values."""
    mediator = interleaver.current
    batcher = interleaver.batcher
    if mediator is None or batcher is None or mediator.batch_group is None:
        return None
    group = mediator.batch_group
    narrow = batcher.narrow

    def rows(record: Callable[[Any], None]) -> Callable[[Any], None]:
        def record_rows(value: Any) -> None:
            record(narrow(value, group))

        return record_rows

    return rows


def _named_modules(model: Envoy) -> tuple[tuple[Envoy, ...], tuple[str, ...]]:
    """The Envoys of ``model.named_modules()`` and their paths, with the part below
    the root listed once per tree.

    Below the root, the lists are kept on the model an edited copy was made from
    (the copies share its Envoy tree) and reused while the root's tuple of
    children is the same object: re-pointing the tree at new modules (loading
    weights) assigns a new one, even where it adds or drops Envoys. Modules are
    read through ``envoy._module`` per trace, so a re-pointed Envoy is seen.
    """
    base = model
    while True:
        up = base.__dict__.get("_original")
        if up is None:
            break
        base = up
    state = base.__dict__
    key = state.get("_ordered")
    memo = state.get(_MODULES_ATTR)
    if memo is None or key is None or memo[0] is not key:
        below = model.named_modules()[1:]
        memo = (key, tuple(envoy for _, envoy in below), tuple(path for path, _ in below))
        if key is not None:
            state[_MODULES_ATTR] = memo
    return (model, *memo[1]), (model.path, *memo[2])


class _Finish:
    """Closes the cache's disk writer when the run ends (a hook handle's remove).

    A run that an error ends early leaves the cache incomplete, naming the error:
    it holds only the modules that ran before it.
    """

    def __init__(self, cache: Cache, interleaver: Interleaver) -> None:
        self.cache = cache
        self.interleaver: Interleaver | None = interleaver

    def remove(self) -> None:
        # The handle is dropped after the run: no reference back to the interleaver.
        interleaver, self.interleaver = self.interleaver, None
        self.cache.close(None if interleaver is None else interleaver.failure)


def _record_outputs(
    record: Callable[[Any], None], envoy: Envoy, interleaver: Interleaver, every: bool
) -> None:
    module = envoy._module
    if module._forward_hooks:
        # The user's forward hooks run after the wrapper: record after them.

        def hook(module_: Any, args: Any, output: Any) -> None:
            if not theirs(interleaver):
                record(output)

        interleaver.hooks.append(add_forward_hook(module, hook, first=False))
        return
    wrapper = run_forward(envoy, interleaver, ancestors=not every)
    wrapper.records.append(record)
    wrapper._update()


def _record_inputs(
    record: Callable[[Any], None], envoy: Envoy, interleaver: Interleaver, every: bool
) -> None:
    module = envoy._module
    if module._forward_pre_hooks:
        # The user's pre-hooks run before the wrapper: record after them.

        def hook(module_: Any, args: Any, kwargs: Any) -> None:
            if not theirs(interleaver):
                record((args, kwargs))

        interleaver.hooks.append(add_forward_pre_hook(module, hook, with_kwargs=True, first=False))
        return
    wrapper = run_forward(envoy, interleaver, ancestors=not every)
    wrapper.input_records.append(record)
    wrapper._update()
