"""The demo model shipped with endoscope: where it is, what it knows, how to load it.

The model is a 4-layer GPT-2 with a word-level tokenizer, trained by
``packages/endoscope/scripts/train_demo_model.py`` on a synthetic corpus of facts
(landmark to city, country to capital, city to country). Its files live inside
the package, so loading it needs no network.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._language_model import LanguageModel

__all__ = ["demo_facts", "demo_model", "demo_model_path", "load_demo_transformers"]


def demo_model_path() -> Path:
    """The directory holding the demo model's weights, config, tokenizer and facts.

    Returns:
        The path of the ``demo_model`` package data directory.

    Raises:
        FileNotFoundError: the package was installed without its data files.
    """
    path = Path(__file__).resolve().parent / "demo_model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the demo model is missing from {path}: reinstall endoscope, or retrain it with "
            "packages/endoscope/scripts/train_demo_model.py"
        )
    return path


def demo_facts() -> dict[str, list[dict[str, str]]]:
    """The facts the demo model was trained on, and prompt pairs for patching.

    Returns:
        A dict with ``"facts"``: a list of ``{"prompt", "answer", "kind"}`` (the
        answer is the greedy next token after the prompt), and
        ``"patching_pairs"``: a list of ``{"clean", "corrupt", "clean_answer",
        "corrupt_answer"}`` whose two prompts have the same number of tokens and
        differ only in their subject.
    """
    text = (demo_model_path() / "facts.json").read_text(encoding="utf-8")
    return json.loads(text)


def is_demo_model(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is the shipped demo model's directory."""
    try:
        return Path(path).resolve() == Path(__file__).resolve().parent / "demo_model"
    except (OSError, ValueError):
        return False


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide transformers' progress bars (``Loading weights``) while loading.

    The demo model loads in well under a second; a bar flashing past says nothing
    and litters a notebook's or the demo's output. The setting is restored after.
    """
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def demo_model(**kwargs: Any) -> LanguageModel:
    """Load the demo model as a :class:`LanguageModel`, offline, without progress bars.

    Its weights are loaded at once (``dispatch=True`` unless given): the model is
    small, and loading here keeps the first trace's output free of loading noise.

    Example:
        >>> import endoscope
        >>> lm = endoscope.demo_model()
        >>> with lm.trace("The capital of France is"):
        ...     logits = lm.lm_head.output.save()
        >>> lm.tokenizer.decode(logits[0, -1].argmax())
        'Paris'

    Args:
        **kwargs: passed to :class:`LanguageModel` (``dispatch``, ``rename``,
            ``scheduler``, ...).

    Returns:
        The demo model, wrapped.
    """
    from ._language_model import LanguageModel

    kwargs.setdefault("dispatch", True)
    with quiet_loading():
        return LanguageModel(str(demo_model_path()), **kwargs)


def load_demo_transformers() -> tuple[Any, Any]:
    """Load the demo model with plain transformers, without endoscope.

    Returns:
        ``(model, tokenizer)``: a ``GPT2LMHeadModel`` in eval mode and its fast
        tokenizer (which pads on the left).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = demo_model_path()
    with quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer
