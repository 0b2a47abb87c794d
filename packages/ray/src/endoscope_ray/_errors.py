"""The errors a run over a dataset raises."""

from __future__ import annotations

__all__ = ["BatchError", "FactoryError", "RunMismatchError", "StepOutputError"]


class BatchError(RuntimeError):
    """The step raised on one batch; the run stopped (``on_error="raise"``).

    Attributes:
        start: first dataset row of the batch.
        stop: one past its last row.
    """

    def __init__(self, message: str, start: int, stop: int) -> None:
        super().__init__(message)
        self.start = start
        self.stop = stop

    def __reduce__(self) -> tuple[type[BatchError], tuple[str, int, int]]:
        return type(self), (str(self), self.start, self.stop)


class FactoryError(RuntimeError):
    """The model factory failed in a replica; nothing was run or written."""


class StepOutputError(ValueError):
    """The step returned something that cannot be stored (not tensors, wrong shape)."""


class RunMismatchError(ValueError):
    """``out`` holds the data of a different run (other step, options or dataset)."""
