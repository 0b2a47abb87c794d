"""``module.source``: read and write single operations inside a module's forward.

``model.layer.source`` is a :class:`SourceEnvoy` over endoscope-source's
accessor of the module's forward (one per module, cached on the module). Each
call site is an :class:`OperationEnvoy` with ``.output``, ``.inputs`` and
``.input`` eproperties, served like a module's values: reading one in a trace
adds a hook to that operation for the run and routes the module's forward
through the rewritten code for that run only. A module nobody source-traces runs
its own forward; after the run every module runs its own forward again.

``.source`` on an operation descends into the function it calls (resolved from
the call site's expression: ``self.helper``, ``torch.nn.functional.gelu``,
``some_function``), so ``model.layer.source.attention_0.source.matmul_0`` works.
A callee that is any other expression (``self.c_attn(h).split(...)`` calls
``torch.Tensor.split``) is known only when the site calls: inside a trace,
``.source`` waits for that call and descends into the callee that runs.
"""

from __future__ import annotations

import builtins
import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from endoscope_interleaver import Interleaver, eproperty
from endoscope_source import (
    OperationAccessor,
    SourceAccessor,
    SourceError,
    get_or_create_source_accessor,
)

from ._hooks import _Removable, count_calls, route_source, run_forward
from ._suggestions import attribute_error

if TYPE_CHECKING:
    from ._envoy import Envoy

__all__ = ["OperationEnvoy", "SourceEnvoy"]


def _takes_interleaver(stub: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an eproperty stub to be called with the running interleaver, which the
    eproperty has looked up already."""
    stub._eproperty_takes_interleaver = True  # type: ignore[attr-defined]
    return stub


class SourceEnvoy:
    """The operations of a function, by name: ``source.<op_name>``.

    ``print(model.layer.source)`` shows the forward's source with each call
    site's name beside its line.
    """

    def __init__(
        self,
        owner: Envoy,
        accessor: SourceAccessor | None = None,
        operation: OperationEnvoy | None = None,
    ) -> None:
        self._owner = owner
        self._operation = operation
        if accessor is None:
            module = owner._module
            try:
                accessor = get_or_create_source_accessor(module, path=owner.path)
            except SourceError as error:
                raise type(error)(f"{owner.path}.source is unavailable: {error}") from None
        self._accessor = accessor
        self._operations: dict[str, OperationEnvoy] = {}

    def _current(self) -> SourceEnvoy:
        """These operations as they are now: the owner's ``.source`` (or the
        operation's) anew when the owner Envoy was pointed at another module."""
        operation = self._operation
        if operation is None:
            return self if self._owner._source is self else self._owner.source
        fresh = operation._current()
        return self if fresh is operation else fresh.source

    @property
    def path(self) -> str:
        """The provider path prefix of this function's operations."""
        return f"{self._operation.path if self._operation else self._owner.path}.source"

    def __getattr__(self, name: str) -> OperationEnvoy:
        if name.startswith("__"):
            raise AttributeError(name)
        operations = self.__dict__["_operations"]
        envoy = operations.get(name)
        if envoy is None:
            try:
                op = self._accessor[name]
            except (KeyError, AttributeError) as error:
                message = error.args[0] if error.args else name
                raise attribute_error(
                    f"{self.path} has no operation {name!r}: {message}", name
                ) from None
            envoy = operations[name] = OperationEnvoy(self._owner, op, self)
            # Found by plain attribute lookup from now on (this runs only for
            # names the class lacks, so no method is shadowed).
            self.__dict__[name] = envoy
        return envoy

    def __getitem__(self, name: str) -> OperationEnvoy:
        return getattr(self, name)

    def __iter__(self):
        return iter([getattr(self, name) for name in self._accessor.operations])

    def __len__(self) -> int:
        return len(self._accessor.operations)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._accessor.operations})

    @property
    def operations(self) -> list[str]:
        """Operation names in source order."""
        return list(self._accessor.operations)

    def __str__(self) -> str:
        return str(self._accessor)

    def __repr__(self) -> str:
        return str(self._accessor)


