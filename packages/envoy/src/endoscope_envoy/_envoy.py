"""Envoy: a proxy over one ``torch.nn.Module`` and the tree of its children.

The tree is built eagerly when a model is wrapped (one small object per module,
microseconds each), so printing, ``modules()`` and typo suggestions never walk
torch again. An Envoy's ``.output`` / ``.inputs`` are :class:`ModuleValue`
descriptors (eproperties with a specialized read path): reading one inside a
trace puts a wrapper in that module's forward on demand (once per run, removed
when the run ends; lent before the run when the call site read it last time)
and blocks the intervention until the module runs. Modules nobody reads are
left alone.
"""

from __future__ import annotations

import difflib
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from endoscope_interleaver import Interleaver

from ._hooks import requires_inputs, requires_output, skip_module
from ._module_values import ModuleValue
from ._suggestions import attribute_error

if TYPE_CHECKING:
    from ._nnsight import NNsight
    from ._source import SourceEnvoy

__all__ = ["Envoy", "NotInTraceError"]


class NotInTraceError(RuntimeError, ValueError):
    """A value that only exists while a model runs was used where the model is not
    running: outside a trace, or in a trace's code outside its invokes.

    A ``ValueError``, as nnsight 0.8.1 raises there (and a ``RuntimeError``, as
    endoscope always did).
    """


