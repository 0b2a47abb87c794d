"""Serving an Envoy's values from its module's forward, installed on demand.

``requires_output`` and ``requires_inputs`` decorate eproperty stubs: each access
makes sure the module feeds the interleaver in the current run. What feeds it is
a per-run wrapper put in the module's instance ``forward`` (removed when the run
ends): it calls the real forward and hands the output to
:meth:`Interleaver.handle`, and the inputs too when they are read. torch's
``Module.__call__`` looks hooks up on every call and takes a much slower path
when a module has any, so serving from ``forward`` keeps hooked modules on
torch's fast path; torch hooks the user registered still run around the wrapper
and see values after interventions.

torch binds ``forward`` when a module call starts, so a wrapper only serves
calls that start after it is installed. A value requested while its module is
already running is always an ancestor's (the model is paused inside it), so the
first wrapper below a module also gives every ancestor one, before the forward
reaches them (by induction from the first request, made before the forward
starts); their outputs are then served even when asked for late.

Inputs are served by the wrapper unless the module has forward pre-hooks or
backward hooks of its own, which must see the inputs after interventions (and
before backward hooks capture them): those modules get a forward pre-hook placed
first in line instead. Skipping a module, routing ``.source`` reads through the
rewritten forward and recording values for ``tracer.cache()`` happen in the same
wrapper.
"""

from __future__ import annotations

import functools
import itertools
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from endoscope_interleaver import SkipException
from endoscope_source import SOURCE_ACCESSOR_ATTR, TRUE_FORWARD_ATTR

if TYPE_CHECKING:
    from endoscope_interleaver import Interleaver

    from ._envoy import Envoy

__all__ = [
    "ENVOY_WRAPPER_ATTR",
    "WarmWrappers",
    "add_forward_hook",
    "add_forward_pre_hook",
    "count_calls",
    "ensure_hook",
    "ensure_inputs",
    "ensure_slow_path",
    "lend_early",
    "lent_wrappers",
    "requires_inputs",
    "requires_output",
    "route_source",
    "run_forward",
    "serve_module",
    "skip_module",
    "theirs",
]


_get_ident = threading.get_ident


def theirs(interleaver: Interleaver) -> bool:
    """Whether the module call running now belongs to another thread than
    ``interleaver``'s run (a plain call of a module while this thread traces it):
    what the run adds to a module must leave such calls alone."""
    return interleaver.thread != _get_ident()


class _Removable:
    """A hook handle made of a function (for non-torch hooks such as forward swaps)."""

    def __init__(self, remove: Callable[[], None]) -> None:
        self.remove = remove


# torch's register_* functions build a RemovableHandle with weak references for
# every hook (several microseconds); run-level hooks come and go every trace, so
# they are put straight into the module's hook dicts, under negative ids that
# never clash with torch's own (counting up from 0).
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


# ------------------------------------------------------------ run wrappers

# Where an Envoy keeps its reusable wrapper; on the wrapper function, a weak
# reference to its _Forward (to find the wrapper a module wears in a run).
ENVOY_WRAPPER_ATTR = "_endoscope_forward"
_WRAPPER_ATTR = "_endoscope_wrapper"


class _Run:
    """What a wrapper's closure reads on every call; it holds nothing that holds it.

    Attributes:
        interleaver: the run the wrapper is lent to, else ``None``.
        general: the wrapper's general path while it does more than serve the
            output (a bound method: a cycle that lasts only for the run).
    """

    __slots__ = ("general", "interleaver")

    def __init__(self) -> None:
        self.interleaver: Interleaver | None = None
        self.general: Callable[[Interleaver, Any, Any], Any] | None = None


