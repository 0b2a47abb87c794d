"""One trace at a time per module tree, from any number of threads.

A trace changes its modules while it runs: their instance ``forward`` is a
wrapper lent to the trace, and its hooks sit in the modules' hook dicts. Two
traces of one module at once (two threads, one ``NNsight`` or two wrappers of
the same module) would serve each other's values, so every trace holds its
modules' :class:`ModelLock` from the moment its run starts until it ends. The
lock belongs to the modules, not to the wrapper: every module maps to one lock
(:func:`lock_of`), and two trees that share a module (``NNsight(net)`` and
``NNsight(net.layer)``, or one module in two models) share one lock. Trees
with no module in common never wait for each other.

Ownership follows the trace, not the thread: a hold is recorded in a
:mod:`contextvars` variable, and interventions run in a copy of the context of
the trace that started them (on a greenlet or a worker thread), so a trace
opened inside another trace's block goes through at once, whichever scheduler
runs the block. A stale copy of a context (kept by a task that outlives the
trace) holds nothing: each hold is a fresh object, and the lock forgets it on
release.

Waiting for a lock while holding another (a trace of one model inside a trace
of another) could close a cycle with another thread doing the reverse; that
is detected when the last edge would be added and raised as
:class:`TraceDeadlockError` instead of hanging.
"""

from __future__ import annotations

import contextvars
import threading
import weakref
from typing import Any

import torch

__all__ = ["ModelLock", "TraceDeadlockError", "hold", "lock_of", "release"]


class TraceDeadlockError(RuntimeError):
    """Waiting for a model's lock would never end (each waiter holds what the
    other needs)."""


class _Hold:
    """One outermost hold of a lock: whoever has it in their context owns it."""

    __slots__ = ()


#: Holds of the traces running in this context, innermost last.
_HELD: contextvars.ContextVar[tuple[_Hold, ...]] = contextvars.ContextVar(
    "endoscope_model_locks", default=()
)

# Every lock's owner, merges and the waits-for graph change under this one
# mutex: held only for a few statements, never while a trace runs. Waiters wait
# on the condition over it (counted, so a release with nobody waiting skips it).
_MUTEX = threading.Lock()
_STATE = threading.Condition(_MUTEX)
_waiters = 0
#: Per hold of a waiting context, the lock it waits for and all its holds.
_WAITING: dict[_Hold, tuple[ModelLock, tuple[_Hold, ...]]] = {}
#: Per module, its lock (a merged one leads to the lock it was merged into).
_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, ModelLock] = weakref.WeakKeyDictionary()


class ModelLock:
    """The lock the traces of one module tree take turns on.

    Attributes:
        owner: the hold of the trace running now, else ``None``.
    """

    __slots__ = ("_into", "_members", "owner")

    def __init__(self) -> None:
        self.owner: _Hold | None = None
        # Set when another tree came to share modules with this one.
        self._into: ModelLock | None = None
        self._members: list[ModelLock] = [self]

    def _root(self) -> ModelLock:
        lock = self
        while lock._into is not None:
            lock = lock._into
        return lock

    def _owners(self, allowed: tuple[_Hold, ...]) -> list[_Hold]:
        """The holds that keep a context holding ``allowed`` waiting (root only)."""
        return [m.owner for m in self._members if m.owner is not None and m.owner not in allowed]

    def __repr__(self) -> str:
        state = "held" if self._root().owner is not None else "free"
        return f"<ModelLock {state}>"


def lock_of(module: torch.nn.Module) -> ModelLock:
    """The lock of ``module``'s tree, shared with every tree it has a module in common with.

    Walks the tree the first time a module is seen (once per model, not per trace).
    """
    lock = _LOCKS.get(module)
    if lock is not None:
        with _MUTEX:
            return lock._root()
    modules = list(module.modules())
    with _MUTEX:
        roots: list[ModelLock] = []
        for each in modules:
            found = _LOCKS.get(each)
            if found is not None:
                root = found._root()
                if root not in roots:
                    roots.append(root)
        if not roots:
            roots.append(ModelLock())
        lock = roots[0]
        for other in roots[1:]:
            # A tree spanning trees that had their own locks: one lock for all,
            # free only when every member is (their traces may still run).
            other._into = lock
            lock._members.extend(other._members)
            other._members = []
        for each in modules:
            _LOCKS[each] = lock
        if len(roots) > 1:
            _STATE.notify_all()  # waiters on a merged lock wait on the union now
        return lock


def hold(lock: ModelLock) -> tuple[ModelLock, _Hold, contextvars.Token[Any]] | None:
    """Wait until ``lock`` is free (or held by this context) and take it.

    Returns:
        What :func:`release` needs, or ``None`` when this context holds it
        already (a trace inside a trace of the same tree): nothing to release.

    Raises:
        TraceDeadlockError: the lock's owner waits, directly or through others,
            for a lock this context holds.
    """
    global _waiters
    held = _HELD.get()
    with _MUTEX:
        root = lock._root()
        if held and root.owner in held:
            return None
        # The common case, a free lock of one tree, skips the loop at once.
        while root.owner is not None or len(root._members) > 1:
            owners = root._owners(held)
            if not owners:
                break
            if held:
                # Holding something, this context may close a cycle.
                _check_cycle(owners, held)
                for mine in held:
                    _WAITING[mine] = (root, held)
            _waiters += 1
            try:
                _STATE.wait()
            finally:
                _waiters -= 1
                for mine in held:
                    _WAITING.pop(mine, None)
            root = root._root()  # merged while waiting: wait for the union
        mine = _Hold()
        root.owner = mine
    return root, mine, _HELD.set((*held, mine))


def release(taken: tuple[ModelLock, _Hold, contextvars.Token[Any]] | None) -> None:
    """Give back what :func:`hold` took (nothing for ``None``); call it in the same
    context as :func:`hold`."""
    if taken is None:
        return
    lock, mine, token = taken
    _HELD.reset(token)
    with _MUTEX:
        if lock.owner is mine:
            lock.owner = None
        if _waiters:
            _STATE.notify_all()


def _check_cycle(owners: list[_Hold], held: tuple[_Hold, ...]) -> None:
    """Raise if an owner in ``owners`` waits, through any chain, for one of ``held``."""
    seen: set[int] = set()
    pending = list(owners)
    while pending:
        owner = pending.pop()
        if owner in held:
            raise TraceDeadlockError(
                "this trace waits for a model that another thread is tracing, and that "
                "thread's trace waits for a model this trace's thread holds: waiting would "
                "never end. Open nested traces of several models in the same order in "
                "every thread, or trace them one after the other."
            )
        if id(owner) in seen:
            continue
        seen.add(id(owner))
        waits = _WAITING.get(owner)
        if waits is not None:
            lock, theirs = waits
            pending.extend(lock._root()._owners(theirs))  # merged meanwhile: the union
