"""NNsight: the root Envoy of a wrapped model, and where traces start."""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Literal, overload

import torch

from endoscope_interleaver import GreenletScheduler, Interleaver, Scheduler, ThreadScheduler

from ._backward import backward_in_traces, running_models
from ._batching import batch_inputs
from ._config import CONFIG
from ._envoy import Envoy
from ._hooks import WarmWrappers, lent_wrappers
from ._interleaving import PointOrder, counting_forwards, recording_point_order
from ._locking import ModelLock, hold, lock_of, release
from ._remote import LocalRemoteBackend, remote_backend
from ._session import EditTracer, Session
from ._tracebacks import drop_computation_frames
from ._tracer import InterleavingTracer

__all__ = ["NNsight"]

RenameValue = str | Sequence[str]
EnvoysSpec = type[Envoy] | Mapping[type | str, type[Envoy]] | None


class _ClassEnvoys:
    """The default of ``NNsight(envoys=...)``: the class attribute applies."""

    def __repr__(self) -> str:
        return "<the class's envoys>"


_CLASS_ENVOYS: Any = _ClassEnvoys()


_SCHEDULER_CLASSES: dict[str, Callable[[], Scheduler]] = {
    "greenlet": GreenletScheduler,
    "thread": ThreadScheduler,
}
_SCHEDULERS: dict[str, Scheduler] = {}