class Envoy:
    """Wraps a module; attribute and index access mirror the module tree.

    Children are Envoys (``model.transformer.h[0]``); other attributes come from
    the module (``model.lm_head.weight``, ``model.config``). A child whose name
    clashes with an Envoy attribute (``output``, ``input``, ``source``, ...) stays
    reachable with a trailing underscore (``attention.output_``), with nnsight's
    ``E_`` prefix (``attention.E_output``) and by :meth:`get`.

    Attributes:
        path: the module's path from the root, e.g. ``"model.transformer.h.0"``.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        path: str = "model",
        root: NNsight | None = None,
        parent: Envoy | None = None,
    ) -> None:
        self._module = module
        # Up-links are weak: a dropped model is freed at once, without the cycle
        # collector (the tree's strong links point down only).
        self._parent_ref = weakref.ref(parent) if parent is not None else None
        self.path = path
        self._root_ref: weakref.ref[NNsight] = weakref.ref(root if root is not None else self)  # type: ignore[arg-type]
        # Names __getattr__ has cached in __dict__ (see there); dropped by _forget_lookups.
        self._lookups: set[str] = set()
        self._children: dict[str, Envoy] = {}
        self._aliases: dict[str, Envoy] = {}
        self._source: SourceEnvoy | None = None
        for name, child in module.named_children():
            child_path = f"{path}.{name}"
            envoy_type = self._root._envoy_type_for(child, child_path)
            self._children[name] = envoy_type(child, path=child_path, root=self._root, parent=self)
        # Positional access (model.layers[3]) is on the user's hot path: keep a tuple.
        self._ordered: tuple[Envoy, ...] = tuple(self._children.values())

    @property
    def _root(self) -> NNsight:
        root = self._root_ref()
        if root is None:
            raise ReferenceError(
                f"the model {self.path} belonged to was garbage-collected; keep the "
                "NNsight object alive while you use its Envoys."
            )
        return root

    @property
    def _parent(self) -> Envoy | None:
        ref = self._parent_ref
        return ref() if ref is not None else None

    # ------------------------------------------------------------------ tree

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: children, aliases, then the module.
        state = self.__dict__
        children = state.get("_children")
        if children is None:
            raise AttributeError(name)
        found = children.get(name)
        if found is None:
            found = state["_aliases"].get(name)
        if found is None and name.endswith("_"):
            found = children.get(name[:-1])
        if found is None and name.startswith("E_"):
            found = children.get(name[2:])  # nnsight 0.8.1's spelling of a clashing name
        if found is not None:
            # Kept in __dict__: the next `model.transformer` skips the failed normal
            # lookup, which builds an AttributeError first (about 1.4 us a step on
            # 3.11). Names the class defines never get here, so nothing is shadowed.
            state[name] = found
            state["_lookups"].add(name)
            return found
        module = state["_module"]
        try:
            return getattr(module, name)
        except AttributeError:
            pass
        raise attribute_error(self._missing(name), name) from None

    def _forget_lookups(self) -> None:
        """Drop the children :meth:`__getattr__` cached: the tree below was rebuilt."""
        state = self.__dict__
        for name in state.pop("_lookups", ()):
            state.pop(name, None)
        state["_lookups"] = set()

    def _missing(self, name: str) -> str:
        candidates = [*self._children, *self._aliases]
        candidates += [n for n, _ in self._module.named_parameters(recurse=False)]
        candidates += [n for n in dir(type(self._module)) if not n.startswith("_")]
        close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        children = ", ".join(self._children) or "none"
        return (
            f"{self.path} ({type(self._module).__name__}) has no module or attribute "
            f"{name!r}.{hint} Its child modules are: {children}."
        )

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            return self.get(key)
        children = self._ordered
        if isinstance(key, slice):
            return list(children[key])
        try:
            return children[key]
        except IndexError:
            raise IndexError(
                f"{self.path} has {len(children)} child modules; index {key} is out of range."
            ) from None

    def __len__(self) -> int:
        return len(self._children)

    def __bool__(self) -> bool:
        return True  # an Envoy without children is still an Envoy

    def __iter__(self) -> Iterator[Envoy]:
        return iter(self._ordered)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._children, *self._aliases})

    def __repr__(self) -> str:
        text = repr(self._module)
        aliases = self._root._alias_notes() if self._root is self else []
        if aliases:
            text += "\n" + "\n".join(f"# {note}" for note in aliases)
        return text

    def children(self) -> list[Envoy]:
        """The direct child Envoys."""
        return list(self._children.values())

    def named_children(self) -> list[tuple[str, Envoy]]:
        """``(name, envoy)`` for each direct child."""
        return list(self._children.items())

    def modules(self, include_fn: Callable[[Envoy], bool] | None = None) -> list[Envoy]:
        """This Envoy and every descendant, parents before children."""
        return [envoy for _, envoy in self.named_modules(include_fn)]

    def named_modules(
        self, include_fn: Callable[[Envoy], bool] | None = None
    ) -> list[tuple[str, Envoy]]:
        """``(path, envoy)`` for this Envoy and every descendant."""
        found: list[tuple[str, Envoy]] = []
        stack: list[Envoy] = [self]
        while stack:
            envoy = stack.pop()
            if include_fn is None or include_fn(envoy):
                found.append((envoy.path, envoy))
            stack.extend(reversed(list(envoy._children.values())))
        return found

    def get(self, path: str) -> Envoy:
        """The Envoy at ``path`` (``"transformer.h.0"``, relative or from the root).

        Raises:
            AttributeError: a component does not exist (with the nearest names).
        """
        if path == self.path or not path:
            return self
        root_prefix = self._root.path + "."
        if path.startswith(root_prefix) and self is self._root:
            # "model.x" is the root's path form, unless the root has a child
            # named "model" (as Llama-style models do) that continues the path.
            try:
                return self._walk(path)
            except AttributeError:
                return self._walk(path[len(root_prefix) :])
        return self._walk(path)

    def _walk(self, path: str) -> Envoy:
        envoy: Envoy = self
        for part in path.split("."):
            child = envoy._children.get(part)
            if child is None:
                child = envoy._aliases.get(part)
            if child is None:
                raise AttributeError(envoy._missing(part))
            envoy = child
        return envoy

    def to(self, *args: Any, **kwargs: Any) -> Envoy:
        """Move the module (``module.to(...)``) and return this Envoy."""
        self._module.to(*args, **kwargs)
        return self

    def cpu(self) -> Envoy:
        """Move the module to the CPU (``module.cpu()``) and return this Envoy."""
        self._module.cpu()
        return self

    def cuda(self, device: Any = None) -> Envoy:
        """Move the module to a GPU (``module.cuda(device)``) and return this Envoy."""
        self._module.cuda(device)
        return self

    @property
    def device(self) -> torch.device:
        """The device of the module's first parameter or buffer (CPU if it has none)."""
        for tensor in self._module.parameters():
            return tensor.device
        for buffer in self._module.buffers():
            return buffer.device
        return torch.device("cpu")

    @property
    def devices(self) -> set[torch.device]:
        """Every device the module's parameters and buffers are on (a model split
        over devices has several; a module with neither has none)."""
        tensors = [*self._module.parameters(), *self._module.buffers()]
        return {tensor.device for tensor in tensors}

    @property
    def parent(self) -> Envoy | None:
        """The Envoy whose child this one is (``None`` for the model's own)."""
        return self._parent

    @property
    def root(self) -> NNsight:
        """The model's Envoy, at the top of the tree."""
        return self._root

    # ------------------------------------------------------- interleaving

    @property
    def interleaver(self) -> Interleaver:
        """The interleaver of the trace running now.

        Raises:
            NotInTraceError: no trace of this model is running.
        """
        interleaver = self._root._interleaver
        if interleaver is None:
            raise self._not_running(f"values of {self.path}")
        return interleaver

    def _not_running(self, what: str) -> NotInTraceError:
        """The error for reading ``what`` while this model is not running."""
        from ._tracer import body_without_run

        tracer = body_without_run(self._root)
        if tracer is None:
            why = (
                f"{self.path} has no values outside a trace. Read .output/.input inside "
                "`with model.trace(...):` (or an invoke) and call .save() on what you "
                "want to keep."
            )
        elif not tracer.invokers:
            why = (
                "this trace has no input, so the model does not run while its code does. "
                "Give the input to the trace, `with model.trace(x):`, or read inside "
                "`with tracer.invoke(x):` blocks of `with model.trace() as tracer:`."
            )
        else:
            why = (
                "code of `with model.trace() as tracer:` outside its invokes runs before "
                "the model does. Read inside a `with tracer.invoke(...):` block "
                "(`with tracer.invoke():`, without input, sees the whole batch)."
            )
        return NotInTraceError(f"Cannot access {what} outside of interleaving: {why}")

    @ModuleValue(key="output")
    @requires_output
    def output(self) -> Any:
        """The module's output in the running trace (get, set, or edit in place)."""

    @ModuleValue(key="input")
    @requires_inputs
    def inputs(self) -> Any:
        """The module's inputs as ``(args, kwargs)`` in the running trace."""

    @property
    def input(self) -> Any:
        """The module's first input (first positional argument, else first keyword)."""
        args, kwargs = self.inputs
        if args:
            return args[0]
        if kwargs:
            return next(iter(kwargs.values()))
        raise ValueError(f"{self.path} was called without any input")

    @input.setter
    def input(self, value: Any) -> None:
        args, kwargs = self.inputs
        if args:
            self.inputs = ((value, *args[1:]), kwargs)
        elif kwargs:
            first = next(iter(kwargs))
            self.inputs = (args, {**kwargs, first: value})
        else:
            raise ValueError(f"{self.path} was called without any input to replace")

    def next(self, step: int = 1) -> Envoy:
        """Move this invoke's later reads of this module ``step`` calls forward.

        ``cell.output`` means the cell's first call; after ``cell.next()`` it means
        the second. Returns this Envoy: ``model.cell.next().output``.

        Raises:
            RuntimeError: outside the trace's code, or inside ``tracer.iter`` /
                after ``tracer.next()``, where the tracer's step applies to every
                module and a per-module step would be ignored.
        """
        mediator = self.interleaver.current
        if mediator is None:
            raise RuntimeError(f"{self.path}.next() can only be called inside the trace's code")
        if mediator.iteration is not None:
            raise RuntimeError(
                f"{self.path}.next() inside tracer.iter[...] or after tracer.next() would "
                f"be ignored: there every read means the tracer's step ({mediator.iteration})."
                " Use one way of stepping: the tracer's or the module's."
            )
        tracker = mediator.iteration_tracker
        for point in (f"{self.path}.output", f"{self.path}.input"):
            tracker[point] += step
        return self

    @property
    def iter(self) -> Any:
        """Deprecated, as in nnsight 0.8.1: ``tracer.iter`` (this is the running
        trace's)."""
        warnings.warn(
            "model.iter is deprecated; use tracer.iter instead.", DeprecationWarning, stacklevel=2
        )
        return self._running_tracer("iter").iter

    def all(self) -> Any:
        """Deprecated, as in nnsight 0.8.1: ``tracer.all()`` (the running trace's)."""
        warnings.warn(
            "model.all() is deprecated; use tracer.all() instead.", DeprecationWarning, stacklevel=2
        )
        return self._running_tracer("all()").all()

    def _running_tracer(self, what: str) -> Any:
        interleaver = self._root._interleaver
        tracer = interleaver.tracer if interleaver is not None else None
        if interleaver is None or interleaver.current is None or tracer is None:
            raise NotInTraceError(
                f"{self.path}.{what} can only be used inside the trace's code (it steps "
                f"through the running trace: write tracer.{what} there)."
            )
        return tracer

    def skip(self, value: Any) -> None:
        """Do not run this module in the trace; use ``value`` as its output."""
        skip_module(self, value)

    @property
    def source(self) -> SourceEnvoy:
        """The module's forward, one named entry per call site (``.source.<op>``)."""
        if self._source is None:
            from ._source import SourceEnvoy

            self._source = SourceEnvoy(self)
        return self._source

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the module. Inside a trace it runs ad hoc, without the trace's hooks."""
        if self._root._interleaver is not None and self._root._interleaver.current is not None:
            return self._module.forward(*args, **kwargs)
        return self._module(*args, **kwargs)
