"""``lm.generator``: the generated ids, and every token as it is decoded.

``generate`` produces values no module of the model returns: the finished ids
and, step by step, the tokens transformers hands to a streamer. A
:class:`LanguageModel` passes both through modules of its own, outside the
model, so they are read and written like any module value:

* ``lm.generator.output``: ``generate``'s return value (deprecated, as in nnsight
  0.8.1: ``tracer.result`` is the same value);
* ``lm.generator.streamer.output``: what transformers streams, one call per
  ``put``: call 0 is the prompt's ids ``(batch, prompt_length)``, call ``n`` the
  tokens chosen at generation step ``n - 1``, shape ``(batch,)``. Read them in
  ``tracer.iter[...]`` or with ``.next()`` like any module called many times.

The streamer is given to ``generate`` unless it runs beam search (which
transformers refuses a streamer for); a streamer the user passes still gets
every call, after this one.
"""

from __future__ import annotations

import warnings
from typing import Any

from endoscope_envoy import Envoy

from ._wrapper_module import WrapperModule

__all__ = ["GENERATOR_NAME", "Generator", "GeneratorEnvoy", "beams", "streamer_for"]

#: Where the generator hangs in a LanguageModel's Envoy tree (``lm.generator``).
GENERATOR_NAME = "generator"

_DEPRECATED = (
    "lm.generator.output is deprecated: read tracer.result (the same ids); "
    "lm.generator.streamer.output still gives the tokens of each step."
)


class Streamer(WrapperModule):
    """Receives what ``generate`` streams (``put``) and passes it through itself."""

    def put(self, value: Any) -> None:
        """Called by transformers with the prompt's ids, then each step's tokens."""
        self(value)

    def end(self) -> None:
        """Called by transformers when generation ends."""


class Generator(WrapperModule):
    """Passes ``generate``'s return value through; its ``streamer`` gets each step's."""

    def __init__(self) -> None:
        super().__init__()
        self.streamer = Streamer()


class GeneratorEnvoy(Envoy):
    """The Envoy of :class:`Generator`: its ``.output`` still works, with a warning."""

    @property
    def output(self) -> Any:
        """Deprecated: ``generate``'s return value; read ``tracer.result`` instead."""
        warnings.warn(_DEPRECATED, DeprecationWarning, stacklevel=2)
        return Envoy.output.__get__(self, type(self))

    @output.setter
    def output(self, value: Any) -> None:
        warnings.warn(_DEPRECATED, DeprecationWarning, stacklevel=2)
        Envoy.output.__set__(self, value)


class _BothStreamers:
    """Streams to the generator's streamer, then to the user's own."""

    def __init__(self, ours: Streamer, theirs: Any) -> None:
        self.ours = ours
        self.theirs = theirs

    def put(self, value: Any) -> None:
        self.ours.put(value)
        self.theirs.put(value)

    def end(self) -> None:
        self.ours.end()
        self.theirs.end()


def streamer_for(generator: Generator, module: Any, options: dict[str, Any]) -> Any:
    """The ``streamer`` to give ``module.generate(**options)``: the generator's (and
    the user's, if any), or the user's alone under beam search."""
    theirs = options.get("streamer")
    if beams(module, options) != 1:
        return theirs  # transformers refuses a streamer with beam search
    if theirs is None:
        return generator.streamer
    return _BothStreamers(generator.streamer, theirs)


def beams(module: Any, options: dict[str, Any]) -> int:
    """How many beams ``module.generate(**options)`` searches with."""
    config = options.get("generation_config") or getattr(module, "generation_config", None)
    return options.get("num_beams") or getattr(config, "num_beams", None) or 1
