"""The messages a worker sends to the model side, and the model side's special replies."""

from __future__ import annotations

from enum import Enum

__all__ = ["Events", "Signal"]


class Events(Enum):
    """What a mediator's worker asks of the model side when it switches back.

    Each event travels as ``(event, payload)``:

    ========== ============================== ==========================================
    event      payload                        the model side
    ========== ============================== ==========================================
    VALUE      requester                      replies with the value once it is provided
    SWAP       ``(requester, value)``         replaces the provided value, replies None
    SKIP       ``(requester, value)``         marks the provider skipped, replies None
    BARRIER    a :class:`Barrier`             replies None once every participant arrived
    WAIT       a :class:`Gate`                replies None once the gate is ready
    END        ``None``                       the intervention returned; worker is done
    EXCEPTION  the exception                  re-raises it where the model is
    ========== ============================== ==========================================
    """

    VALUE = "value"
    SWAP = "swap"
    SKIP = "skip"
    BARRIER = "barrier"
    WAIT = "wait"
    END = "end"
    EXCEPTION = "exception"


class Signal:
    """A reply that makes the worker raise instead of returning a value.

    The worker checks ``type(reply) is Signal`` once per reply, so ordinary values
    cost a single identity test.
    """

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"Signal({self.error!r})"
