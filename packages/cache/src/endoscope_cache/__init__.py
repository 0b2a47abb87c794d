"""Activation caching for PyTorch models, in memory or streamed to disk.

``Cache`` collects the values hooks report (``cache.add(provider, value)``) into a
``CacheDict`` keyed by module path and navigable like the model
(``cache.cache.model.layers[0].output``). With ``directory=...`` values stream to
safetensors shards; ``load(directory)`` reopens them lazily in any process.
"""

from ._cache import Cache, parse_provider
from ._cachedict import CacheDict
from ._codec import OpaqueValue
from ._disk import dump, load
from ._entry import Entry, EntryList
from ._errors import (
    CorruptCacheError,
    IncompleteCacheError,
    IncompleteCacheWarning,
    LostValueError,
)
from ._version import __version__

__all__ = [
    "Cache",
    "CacheDict",
    "CorruptCacheError",
    "Entry",
    "EntryList",
    "IncompleteCacheError",
    "IncompleteCacheWarning",
    "LostValueError",
    "OpaqueValue",
    "__version__",
    "dump",
    "load",
    "parse_provider",
]
