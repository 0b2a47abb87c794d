"""What can be wrong with a cache directory: interrupted, lost values, damaged shards."""

from __future__ import annotations

__all__ = [
    "CorruptCacheError",
    "IncompleteCacheError",
    "IncompleteCacheWarning",
    "LostValueError",
    "describe_error",
]

# A manifest keeps the error that ended a writing run; a long message is cut.
_ERROR_TEXT_LIMIT = 300


def describe_error(error: BaseException) -> str:
    """``"ValueError: first line of the message"``, at most a few hundred characters."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= _ERROR_TEXT_LIMIT else text[: _ERROR_TEXT_LIMIT - 3] + "..."


class IncompleteCacheError(ValueError):
    """A cache directory whose writer never finished (killed, crashed, still running,
    or closed after an error stopped the run writing it).

    Raised by :func:`endoscope_cache.load`; the message names what is complete and
    what was lost. ``load(directory, allow_incomplete=True)`` opens the complete part.

    Attributes:
        directory: the cache directory.
    """

    def __init__(self, message: str, directory: str) -> None:
        super().__init__(message)
        self.directory = directory


class IncompleteCacheWarning(UserWarning):
    """Issued when ``load(..., allow_incomplete=True)`` opens an incomplete cache."""


class LostValueError(LookupError):
    """A value the writer of an incomplete cache had started but never wrote to a shard."""


class CorruptCacheError(ValueError):
    """A shard (or the manifest) is truncated or its bytes differ from what was written.

    Attributes:
        path: the damaged file.
    """

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path