class NNsight(Envoy):
    """Wraps any ``torch.nn.Module`` for tracing.

    Example:
        >>> model = NNsight(torch.nn.Sequential(torch.nn.Linear(4, 4)))  # doctest: +SKIP
        >>> with model.trace(torch.ones(1, 4)):  # doctest: +SKIP
        ...     hidden = model[0].output.save()

    Args:
        module: the model to wrap.
        rename: extra names for modules. A key is a child name (renamed wherever
            it occurs) or a dotted path from the root (mounted on the root); a
            value is one alias or a list of aliases:
            ``{"transformer": "model", "transformer.h": ["layers", "blocks"]}``.
        envoys: which Envoy class wraps each module below the root: one class
            for all of them, or a mapping. A mapping's module-type keys are tried
            first, along the module's MRO (``{nn.Module: A, nn.Linear: B}`` gives
            a Linear ``B``), then its string keys, which match the end of the
            module's path by whole dotted parts (``"layer1"``, ``"inner.layer2"``,
            ``"layers.*"`` with ``*`` for any one part), in the native spelling
            and every alias spelling from ``rename``; no match gives
            :class:`Envoy`. An NNsight subclass may set a default as its class
            attribute ``envoys``; passing ``envoys=`` (``None`` included, which
            means :class:`Envoy` everywhere) replaces that default.
        scheduler: how interventions run: ``"greenlet"``, ``"thread"``, a
            :class:`Scheduler` instance, or ``None`` for ``CONFIG.scheduler``.
    """

    envoys: ClassVar[EnvoysSpec] = {}

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        rename: Mapping[str, RenameValue] | None = None,
        envoys: EnvoysSpec = _CLASS_ENVOYS,
        scheduler: str | Scheduler | None = None,
    ) -> None:
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"NNsight wraps a torch.nn.Module, got {type(module).__name__}.")
        # Only an omitted keyword falls back to the class's default (nnsight 0.8.1
        # has no class default: what is passed is all there is).
        spec = type(self).envoys if envoys is _CLASS_ENVOYS else envoys
        self._envoy_rule = _EnvoyRule(spec)
        self._interleaver: Interleaver | None = None
        self._point_order: PointOrder | None = None
        self._paths_by_id: dict[int, str] | None = None
        self._lock_of_module: tuple[torch.nn.Module, ModelLock] | None = None
        # Per traced call site (its compiled body's code): the forward wrappers its
        # runs wore, lent again before the next run starts (see _interleave). The
        # wrappers refer to their Envoys weakly: no cycle through the root's own.
        self._warm: weakref.WeakKeyDictionary[Any, WarmWrappers] = weakref.WeakKeyDictionary()
        self._scheduler_choice = scheduler
        self._edits: list[EditTracer] = []
        self._original: NNsight | None = None  # what an edited copy was made from
        self._rename: dict[str, list[str]] = {
            key: [value] if isinstance(value, str) else list(value)
            for key, value in (rename or {}).items()
        }
        # The same, by where the aliases go: a child name (anywhere) or a path from
        # the root (mounted on the root); string keys of envoys= match either.
        self._renamed: tuple[dict[str, list[str]], dict[str, list[str]]] = ({}, {})
        for key, aliases in self._rename.items():
            key = key.strip(".")
            self._renamed["." in key].setdefault(key, []).extend(aliases)
        super().__init__(module, path="model", root=self)
        self._apply_rename()

    # ------------------------------------------------------------ tree set-up

    def _envoy_type_for(self, module: torch.nn.Module, path: str) -> type[Envoy]:
        """The Envoy class for ``module`` at ``path`` (see ``envoys`` above)."""
        rule = self._envoy_rule
        found = rule.single
        if found is None:
            found = rule.by_type(module)
        if found is None and rule.suffixes:
            found = rule.by_path(self._spellings(path))
        if found is None:
            return Envoy
        if not (isinstance(found, type) and issubclass(found, Envoy)):
            raise TypeError(
                f"envoys= gives {found!r} for {path}, which is not an Envoy subclass: "
                "map modules to subclasses of endoscope's Envoy."
            )
        return found

    def _spellings(self, path: str) -> list[str]:
        """``path`` and its spelling under every combination of ``rename`` aliases
        (of the module itself and of its ancestors), the native one first."""
        names, mounted = self._renamed
        head, dot, name = path.rpartition(".")
        if not (names or mounted) or not dot:
            return [path]
        found = dict.fromkeys(
            f"{prefix}.{spelling}"
            for prefix in self._spellings(head)
            for spelling in (name, *names.get(name, ()))
        )
        if mounted:
            root = self.path
            relative = path.removeprefix(root + ".")
            for key in (relative, path):
                found.update(dict.fromkeys(f"{root}.{alias}" for alias in mounted.get(key, ())))
        return list(found)

    def _apply_rename(self) -> None:
        for key, aliases in self._rename.items():
            if "." in key.strip("."):
                target = self.get(key.strip("."))
                for alias in aliases:
                    self._aliases[alias] = target
                continue
            for _, envoy in self.named_modules():
                child = envoy._children.get(key.strip("."))
                if child is not None:
                    for alias in aliases:
                        envoy._aliases[alias] = child

    def _path_of_module(self, module_id: int) -> str | None:
        """The path of the wrapped module with ``id(module) == module_id``."""
        paths = self._paths_by_id
        if paths is None:
            paths = self._paths_by_id = {
                id(envoy._module): path for path, envoy in self.named_modules()
            }
        return paths.get(module_id)

    def _alias_notes(self) -> list[str]:
        return [
            f"{key} is also reachable as {', '.join(aliases)}"
            for key, aliases in self._rename.items()
        ]

    def _make_scheduler(self) -> Scheduler:
        choice = self._scheduler_choice if self._scheduler_choice is not None else CONFIG.scheduler
        if isinstance(choice, str):
            scheduler = _SCHEDULERS.get(choice)
            if scheduler is None:
                if choice not in _SCHEDULER_CLASSES:
                    raise ValueError(f"unknown scheduler {choice!r}: use 'greenlet' or 'thread'")
                # Stateless (their workers hold the state): one of each serves every trace.
                scheduler = _SCHEDULERS[choice] = _SCHEDULER_CLASSES[choice]()
            return scheduler
        return choice

    # ------------------------------------------------------------------ traces

    @overload
    def trace(
        self, *inputs: Any, trace: Literal[True] = True, **kwargs: Any
    ) -> InterleavingTracer: ...

    @overload
    def trace(self, *inputs: Any, trace: Literal[False], **kwargs: Any) -> Any: ...

    def trace(self, *inputs: Any, trace: bool = True, **kwargs: Any) -> Any:
        """Open a trace: ``with model.trace(x):`` or ``with model.trace() as t: ...``.

        Args:
            *inputs: the model's input (none when the block opens invokes).
            trace: ``False`` runs the model on ``inputs`` at once and returns its
                output, with no block (the model's edits still apply).
            **kwargs: keyword inputs; nnsight's ``remote=False`` and ``blocking``
                are accepted and mean nothing here; ``remote="local"`` serializes
                the block as a remote run would (a value that cannot travel is a
                :class:`RemoteSerializationError`, a ``TypeError``), then runs it here.

        Raises:
            NotImplementedError: ``remote=True`` (models run in this process).
        """
        backend = self._local_only(kwargs, "trace") if kwargs else None
        tracer = InterleavingTracer(self, *inputs, **kwargs)
        if backend is not None:
            tracer.backend = backend
        return tracer if trace else tracer.run_untraced()

    def _local_only(self, kwargs: dict[str, Any], method: str) -> LocalRemoteBackend | None:
        """Take nnsight's remote-execution options out of ``kwargs``: the backend of
        ``remote="local"``, ``None`` for a local run, an error for a remote one."""
        remote = kwargs.pop("remote", False)
        for option in ("blocking", "job_id", "verbose"):
            kwargs.pop(option, None)
        return remote_backend(self, remote, method)

    def scan(self, *inputs: Any, **kwargs: Any) -> InterleavingTracer:
        """A trace on fake tensors: shapes and dtypes without computing anything.

        Reads give fake tensors (``.shape``, ``.dtype`` work, values do not);
        writes are checked (a shape mismatch raises at the user's line).
        ``tracer.shapes`` maps every module path to its inputs' and output's
        :class:`TensorSpec` structure after the block.
        """
        backend = self._local_only(kwargs, "scan")
        from ._scan import ScanTracer

        tracer = ScanTracer(self, *inputs, **kwargs)
        if backend is not None:
            tracer.backend = backend
        return tracer

    def session(
        self,
        *,
        remote: Any = False,
        blocking: bool = True,
        job_id: str | None = None,
        verbose: bool = False,
    ) -> Session:
        """Several traces in one block: ``with model.session(): ...``.

        Values of earlier traces are usable in later ones; saved values remain
        after the session.

        Args:
            remote: ``"local"`` serializes the whole block as a remote run would,
                then runs it here (see :meth:`trace`); ``True`` is an error.
            blocking: nnsight's option, accepted and meaning nothing here (as
                are ``job_id`` and ``verbose``).
        """
        backend = self._local_only({"remote": remote}, "session")
        return Session(self, backend=backend)

    def edit(self, *, inplace: bool = False) -> EditTracer:
        """Interventions for every later trace: ``with model.edit() as (_, edited):``.

        The body is captured, not run; it runs in every later trace of the edited
        copy (``as (tracer, edited)``) or, with ``inplace=True``, of this model
        (``as tracer``), ahead of the trace's own code.

        Args:
            inplace: edit this model instead of returning an edited copy (the
                copy shares this model's modules and Envoy tree).
        """
        return EditTracer(self, inplace=inplace)

    def clear_edits(self) -> None:
        """Remove every edit of this model (an edited copy keeps its own)."""
        self._edits.clear()

    def _modules_replaced(self) -> None:
        """Forget what was learned about the modules after the Envoys were pointed at
        other ones (a model whose weights loaded): their order of points, paths by
        module id and every call site's warm-up wrappers."""
        self._point_order = None
        self._paths_by_id = None
        self._lock_of_module = None
        self._warm.clear()  # in place: an edited copy shares it

    def _edited_copy(self) -> NNsight:
        edited = copy.copy(self)
        edited._edits = list(self._edits)
        edited._lookups = set(self._lookups)  # its children found so far, its own from now
        # The shared Envoy tree's up-links are weak references to this model.
        edited._original = self
        return edited

    def _missed_hint(self, requester: str, tracer: Any) -> str | None:
        """What to tell a user whose ``requester`` the run never provided, when this
        model knows better than the generic advice (``None``: the generic advice).

        An extension point: LanguageModel names ``generate`` for its generator.
        """
        return None

    def _out_of_order_hint(self, requester: str, tracer: Any) -> str | None:
        """What to add to the generic advice when ``requester`` was asked for after
        the run went past it (``None``: nothing). An extension point: LanguageModel
        says when its streamer streams."""
        return None

    def _prepare_inputs(self, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Normalise one invoke's inputs to ``(args, kwargs)`` for the model."""
        return args, kwargs

    def _prepare_invokes(
        self, invokes: Sequence[tuple[tuple[Any, ...], dict[str, Any]]]
    ) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        """Normalise every invoke's ``(args, kwargs)`` of one trace, in order.

        Each through :meth:`_prepare_inputs` by default; an extension point for
        work better done once per trace (LanguageModel tokenizes every invoke's
        text in one call).
        """
        return [self._prepare_inputs(*args, **kwargs) for args, kwargs in invokes]

    def _batch_inputs(
        self, inputs: Sequence[tuple[tuple[Any, ...], dict[str, Any]]]
    ) -> tuple[tuple[Any, ...], dict[str, Any], list[Any], int]:
        """Combine invokes' inputs into one batch; see :func:`batch_inputs`."""
        return batch_inputs(inputs)

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        """Run the model on the batched inputs (subclasses run generate etc.)."""
        return self._module(*args, **kwargs)

    def _interleave(
        self, tracer: InterleavingTracer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        # One trace at a time per module tree (see _locking): taken once per run,
        # before the first wrapper is lent; a trace of this tree inside this one's
        # code holds it already.
        taken = hold(self._trace_lock())
        try:
            return self._interleave_held(tracer, args, kwargs)
        finally:
            release(taken)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the lock this model's traces take (see :mod:`._locking`) for the
        block: for changes to the modules that no trace may see half done (the
        meta-package's loading of weights). Re-entrant in this context."""
        taken = hold(self._trace_lock())
        try:
            yield
        finally:
            release(taken)

    def _trace_lock(self) -> ModelLock:
        """The lock of the module tree this model traces (found once per module)."""
        module = self._module
        known = self._lock_of_module
        if known is None or known[0] is not module:
            known = self._lock_of_module = (module, lock_of(module))
        return known[1]

    def _interleave_held(
        self, tracer: InterleavingTracer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        interleaver = tracer.interleaver
        # An edited copy shares the original's Envoy tree, whose envoys find the
        # running interleaver on the tree's root.
        root = self._root
        previous, root._interleaver = root._interleaver, interleaver
        output = None
        learn = self._point_order is None
        run = getattr(self, tracer.run_method)
        if tracer.run_kwargs:
            kwargs = {**kwargs, **tracer.run_kwargs}
        # Before the interleaver starts the workers: they run in copies of this context.
        running = running_models.set((*running_models.get(), self))
        site = tracer._site
        warm = self._warm.get(site) if site is not None else None
        try:
            if warm:
                # What this call site read last time is wrapped before the forward
                # starts: its reads then find their wrapper in place, and no read
                # hooks a module late (which would have to number its calls).
                try:
                    warm.lend(interleaver)
                except BaseException:
                    interleaver.cancel()
                    raise
            with backward_in_traces(), interleaver:
                if learn:
                    with recording_point_order(self, interleaver):
                        output = run(*args, **kwargs)
                elif tracer.run_method != "_run":
                    with counting_forwards(interleaver, self._module):
                        output = run(*args, **kwargs)
                else:
                    output = run(*args, **kwargs)
                # Unbounded loops end with the run, before its result is served.
                interleaver.end_unbounded_loops()
                output = tracer._provide_result(output)
                if site is not None and interleaver.lent_late:
                    self._remember_lent(site, warm, interleaver)
        except BaseException as error:
            if drop_computation_frames(error):
                raise error  # with its new traceback
            raise
        finally:
            interleaver.lent_late.clear()
            running_models.reset(running)
            root._interleaver = previous
        return output

    def _remember_lent(
        self, site: Any, warm: WarmWrappers | None, interleaver: Interleaver
    ) -> None:
        """Add the wrappers this run wore to ``site``'s :class:`WarmWrappers`."""
        lent = lent_wrappers(interleaver)
        if not lent:
            return
        if warm is None:
            warm = self._warm[site] = WarmWrappers()
        for wrapper in lent:
            warm.add(wrapper)


class _EnvoyRule:
    """An ``envoys=`` value, sorted for lookups: a single class, the type keys,
    and the string keys split into their dotted parts."""

    def __init__(self, spec: Any) -> None:
        self.single: type[Envoy] | None = None
        self.types: dict[type, type[Envoy]] = {}
        self.suffixes: list[tuple[list[str], type[Envoy]]] = []
        if spec is None:
            return
        if isinstance(spec, type):
            self.single = spec
            return
        if not isinstance(spec, Mapping):
            raise TypeError(
                f"envoys= takes an Envoy subclass or a mapping of module types and path "
                f"suffixes to Envoy subclasses, got {type(spec).__name__}."
            )
        for key, envoy_type in spec.items():
            if isinstance(key, type):
                self.types[key] = envoy_type
            elif isinstance(key, str):
                self.suffixes.append((key.removeprefix(".").split("."), envoy_type))

    def by_type(self, module: torch.nn.Module) -> type[Envoy] | None:
        types = self.types
        if types:
            for cls in type(module).__mro__:
                found = types.get(cls)
                if found is not None:
                    return found
        return None

    def by_path(self, spellings: list[str]) -> type[Envoy] | None:
        """The first string key (in the mapping's order) that ends the first of
        ``spellings`` any key ends."""
        for spelling in spellings:
            parts = spelling.split(".")
            for key, envoy_type in self.suffixes:
                size = len(key)
                if size <= len(parts) and all(
                    want in ("*", part) for want, part in zip(key, parts[-size:])
                ):
                    return envoy_type
        return None
