"""Run intervention code beside a running computation: mediators, events, eproperty and swappable schedulers."""

from ._version import __version__

__all__ = ["__version__"]
