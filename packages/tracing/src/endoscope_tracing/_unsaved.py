"""What a variable the block assigned without ``save()`` looks like after the block.

Python offers no hook to explain an unbound name: a module-level ``print(x)``
raises ``NameError`` straight from the interpreter, and a function's unbound local
raises ``UnboundLocalError``, neither with a word about ``.save()``. So a variable
the block created and did not save is bound, after the block, to an
:class:`UnsavedName` placeholder: every use of it (printing, formatting,
attributes, indexing, arithmetic, comparisons, truth, calls, iteration, hashing,
torch and numpy functions) raises a ``NameError`` that names the variable, the
line that assigned it and what to do. The placeholder holds only that text, not
the value.

What cannot raise, because Python does it without asking the object: ``x is
None``, ``type(x)``, ``id(x)``, ``isinstance(x, T)`` (``False``), ``del x``,
storing it in a container or passing it to code that never touches it, and
``"x" in dir()`` (``True``). Probes of special attributes (``hasattr(x,
"__len__")``) give ``AttributeError`` so tools that inspect namespaces keep
working.

A variable that already had a value before the block and was reassigned inside
it without ``save()`` keeps its old value (what a with block's code assigns is
otherwise dropped); :class:`UnsavedValueWarning` says so at the assignment.
"""

from __future__ import annotations

from typing import Any, NoReturn

__all__ = ["UnsavedName", "UnsavedValueWarning", "reassigned_message"]


class UnsavedValueWarning(UserWarning):
    """A variable that existed before a traced block was reassigned inside it
    without ``.save()``, so it keeps its old value after the block.

    The warning's filename and line are those of the assignment inside the block.
    Silence it with ``warnings.filterwarnings("ignore", category=UnsavedValueWarning)``.
    """


def reassigned_message(name: str) -> str:
    """The text of :class:`UnsavedValueWarning` for variable ``name``."""
    return (
        f"{name!r} was reassigned inside the traced block without .save(), so after "
        "the block it still holds the value it had before the block: call .save() on "
        f"it inside the block to keep the new value ({name} = ....save(), or save(...))."
    )


# Special attributes that keep their ordinary meaning: the class (so isinstance
# and tools that sort objects by type work), and the hooks below that raise.
_PASS_THROUGH = frozenset(
    {"__class__", "__torch_function__", "__array__", "__array_ufunc__", "__array_function__"}
)


class UnsavedName:
    """Bound to a variable the traced block assigned without ``save()``.

    Every use raises :class:`NameError` with :attr:`message`. Only endoscope
    creates these; ``isinstance(value, UnsavedName)`` tells one apart.

    Args:
        name: the variable.
        filename: the file of the assignment.
        line: the line of the assignment.
    """

    __slots__ = ("_message", "_name")

    def __init__(self, name: str, filename: str, line: int) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(
            self,
            "_message",
            f"name {name!r} was assigned inside the traced block ({filename}:{line}) "
            "but not saved, so it does not exist after the block: call .save() on it "
            f"inside the block ({name} = ....save(), or save(...)).",
        )

    # The raising frames never call the placeholder `self`: Python 3.12's traceback
    # printer tries hasattr(self, name) on a NameError's innermost frame's `self`,
    # which would raise again while the first error is being printed.
    def __getattribute__(placeholder, attribute: str) -> Any:
        __tracebackhide__ = True
        if attribute in _PASS_THROUGH:
            return object.__getattribute__(placeholder, attribute)
        message = object.__getattribute__(placeholder, "_message")
        if attribute.startswith("__") and attribute.endswith("__"):
            # A tool probing for a protocol (hasattr(x, "__wrapped__")), not the user.
            raise AttributeError(message)
        raise NameError(message, name=object.__getattribute__(placeholder, "_name"))

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: Any = (), kwargs: Any = None
    ) -> NoReturn:
        """torch calls this for any of its functions given a placeholder."""
        __tracebackhide__ = True
        for value in (*_items(args), *_items(kwargs)):
            if isinstance(value, UnsavedName):
                _raise(value)
        raise NameError(  # pragma: no cover - torch passes the placeholder itself
            "a variable a traced block assigned without .save() was used after the "
            "block: call .save() on it inside the block."
        )


def _items(values: Any) -> list[Any]:
    """``values`` (a tuple, list or dict of arguments) and what its lists hold."""
    if isinstance(values, dict):
        values = list(values.values())
    if not isinstance(values, (list, tuple)):
        return []
    found = []
    for value in values:
        found.append(value)
        if isinstance(value, (list, tuple)):
            found.extend(value)
    return found


def _raise(placeholder: UnsavedName, *args: Any, **kwargs: Any) -> NoReturn:
    __tracebackhide__ = True
    raise NameError(
        object.__getattribute__(placeholder, "_message"),
        name=object.__getattribute__(placeholder, "_name"),
    )


_BINARY = (
    "add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "pow",
    "lshift", "rshift", "and", "xor", "or",
)  # fmt: skip
_OTHER = (
    "divmod", "rdivmod", "eq", "ne", "lt", "le", "gt", "ge", "hash", "bool", "len",
    "iter", "reversed", "contains", "getitem", "setitem", "delitem", "call", "str",
    "repr", "format", "bytes", "index", "int", "float", "complex", "round", "trunc",
    "floor", "ceil", "neg", "pos", "abs", "invert", "enter", "exit", "aenter",
    "aexit", "await", "aiter", "anext", "setattr", "delattr", "dir", "reduce",
    "reduce_ex", "copy", "deepcopy", "array", "array_ufunc", "array_function",
)  # fmt: skip

# Python looks these up on the type, bypassing __getattribute__.
for _operation in (*_BINARY, *(f"r{op}" for op in _BINARY), *(f"i{op}" for op in _BINARY), *_OTHER):
    setattr(UnsavedName, f"__{_operation}__", _raise)
del _operation
