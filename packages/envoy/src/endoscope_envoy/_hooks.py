"""Torch hooks installed on demand for an Envoy's values.

``requires_output`` and ``requires_inputs`` decorate eproperty stubs: each access
makes sure the module has a hook feeding the interleaver, installed once per run
through :meth:`Interleaver.ensure_hook` and removed when the run ends. Hooks are
prepended so they run before any hook the user or a cache registered, which then
see values after interventions.

Skipping a module needs its forward bypassed, which a pre-hook cannot do: with
the input hook comes a wrapper around the module's ``forward`` that returns the
skip value instead (or merges it into the real output when only some invokes
skip).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from endoscope_interleaver import SkipException
from endoscope_source import SOURCE_ACCESSOR_ATTR

if TYPE_CHECKING:
    from ._envoy import Envoy

__all__ = [
    "ensure_forward_wrapper",
    "ensure_hook",
    "ensure_slow_path",
    "requires_inputs",
    "requires_output",
    "skip_module",
]


class _Removable:
    """A hook handle made of a function (for non-torch hooks such as forward swaps)."""

    def __init__(self, remove: Callable[[], None]) -> None:
        self.remove = remove


# torch's register_* functions build a RemovableHandle with weak references for
# every hook (several microseconds); run-level hooks come and go every trace, so
# they are put straight into the module's hook dicts, first in line, under
# negative ids that never clash with torch's own (counting up from 0).
_hook_ids = itertools.count(-1, -1)


class _DictHook:
    """Removes one hook id from the module hook dicts it was added to."""

    __slots__ = ("dicts", "key")

    def __init__(self, dicts: tuple[dict[int, Any], ...], key: int) -> None:
        self.dicts = dicts
        self.key = key

    def remove(self) -> None:
        for hooks in self.dicts:
            hooks.pop(self.key, None)


def add_forward_hook(module: Any, hook: Callable[..., Any], *, first: bool = True) -> _DictHook:
    """Run ``hook(module, args, output)`` before (``first``) or after the other hooks."""
    key = next(_hook_ids)
    hooks = module._forward_hooks
    hooks[key] = hook
    if first:
        hooks.move_to_end(key, last=False)
    return _DictHook((hooks,), key)


def add_forward_pre_hook(
    module: Any, hook: Callable[..., Any], *, with_kwargs: bool = False, first: bool = True
) -> _DictHook:
    """Run ``hook`` before (``first``) or after the module's other forward pre-hooks."""
    key = next(_hook_ids)
    hooks = module._forward_pre_hooks
    hooks[key] = hook
    if first:
        hooks.move_to_end(key, last=False)
    if not with_kwargs:
        return _DictHook((hooks,), key)
    flags = module._forward_pre_hooks_with_kwargs
    flags[key] = True
    return _DictHook((hooks, flags), key)


def _install_output_hook(envoy: Envoy) -> Any:
    interleaver = envoy.interleaver
    provider = f"{envoy.path}.output"
    handle = interleaver.handle

    def output_hook(module: Any, args: Any, output: Any) -> Any:
        return handle(provider, output, True)

    return add_forward_hook(envoy._module, output_hook)


def _install_inputs_hook(envoy: Envoy) -> Any:
    interleaver = envoy.interleaver
    provider = f"{envoy.path}.input"
    handle = interleaver.handle
    module = envoy._module

    def inputs_hook(module_: Any, args: Any, kwargs: Any) -> Any:
        try:
            return handle(provider, (args, kwargs), True)
        except SkipException as skip:
            # Picked up by the forward wrapper, which then does not run forward.
            module.__dict__["_endoscope_skip"] = skip.values
            return None

    return add_forward_pre_hook(module, inputs_hook, with_kwargs=True)


def _noop_pre_hook(module: Any, args: Any) -> None:
    return None


def _noop_installer(module: Any) -> Callable[[], Any]:
    return lambda: add_forward_pre_hook(module, _noop_pre_hook)


def ensure_slow_path(envoy: Envoy, *, include_self: bool = False) -> None:
    """Give ``envoy``'s ancestors (and itself if asked) a hook for this run.

    torch checks a module's hook dicts once when the call starts: a module that
    had none takes a fast path and ignores hooks added while it runs. A module
    whose value is requested while it is already running is always an ancestor
    of the point the model is paused at; giving every ancestor of every hooked
    module a no-op pre-hook the moment the first hook below it is installed
    (which precedes the ancestor's own call, by induction from the first request,
    made before the forward starts) makes such late hooks fire.
    """
    interleaver = envoy.interleaver
    node = envoy if include_self else envoy._parent
    while node is not None:
        module = node._module
        if not interleaver.ensure_hook((id(module), "slow"), _noop_installer(module)):
            break  # its ancestors were given one with it
        node = node._parent