class _Forward:
    """A module's forward wrapper, lent to one run at a time.

    Built once per Envoy and reused by every run (building the closure costs
    more than the rest of an install). While a run uses it, it is in the
    module's instance ``forward`` and in the run's hook handles; ``remove()``
    puts the module's own forward back and clears the run's state. The closure
    refers to :class:`_Run`, never to this object, so an Envoy dropped with its
    model is freed by reference counting alone.

    The wrapper always serves the module's output (``<path>.output``); the
    attributes below switch on the rest.

    Attributes:
        run: the run it is lent to (``run.interleaver``).
        inputs: serve ``<path>.input`` from the wrapper (no torch pre-hook).
        skippable: a pre-hook serves the inputs and may ask to skip the call.
        route: send calls through the module's ``.source`` accessor when active.
        skips: ``(batch_group, value)`` pairs of invokes skipping the current call.
        records: output recorders of caches, each called as ``record(output)``
            once per call of the module (a recorder numbers the calls itself).
        input_records: the same for inputs, called with ``(args, kwargs)``.
    """

    __slots__ = (
        "__weakref__",
        "class_forward",
        "envoy",
        "first",
        "forward",
        "had_instance",
        "input_provider",
        "input_records",
        "inputs",
        "module",
        "original",
        "provider",
        "records",
        "route",
        "run",
        "skippable",
        "skips",
        "state",
    )

    def __init__(self, module: Any, path: str, envoy: Envoy | None = None) -> None:
        self.module = module
        self.state = module.__dict__
        # Weak: the Envoy holds this wrapper (see lent_wrappers).
        self.envoy = weakref.ref(envoy) if envoy is not None else None
        self.provider = f"{path}.output"
        self.first = f"{path}.output.i0"  # the requester of its first call's output
        self.input_provider = f"{path}.input"
        self.run = _Run()
        self.inputs = False
        self.skippable = False
        self.route = False
        self.skips: list[tuple[Any, Any]] | None = None
        self.records: list[Callable[[Any], None]] = []
        self.input_records: list[Callable[[Any], None]] = []
        self.had_instance = "forward" in module.__dict__
        self.class_forward = type(module).forward
        self.original: Any = module.forward
        self.forward = _build(self.run, self.original, self.provider, self.first)
        setattr(self.forward, _WRAPPER_ATTR, weakref.ref(self))

    def fits(self) -> bool:
        """Whether the module's forward is still the one this wrapper wraps (its
        instance forward, or no instance forward and the same class forward)."""
        state = self.state
        if self.had_instance:
            return state.get("forward") is self.original
        return "forward" not in state and type(self.module).forward is self.class_forward

    def _update(self) -> None:
        if self.inputs or self.skippable or self.input_records:
            self.run.general = self._call
        elif self.route:
            self.run.general = self._call_routed
        elif self.records:
            self.run.general = self._call_records
        else:
            self.run.general = None

    def _call_records(self, interleaver: Interleaver, args: Any, kwargs: Any) -> Any:
        """The wrapper's path when it serves the output and records it for caches."""
        output = interleaver.handle(self.provider, self.original(*args, **kwargs), True)
        for record in self.records:
            record(output)
        return output

    def _call_routed(self, interleaver: Interleaver, args: Any, kwargs: Any) -> Any:
        """The wrapper's path when it serves the output of a forward that may run
        through the module's ``.source`` accessor (see :func:`route_source`)."""
        output = interleaver.handle(self.provider, self._forward(args, kwargs), True)
        for record in self.records:
            record(output)
        return output

    def _call(self, interleaver: Interleaver, args: Any, kwargs: Any) -> Any:
        """The wrapper's path when it does more than serve the output."""
        if self.inputs:
            try:
                args, kwargs = interleaver.handle(self.input_provider, (args, kwargs), True)
            except SkipException as skip:
                self.skips = skip.values
        for record in self.input_records:
            record((args, kwargs))
        skips, self.skips = self.skips, None
        if skips is None:
            output = self._forward(args, kwargs)
        else:
            output = _merge_skips(interleaver, skips, lambda: self._forward(args, kwargs))
        output = interleaver.handle(self.provider, output, True)
        for record in self.records:
            record(output)
        return output

    def _forward(self, args: Any, kwargs: Any) -> Any:
        if self.route:
            module = self.module
            accessor = module.__dict__.get(SOURCE_ACCESSOR_ATTR)
            if accessor is not None and accessor.active:
                return accessor.injected(module, *args, **kwargs)
        return self.original(*args, **kwargs)

    def remove(self) -> None:
        """Put the module's own forward back and forget the run (idempotent)."""
        run = self.run
        interleaver = run.interleaver
        if interleaver is None:
            return
        run.interleaver = None
        state = self.state
        if state.get("forward") is self.forward:
            if self.had_instance:
                state["forward"] = self.original
            else:
                del state["forward"]
        if run.general is not None:
            self._forget_extras()

    def _forget_extras(self) -> None:
        """Switch off what the run asked of the wrapper beyond serving the output."""
        self.run.general = None
        self.inputs = self.skippable = self.route = False
        self.skips = None
        # Cleared in place (nothing else holds them): no new lists per run.
        if self.records:
            self.records.clear()
        if self.input_records:
            self.input_records.clear()