class OperationEnvoy:
    """One call site of a module's forward; its values live inside a trace.

    Attributes:
        path: the provider path, e.g. ``"model.layers.0.source.self_fc_0"``.
    """

    def __init__(self, owner: Envoy, op: OperationAccessor, parent: SourceEnvoy) -> None:
        self._owner = owner
        self._op = op
        self._parent = parent
        self.path = op.path
        self._source: SourceEnvoy | None = None

    def __repr__(self) -> str:
        return str(self._op)

    @property
    def interleaver(self) -> Interleaver:
        """The running trace's interleaver (see :attr:`Envoy.interleaver`)."""
        return self._owner.interleaver

    def _current(self) -> OperationEnvoy:
        """This call site in the module's forward as it is now.

        The same object unless the owner Envoy was pointed at another module
        since this one was made (a model whose weights loaded): then the call
        site of the same name in the new module's forward.
        """
        parent = self._parent._current()
        if parent is self._parent:
            return self
        return getattr(parent, self._op.name)

    def _hook(self, kind: str, interleaver: Interleaver) -> None:
        current = self._current()
        if current is not self:
            # Same provider path, so this envoy's requests are served by its hooks.
            current._hook(kind, interleaver)
            return
        owner = self._owner
        # The owner's wrapper (its ancestors' too) routes its calls through the
        # rewritten forward in this run, every operation counted: a wrapper lent
        # while the module had a built accessor routes already (route_source).
        wrapper = run_forward(owner, interleaver)
        if not wrapper.route:
            route_source(wrapper, interleaver)
        interleaver.ensure_hook(
            (id(self._op), kind), functools.partial(_install_op_hook, self, kind, interleaver)
        )
        if self._parent._operation is not None:
            for parent_op in self._parent_chain():
                interleaver.ensure_hook((id(parent_op._op), "descend"), parent_op._descend)
            # A nested function's operations are counted too (see count_calls).
            accessor = self._parent._accessor
            interleaver.ensure_hook(
                (id(accessor), "count"), functools.partial(count_calls, accessor)
            )

    def _parent_chain(self) -> list[OperationEnvoy]:
        chain = []
        source = self._parent
        while source._operation is not None:
            chain.append(source._operation)
            source = source._operation._parent
        return chain

    def _descend(self) -> _Removable:
        op = self._op
        hook = op.injected_for
        op.fn_hooks.append(hook)
        return _Removable(lambda: _remove(op.fn_hooks, hook))

    # The eproperty calls its stub on every access, before the request blocks:
    # that is where the operation gets its hook for the run.
    @eproperty(key="callee")
    @_takes_interleaver
    def _callee(self, interleaver: Interleaver) -> Any:
        """What the operation calls this time, once it is about to call it."""
        self._hook("callee", interleaver)

    @eproperty(key="output")
    @_takes_interleaver
    def output(self, interleaver: Interleaver) -> Any:
        """The operation's return value in the running trace."""
        self._hook("output", interleaver)

    @eproperty(key="input")
    @_takes_interleaver
    def inputs(self, interleaver: Interleaver) -> Any:
        """The operation's ``(args, kwargs)`` in the running trace."""
        self._hook("input", interleaver)

    @property
    def input(self) -> Any:
        """The operation's first argument (first keyword if it has no positional ones)."""
        args, kwargs = self.inputs
        if args:
            return args[0]
        return next(iter(kwargs.values()))

    @input.setter
    def input(self, value: Any) -> None:
        args, kwargs = self.inputs
        if args:
            self.inputs = ((value, *args[1:]), kwargs)
        else:
            first = next(iter(kwargs))
            self.inputs = (args, {**kwargs, first: value})

    @property
    def source(self) -> SourceEnvoy:
        """The operations of the function this call site calls (recursive ``.source``)."""
        current = self._current()
        if current is not self:
            return current.source
        if self._source is None:
            try:
                callee = _resolve_callee(self._owner._module, self._parent, self._op)
            except SourceError:
                if self._owner._root._interleaver is None:
                    raise
                # Inside a trace: the callee that actually runs, when the site calls.
                callee = self._callee
            try:
                nested = self._op.source_for(callee)
            except SourceError as error:
                raise type(error)(f"{self.path}.source is unavailable: {error}") from None
            self._source = SourceEnvoy(self._owner, nested, self)
        return self._source


def _remove(hooks: list[Any], hook: Any) -> None:
    if hook in hooks:
        hooks.remove(hook)