def ensure_hook(envoy: Envoy, kind: str, install: Callable[[], Any]) -> None:
    """Install ``install()`` once per run under ``(module, kind)``, ancestors first."""
    ensure_slow_path(envoy)  # stops at the first ancestor already hooked
    envoy.interleaver.ensure_hook((id(envoy._module), kind), install)


def requires_output(stub: Callable[..., Any]) -> Callable[[Envoy], None]:
    """Decorate an eproperty stub whose value is the module's output."""

    @functools.wraps(stub)
    def ensure(envoy: Envoy) -> None:
        ensure_hook(envoy, "output", lambda: _install_output_hook(envoy))

    return ensure


def requires_inputs(stub: Callable[..., Any]) -> Callable[[Envoy], None]:
    """Decorate an eproperty stub whose value is the module's ``(args, kwargs)``."""

    @functools.wraps(stub)
    def ensure(envoy: Envoy) -> None:
        ensure_hook(envoy, "input", lambda: _install_inputs_hook(envoy))
        ensure_forward_wrapper(envoy)

    return ensure


def _install_forward_wrapper(envoy: Envoy) -> _Removable:
    """Wrap the module's forward for this run: skips, and ``.source`` routing.

    torch binds ``forward`` when a module call starts, before pre-hooks run, so
    the wrapper goes in with the module's first input or source hook (before its
    call) and serves a skip or a source read decided later in that call.
    """
    module = envoy._module
    interleaver = envoy.interleaver
    had_instance_forward = "forward" in module.__dict__
    original = module.forward

    def run(args: Any, kwargs: Any) -> Any:
        accessor = module.__dict__.get(SOURCE_ACCESSOR_ATTR)
        if accessor is not None and accessor.active:
            return accessor.injected(module, *args, **kwargs)
        return original(*args, **kwargs)

    def forward(*args: Any, **kwargs: Any) -> Any:
        skips = module.__dict__.pop("_endoscope_skip", None)
        if skips is None:
            return run(args, kwargs)
        return _merge_skips(interleaver, skips, lambda: run(args, kwargs))

    # Lets endoscope-source's resolve_true_forward see through this wrapper.
    forward.__endoscope_true_forward__ = original  # type: ignore[attr-defined]
    module.forward = forward

    def remove() -> None:
        module.__dict__.pop("_endoscope_skip", None)
        if had_instance_forward:
            module.forward = original
        else:
            module.__dict__.pop("forward", None)

    return _Removable(remove)


def ensure_forward_wrapper(envoy: Envoy) -> None:
    """Install the run's forward wrapper on ``envoy``'s module (once per run)."""
    envoy.interleaver.ensure_hook(
        (id(envoy._module), "forward"), lambda: _install_forward_wrapper(envoy)
    )


def _merge_skips(interleaver: Any, skips: list[tuple[Any, Any]], run: Callable[[], Any]) -> Any:
    """The output when some or all invokes skip: their values, the real rows for the rest."""
    batcher = interleaver.batcher
    whole = [value for group, value in skips if group is None or batcher is None]
    if whole:
        return whole[-1]
    groups = {group for group, _ in skips}
    covered = sum(size for _, size in groups)
    if covered == batcher.batch_size and len(groups) == len(skips):
        ordered = sorted(skips, key=lambda item: item[0][0])
        return _cat_outputs([value for _, value in ordered])
    output = run()
    for group, value in skips:
        output = batcher.swap(output, value, group)
    return output


def _cat_outputs(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(values, dim=0)
    if isinstance(first, tuple):
        return type(first)(_cat_outputs([v[i] for v in values]) for i in range(len(first)))
    return first


def skip_module(envoy: Envoy, value: Any) -> None:
    """Skip ``envoy``'s module in the current invoke, with ``value`` as its output."""
    interleaver = envoy.interleaver
    ensure_hook(envoy, "input", lambda: _install_inputs_hook(envoy))
    ensure_forward_wrapper(envoy)
    mediator = interleaver.current
    if mediator is None:
        raise RuntimeError(f"{envoy.path}.skip() can only be called inside a trace's invoke")
    mediator.skip(interleaver.iterate_requester(f"{envoy.path}.input"), value)
