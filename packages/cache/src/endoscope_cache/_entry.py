"""One module call's cached values (``Entry``) and several calls of one module (``EntryList``)."""

from __future__ import annotations

import abc
from typing import Any, SupportsIndex, overload

from ._nested import describe

__all__ = ["Deferred", "Entry", "EntryList"]

# The two things a module call can leave in the cache.
KINDS = ("output", "inputs")

_OUTPUT = 1
_INPUTS = 2
_FLAG = {"output": _OUTPUT, "inputs": _INPUTS}
# A kind the cache was told not to keep: reading it gives None (as nnsight's cache).
_OUTPUT_OFF = 4
_INPUTS_OFF = 8
_OFF = {"output": _OUTPUT_OFF, "inputs": _INPUTS_OFF}


def switched_off(include_output: bool, include_inputs: bool) -> int:
    """The flags of the kinds a cache with these options does not keep."""
    return (0 if include_output else _OUTPUT_OFF) | (0 if include_inputs else _INPUTS_OFF)


def off_kinds(off: int) -> list[str]:
    """The names of the kinds ``off`` switches off (for a manifest)."""
    return [kind for kind in KINDS if off & _OFF[kind]]


def off_flags(kinds: list[str]) -> int:
    """``off_kinds``' inverse."""
    return sum(_OFF[kind] for kind in set(kinds) if kind in _OFF)


_HINT = {
    "output": (
        "the module did not finish this call (an error or tracer.stop() ended the run "
        "before it returned), or outputs were not recorded (include_output=True "
        "records them)"
    ),
    "inputs": (
        "they were not recorded (include_inputs=True records them; a cache made while "
        "the module was already running misses that call's inputs)"
    ),
}


class Deferred(abc.ABC):
    """A cached value that lives elsewhere (on disk) and is materialised on each read."""

    __slots__ = ()

    @abc.abstractmethod
    def load(self) -> Any:
        """Read the value back, tensors included."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Summarise the value (dtypes and shapes) without reading any tensor."""


class Entry:
    """What one call of one module left in the cache.

    ``output`` is the module's return value; ``inputs`` is ``(args, kwargs)`` as the
    module received them; ``input`` is the first argument. Values streamed to disk are
    read back on every access, so two reads give equal but distinct tensors.

    Args:
        output: the module's return value, if it was cached.
        inputs: ``(args, kwargs)`` of the call, if they were cached.
        iteration: which call of the module this is (``i<n>`` in the provider string).

    Reading a kind the cache was told not to keep (``include_output=False``,
    ``include_inputs=False``) gives ``None``, as nnsight's cache does.

    Raises:
        AttributeError: reading ``output`` or ``inputs`` when the cache keeps that
            kind but this call left none (the module never finished its call).
    """

    __slots__ = ("_flags", "_inputs", "_output", "iteration")

    def __init__(
        self, output: Any = None, inputs: Any = None, iteration: int | None = None
    ) -> None:
        self._output = output
        self._inputs = inputs
        self._flags = (_OUTPUT if output is not None else 0) | (
            _INPUTS if inputs is not None else 0
        )
        self.iteration = iteration

    @classmethod
    def _empty(cls, iteration: int | None, off: int = 0) -> Entry:
        entry = cls.__new__(cls)  # skips __init__'s argument checks: add() is hot
        entry._output = entry._inputs = None
        entry._flags = off  # the kinds the cache does not keep (see switched_off)
        entry.iteration = iteration
        return entry

    def _has(self, kind: str) -> bool:
        return bool(self._flags & _FLAG[kind])

    def _set(self, kind: str, value: Any) -> None:
        # Flags, not ``is None``: a module may really return None.
        if kind == "output":
            self._output = value
        else:
            self._inputs = value
        self._flags |= _FLAG[kind]

    def _raw(self, kind: str) -> Any:
        return self._output if kind == "output" else self._inputs

    def _read(self, kind: str) -> Any:
        if not self._flags & _FLAG[kind]:
            if self._flags & _OFF[kind]:
                return None
            which = "" if self.iteration is None else f" (iteration {self.iteration})"
            raise AttributeError(f"this entry{which} holds no {kind}: {_HINT[kind]}")
        value = self._raw(kind)
        return value.load() if isinstance(value, Deferred) else value

    @property
    def output(self) -> Any:
        """The module's return value (``None`` if the cache does not keep outputs)."""
        return self._read("output")

    @output.setter
    def output(self, value: Any) -> None:
        self._set("output", value)

    @property
    def inputs(self) -> Any:
        """``(args, kwargs)`` the module was called with (``None`` if the cache does
        not keep inputs)."""
        return self._read("inputs")

    @inputs.setter
    def inputs(self, value: Any) -> None:
        self._set("inputs", value)

    @property
    def input(self) -> Any:
        """The first argument: the first positional one, else the first keyword one.

        ``None`` when the module was called without arguments, or when the cache
        does not keep inputs.
        """
        inputs = self.inputs
        if inputs is None:
            return None
        args, kwargs = inputs
        if args:
            return args[0]
        for value in kwargs.values():
            return value
        return None

    def describe(self) -> str:
        """Dtypes and shapes of what this entry holds, without reading from disk."""
        parts = []
        for kind in KINDS:
            if self._has(kind):
                value = self._raw(kind)
                text = value.describe() if isinstance(value, Deferred) else describe(value)
                parts.append(f"{kind}={text}")
        return " ".join(parts) if parts else "(empty)"

    def __repr__(self) -> str:
        prefix = "" if self.iteration is None else f"i{self.iteration} "
        return f"Entry({prefix}{self.describe()})"


class EntryList(list[Entry]):
    """The entries of a module that ran several times, one per call, in call order.

    ``output``, ``inputs`` and ``input`` return one value per call.
    """

    # Appended to an out-of-range message: set on the lists of an incomplete cache.
    _note = ""

    @overload
    def __getitem__(self, index: SupportsIndex) -> Entry: ...

    @overload
    def __getitem__(self, index: slice) -> list[Entry]: ...

    def __getitem__(self, index: Any) -> Any:
        try:
            return list.__getitem__(self, index)
        except IndexError:
            count = len(self)
            raise IndexError(
                f"call {index} is out of range: this module has {count} cached call"
                f"{'' if count == 1 else 's'} (0-{count - 1}, or -{count} to -1).{self._note}"
            ) from None

    @property
    def output(self) -> list[Any]:
        """Each call's return value."""
        return [entry.output for entry in self]

    @property
    def inputs(self) -> list[Any]:
        """Each call's ``(args, kwargs)``."""
        return [entry.inputs for entry in self]

    @property
    def input(self) -> list[Any]:
        """Each call's first argument."""
        return [entry.input for entry in self]

    def __repr__(self) -> str:
        return f"EntryList({list.__repr__(self)})"