def _build(run: _Run, original: Any, provider: str, first: str) -> Callable[..., Any]:
    """The wrapper function: serves ``provider`` while ``run`` is lent to a run
    (``first``: the requester of its first call, ``<provider>.i0``)."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        interleaver = run.interleaver
        # No run (a stale reference), called from an intervention (an Envoy called
        # ad hoc), or by another thread (a plain call while this one traces the
        # module): the module's own forward, nothing served.
        if (
            interleaver is None
            or interleaver.current is not None
            or interleaver.thread != _get_ident()
        ):
            return original(*args, **kwargs)
        general = run.general
        if general is not None:
            return general(interleaver, args, kwargs)
        value = original(*args, **kwargs)
        # handle(provider, value, True), inlined up to serving: most wrapped
        # calls (ancestors of what is read) are wanted by nobody.
        calls = interleaver.calls
        count = calls.get(provider, 0)
        calls[provider] = count + 1
        if provider not in interleaver._wanted:
            return value
        return interleaver.handle_counted(first if count == 0 else f"{provider}.i{count}", value)

    # inspect.signature() and endoscope-source see the real forward through it.
    forward.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(forward, TRUE_FORWARD_ATTR, original)
    return forward


def _installed(module: Any, interleaver: Interleaver) -> _Forward | None:
    """The wrapper in ``module``'s forward if it serves ``interleaver``'s run."""
    forward = module.__dict__.get("forward")
    if forward is None:
        return None
    ref = getattr(forward, _WRAPPER_ATTR, None)
    wrapper = ref() if ref is not None else None
    return wrapper if wrapper is not None and wrapper.run.interleaver is interleaver else None


def _install(interleaver: Interleaver, envoy: Envoy) -> _Forward:
    """Put ``envoy``'s wrapper in its module's forward for ``interleaver``'s run."""
    module = envoy._module
    state = module.__dict__
    wrapper = envoy.__dict__.get(ENVOY_WRAPPER_ATTR)
    if (
        wrapper is None
        or wrapper.run.interleaver is not None
        or wrapper.module is not module
        or not wrapper.fits()
    ):
        # None yet, lent to an enclosing run, or the Envoy's module (a rebound
        # Envoy) or the module's forward changed since it was built.
        wrapper = _Forward(module, envoy.path, envoy)
        if not hasattr(state.get("forward"), _WRAPPER_ATTR):
            # Not on top of another run's wrapper (a trace inside an intervention,
            # of this model or another wrapper of this module): keep it for reuse.
            envoy.__dict__[ENVOY_WRAPPER_ATTR] = wrapper
    wrapper.run.interleaver = interleaver
    state["forward"] = wrapper.forward
    if SOURCE_ACCESSOR_ATTR in state:
        route_source(wrapper, interleaver)
    _note_lent(interleaver, wrapper)
    return wrapper


def _note_lent(interleaver: Interleaver, wrapper: _Forward) -> None:
    """Tell an EnvoyInterleaver which wrappers its run lent beyond the warm ones."""
    lent = getattr(interleaver, "lent_late", None)
    if lent is not None:
        lent.append(wrapper)


