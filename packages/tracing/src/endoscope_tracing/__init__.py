"""With-block capture: find, parse, compile and run the body of a `with` block later, with the caller's locals."""

from ._version import __version__

__all__ = ["__version__"]
