"""Activation caching for PyTorch models, in memory or streamed to disk."""

from ._version import __version__

__all__ = ["__version__"]