def run_forward(
    envoy: Envoy, interleaver: Interleaver | None = None, *, ancestors: bool = True
) -> _Forward:
    """The run wrapper of ``envoy``'s module, installed now (ancestors first) if needed.

    One wrapper per module and run, whichever Envoy (of several NNsight wrappers
    over one module) asks first. Installed under the interleaver hook key
    ``(id(module), "output")``: the module's output is served from then on.

    Args:
        envoy: whose module to wrap.
        interleaver: the run's interleaver; ``envoy.interleaver`` when omitted.
        ancestors: also wrap the ancestors (``False`` for a caller that wraps
            every module, parents first).
    """
    if interleaver is None:
        interleaver = envoy.interleaver
    wrapper = envoy.__dict__.get(ENVOY_WRAPPER_ATTR)
    if wrapper is not None and wrapper.run.interleaver is interleaver:
        return wrapper
    module = envoy._module
    if "forward" in module.__dict__:
        found = _installed(module, interleaver)
        if found is not None:
            return found  # another Envoy of this module (an edited copy's) asked first
    parent = envoy._parent if ancestors else None
    while parent is not None and _never_runs(parent._module):
        parent = parent._parent
    if parent is not None:
        above = parent.__dict__.get(ENVOY_WRAPPER_ATTR)
        if (above is None or above.run.interleaver is not interleaver) and (
            _installed(parent._module, interleaver) is None
        ):
            run_forward(parent, interleaver)
    if interleaver.provider is None and not interleaver.calls:
        # Before the computation reaches its first provider nothing has run, so
        # there are no calls to number from (what ensure_hook's callers may do for
        # a late hook): the wrapper goes straight into the run's handles.
        wrapper = _install(interleaver, envoy)
        interleaver.hooks.append(wrapper)
        return wrapper
    install = functools.partial(_install, interleaver, envoy)
    if not interleaver.ensure_hook((id(module), "output"), install):
        # The key was taken without a wrapper behind it (a caller's own hook).
        interleaver.hooks.append(install())
    wrapper = envoy.__dict__.get(ENVOY_WRAPPER_ATTR)
    if wrapper is None or wrapper.run.interleaver is not interleaver:
        wrapper = _installed(module, interleaver)  # a one-run wrapper (see _install)
        assert wrapper is not None
    return wrapper


def _never_runs(module: Any) -> bool:
    """Whether ``module`` is a container that is never called (a ``ModuleList`` or
    ``ModuleDict``: torch's placeholder forward, no instance forward). It is never
    running when a child is read, so the ancestors' wrappers skip it: one wrapper
    less to lend and return per trace of a transformer's layer."""
    return type(module).forward is _FORWARD_UNIMPLEMENTED and "forward" not in module.__dict__


_FORWARD_UNIMPLEMENTED = torch.nn.Module.forward


def serve_module(envoy: Envoy, *, ancestors: bool = True) -> None:
    """Make ``envoy``'s module feed the running trace from its next call on.

    Reads install this on demand; a caller that knows a module runs before any
    read could ask for it (and that a late hook would then number its calls from
    the wrong one) installs it up front, before the computation reaches it.

    Args:
        envoy: whose module to serve; its model must be running a trace.
        ancestors: also serve the ancestors' outputs (what a read does).

    Raises:
        NotInTraceError: no trace of the model is running.
    """
    run_forward(envoy, envoy.interleaver, ancestors=ancestors)


def lend_early(envoy: Envoy, interleaver: Interleaver) -> _Forward | None:
    """Lend ``envoy``'s wrapper to a run that has not reached its first provider.

    The fast way to wrap many modules (a cache of every module): the caller
    makes sure nothing ran yet and that parents come before their children.

    Returns:
        The wrapper, or ``None`` when it must go through :func:`run_forward` (none
        built yet, lent elsewhere, or the module's forward changed).
    """
    wrapper = envoy.__dict__.get(ENVOY_WRAPPER_ATTR)
    if wrapper is None:
        return None
    if wrapper.run.interleaver is interleaver:
        return wrapper
    if wrapper.module is not envoy._module or not _lend(wrapper, interleaver):
        return None
    return wrapper


def _lend(wrapper: _Forward, interleaver: Interleaver) -> bool:
    """Put ``wrapper`` in its module's forward for ``interleaver``'s run, if it is free
    and the module's forward is still the one it wraps."""
    if wrapper.run.interleaver is not None or not wrapper.fits():
        return False
    wrapper.run.interleaver = interleaver
    wrapper.state["forward"] = wrapper.forward
    interleaver.hooks.append(wrapper)
    if SOURCE_ACCESSOR_ATTR in wrapper.state:
        route_source(wrapper, interleaver)
    _note_lent(interleaver, wrapper)
    return True