class _OpHook:
    """Serves one operation's value to a run (a hook of the operation's list) and
    is the run's handle that takes it off that list again."""

    __slots__ = ("handle", "hooks", "provider")

    def __init__(self, interleaver: Interleaver, provider: str, hooks: list[Any]) -> None:
        self.handle = interleaver.handle
        self.provider = provider
        self.hooks = hooks

    def __call__(self, value: Any) -> Any:
        return self.handle(self.provider, value, True)

    def remove(self) -> None:
        _remove(self.hooks, self)


def _install_op_hook(envoy: OperationEnvoy, kind: str, interleaver: Interleaver) -> Any:
    op = envoy._op
    provider = f"{envoy.path}.{kind}"
    if kind == "callee":
        return _install_callee_hook(envoy, provider)
    # The output after the call (post-hooks); the inputs, (args, kwargs), before it.
    hook = _OpHook(interleaver, provider, op.post_hooks if kind == "output" else op.pre_hooks)
    hook.hooks.insert(0, hook)
    if interleaver.provider is not None and op.accessor is not None and op.accessor.counting:
        # Hooked while the model runs: number its calls after those gone by.
        ran = op.returns if kind == "output" else op.calls
        if ran and provider not in interleaver.calls:
            interleaver.calls[provider] = ran
    return hook


def _install_callee_hook(envoy: OperationEnvoy, provider: str) -> _Removable:
    """Serve what the operation calls, before it calls it (``fn_hooks``).

    A read of the served callee's ``.source`` operations, made while this hook
    waits, descends into this very call: the descent's own hook, added now, is
    not among the hooks this call runs, so this one hands back the rewritten
    callee (later calls leave that to the descent's hook).
    """
    op = envoy._op
    interleaver = envoy.interleaver
    handle = interleaver.handle
    descend = op.injected_for

    def hook(fn: Any) -> Any:
        descending = descend in op.fn_hooks
        handle(provider, fn, True)
        if not descending and descend in op.fn_hooks:
            return op.injected_for(fn)
        return None

    op.fn_hooks.insert(0, hook)
    accessor = op.accessor
    counted = interleaver.provider is not None and accessor is not None and accessor.counting
    if counted and op.calls and provider not in interleaver.calls:
        # Hooked while the model runs: the calls that went by are not this one.
        interleaver.calls[provider] = op.calls
    return _Removable(lambda: _remove(op.fn_hooks, hook))


def _resolve_callee(module: Any, source: SourceEnvoy, op: OperationAccessor) -> Any:
    """The object a call site calls, from its callee expression (``self.a.b``, ``f``, ``m.f``)."""
    text = op.site.callee if hasattr(op.site, "callee") else None
    if text is None:
        text = op.site.text.split("(", 1)[0].strip()
    parts = text.split(".")
    if not parts or not all(part.isidentifier() for part in parts):
        if op.last_callee is not None:
            return op.last_callee  # what it called the last time it ran in a trace
        raise SourceError(
            f"{op.path}: `{text}` is an expression, so what `{op.site.text}` calls is "
            "only known when it runs. Use .source on it inside a trace (it descends "
            "into the callee that runs), or after a trace that read any operation of "
            "this forward."
        )
    function = source._accessor.function
    scope = {**getattr(function, "__globals__", {}), **_closure_vars(function)}
    if parts[0] == "self":
        target: Any = module
    elif parts[0] in scope:
        target = scope[parts[0]]
    elif hasattr(builtins, parts[0]):
        target = getattr(builtins, parts[0])
    else:
        # A local variable (``fn = pick(...); fn(x)``): only a call shows what it is.
        target = op.last_callee
        if target is None:
            raise SourceError(
                f"{op.path}: `{parts[0]}` is a local variable of {function.__qualname__}, "
                f"so what `{text}(...)` calls is only known once it ran. Read any "
                "operation of this forward in a trace first (that run records the callee), "
                f"then use `.source` on {op.name}."
            )
        parts = parts[:1]  # the recorded callee is the whole chain's
    for part in parts[1:]:
        target = getattr(target, part)
    forward = getattr(target, "forward", None)
    if forward is not None and not inspect.isroutine(target):
        raise SourceError(
            f"{op.path} calls a module ({type(target).__name__}); use that module's own "
            ".source on its Envoy instead."
        )
    return target


def _closure_vars(function: Any) -> dict[str, Any]:
    try:
        return dict(inspect.getclosurevars(function).nonlocals)
    except (TypeError, ValueError):
        return {}
