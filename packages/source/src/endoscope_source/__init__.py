"""Call-site hooks inside any Python function through an AST rewrite."""

from ._version import __version__

__all__ = ["__version__"]