class WarmWrappers:
    """The wrappers a call site's earlier runs wore, lent together before a run starts.

    A union over the site's runs in the order lent (parents before children), so
    a loop reading a different layer each time warms them all; bounded by the
    model's modules. Belongs to the model and is dropped when its Envoys are
    pointed at other modules (:meth:`NNsight._modules_replaced`).

    Lending and returning run once per warm module and trace, so what they check
    is prepared when the set changes: per wrapper ``(wrapper, run, state,
    forward)``, and the module classes once each rather than once per module.
    """

    __slots__ = ("_classes", "_entries", "_known", "wrappers")

    def __init__(self) -> None:
        self.wrappers: list[_Forward] = []
        self._known: set[int] = set()
        self._entries: list[tuple[_Forward, _Run, dict[str, Any], Any]] | None = None
        self._classes: list[tuple[Any, Any]] = []  # (module class, its forward)

    def __len__(self) -> int:
        return len(self.wrappers)

    def add(self, wrapper: _Forward) -> None:
        """Add ``wrapper`` (once) after those already in the set."""
        if id(wrapper) not in self._known:
            self._known.add(id(wrapper))
            self.wrappers.append(wrapper)
            self._entries = None

    def _prepare(self) -> list[tuple[_Forward, _Run, dict[str, Any], Any]]:
        entries = [(w, w.run, w.state, w.forward) for w in self.wrappers if not w.had_instance]
        # Pairs, not a class -> forward map: wrappers of one class made before and
        # after its forward changed must fail the check for the older ones.
        self._classes = list({(type(w.module), w.class_forward) for w in self.wrappers})
        self._entries = entries
        return entries

    def lend(self, interleaver: Interleaver) -> int:
        """Lend the set's wrappers to ``interleaver``'s run, which has not started;
        returns how many were lent. One run handle returns them all (:class:`_Lease`).

        A wrapper is skipped when it is lent elsewhere or its module's forward is
        no longer the one it wraps.
        """
        entries = self._entries
        if entries is None:
            entries = self._prepare()
        for cls, class_forward in self._classes:
            if cls.forward is not class_forward:
                return self._lend_checked(interleaver)
        if len(entries) != len(self.wrappers):
            return self._lend_checked(interleaver)
        lent = entries  # all of them, unless one is skipped (no new list then)
        sourced = None
        for index, entry in enumerate(entries):
            _, run, state, forward = entry
            if run.interleaver is not None or "forward" in state:
                # Lent elsewhere (an enclosing run) or given an instance forward since.
                if lent is entries:
                    lent = entries[:index]
                continue
            run.interleaver = interleaver
            state["forward"] = forward
            if SOURCE_ACCESSOR_ATTR in state:
                sourced = [*(sourced or ()), entry[0]]
            if lent is not entries:
                lent.append(entry)
        if lent:
            interleaver.hooks.append(_Lease(lent))
        for wrapper in sourced or ():
            route_source(wrapper, interleaver)  # after the lease: returned before the count
        return len(lent)

    def _lend_checked(self, interleaver: Interleaver) -> int:
        """:meth:`lend` checking each wrapper on its own (a module class's forward or
        a module's instance forward changed, or a wrapper wraps an instance forward)."""
        lent = []
        for wrapper in self.wrappers:
            run = wrapper.run
            if run.interleaver is not None or not wrapper.fits():
                continue
            run.interleaver = interleaver
            wrapper.state["forward"] = wrapper.forward
            lent.append((wrapper, run, wrapper.state, wrapper.forward))
        if lent:
            interleaver.hooks.append(_Lease(lent))
        for wrapper, _, state, _ in lent:
            if SOURCE_ACCESSOR_ATTR in state:
                route_source(wrapper, interleaver)
        return len(lent)


class _Lease:
    """The run handle of the wrappers :meth:`WarmWrappers.lend` lent: returns them all."""

    __slots__ = ("entries",)

    def __init__(self, entries: list[tuple[_Forward, _Run, dict[str, Any], Any]]) -> None:
        self.entries = entries

    def remove(self) -> None:
        entries, self.entries = self.entries, []
        for entry in entries:
            entry[0].remove()


def lent_wrappers(interleaver: Interleaver) -> list[_Forward]:
    """The reusable wrappers ``interleaver``'s run lent beyond those it was lent
    warm, in the order lent (parents before children)."""
    wrappers = []
    for wrapper in getattr(interleaver, "lent_late", ()):
        if wrapper.envoy is not None:
            envoy = wrapper.envoy()
            if envoy is not None and envoy.__dict__.get(ENVOY_WRAPPER_ATTR) is wrapper:
                wrappers.append(wrapper)
    return wrappers


def ensure_slow_path(envoy: Envoy, *, include_self: bool = False) -> None:
    """Give ``envoy``'s ancestors (and itself if asked) a run wrapper.

    A module whose value is requested while it is already running is always an
    ancestor of the point the model is paused at; torch bound its ``forward``
    when the call started, so only a wrapper that was there by then serves it.
    Giving every ancestor of every wrapped module a wrapper the moment the first
    one below it is installed (which precedes the ancestor's own call, by
    induction from the first request, made before the forward starts) serves
    such late requests.
    """
    if include_self:
        run_forward(envoy)
    elif envoy._parent is not None:
        run_forward(envoy._parent)


def ensure_hook(envoy: Envoy, kind: str, install: Callable[[], Any]) -> None:
    """Install ``install()`` once per run under ``(module, kind)``, after the wrappers
    of the module's ancestors."""
    ensure_slow_path(envoy)
    envoy.interleaver.ensure_hook((id(envoy._module), kind), install)


def requires_output(stub: Callable[..., Any]) -> Callable[..., None]:
    """Decorate an eproperty stub whose value is the module's output."""

    @functools.wraps(stub)
    def ensure(envoy: Envoy, interleaver: Interleaver | None = None) -> None:
        if interleaver is None:
            interleaver = envoy.interleaver
        wrapper = envoy.__dict__.get(ENVOY_WRAPPER_ATTR)
        if wrapper is None or wrapper.run.interleaver is not interleaver:
            run_forward(envoy, interleaver)

    ensure._eproperty_takes_interleaver = True  # type: ignore[attr-defined]
    return ensure


def _serve_inputs(wrapper: _Forward) -> Any:
    """Serve the module's inputs: from the wrapper, or a first-in-line pre-hook."""
    module = wrapper.module
    if module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks:
        return _install_inputs_hook(wrapper)
    wrapper.inputs = True
    wrapper._update()
    return _Removable(_noop)


def _noop() -> None:
    return None


def _install_inputs_hook(wrapper: _Forward) -> Any:
    wrapper.skippable = True
    wrapper._update()
    provider = wrapper.input_provider
    interleaver = wrapper.run.interleaver
    assert interleaver is not None
    handle = interleaver.handle

    def inputs_hook(module_: Any, args: Any, kwargs: Any) -> Any:
        if theirs(interleaver):
            return None
        try:
            return handle(provider, (args, kwargs), True)
        except SkipException as skip:
            # Picked up by the wrapper, which then does not run forward.
            wrapper.skips = skip.values
            return None

    return add_forward_pre_hook(wrapper.module, inputs_hook, with_kwargs=True)


def ensure_inputs(envoy: Envoy, interleaver: Interleaver | None = None) -> None:
    if interleaver is None:
        interleaver = envoy.interleaver
    wrapper = run_forward(envoy, interleaver)
    interleaver.ensure_hook((id(envoy._module), "input"), functools.partial(_serve_inputs, wrapper))


def requires_inputs(stub: Callable[..., Any]) -> Callable[..., None]:
    """Decorate an eproperty stub whose value is the module's ``(args, kwargs)``."""

    @functools.wraps(stub)
    def ensure(envoy: Envoy, interleaver: Interleaver | None = None) -> None:
        ensure_inputs(envoy, interleaver)

    ensure._eproperty_takes_interleaver = True  # type: ignore[attr-defined]
    return ensure


def route_source(wrapper: _Forward, interleaver: Interleaver) -> None:
    """Run ``wrapper``'s module through its built ``.source`` accessor from the start
    of ``interleaver``'s run, every operation counted.

    A module whose ``.source`` was built may have an operation read at any point of
    the run, also after a child's value was read (its forward has then started):
    only a forward that was the rewritten one from its call's start reaches that
    operation, and only counted calls tell a late hook which call is next. Modules
    without a built accessor never come here and keep their own forward.
    """
    accessor = wrapper.state.get(SOURCE_ACCESSOR_ATTR)
    if accessor is None:
        return
    interleaver.ensure_hook((id(accessor), "count"), functools.partial(count_calls, accessor))
    if not wrapper.route:
        wrapper.route = True
        wrapper._update()


def count_calls(accessor: Any) -> _Removable:
    """Count the calls of ``accessor``'s operations (and keep it active) until the
    run ends."""
    return _Removable(accessor.watch(count=True).close)


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
    ensure_inputs(envoy)
    mediator = interleaver.current
    if mediator is None:
        raise RuntimeError(f"{envoy.path}.skip() can only be called inside a trace's invoke")
    mediator.skip(interleaver.iterate_requester(f"{envoy.path}.input"), value)
