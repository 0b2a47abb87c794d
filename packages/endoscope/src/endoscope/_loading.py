"""Loading transformers models: an empty (meta) model first, real weights later.

``LanguageModel("path")`` does not read weights: it reads the config and builds
the model inside accelerate's :func:`init_empty_weights`, so every parameter
and buffer lives on the ``meta`` device (no memory, no time) while the module
tree, and so the Envoy tree, is complete. :func:`load_pretrained` later loads
the real model with ``from_pretrained``, passing ``device_map``, offload and
dtype options straight through to transformers and accelerate.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

import torch
import transformers
from accelerate import init_empty_weights

__all__ = [
    "CONFIG_OPTIONS",
    "automodel_class",
    "automodel_for_task",
    "load_config",
    "load_pretrained",
    "load_tokenizer",
    "meta_model",
]

# from_pretrained options that also say where and how to read the config and
# tokenizer (the rest, such as device_map, only concern the weights).
CONFIG_OPTIONS = (
    "cache_dir",
    "force_download",
    "local_files_only",
    "proxies",
    "revision",
    "subfolder",
    "token",
    "trust_remote_code",
)

# Options of from_pretrained that from_config also understands.
_MODEL_OPTIONS = ("attn_implementation", "trust_remote_code")


def automodel_class(automodel: Any) -> Any:
    """The transformers auto class (or model class) to load with.

    Args:
        automodel: a class with ``from_pretrained``/``from_config``, or its name
            in ``transformers`` (``"AutoModelForSeq2SeqLM"``).
    """
    if isinstance(automodel, str):
        found = getattr(transformers, automodel, None)
        if found is None:
            raise ValueError(f"transformers has no class named {automodel!r}.")
        return found
    return automodel


# The end of an architecture's class name -> the auto class that loads it.
_ARCHITECTURE_SUFFIXES = (
    ("ForCausalLM", "AutoModelForCausalLM"),
    ("LMHeadModel", "AutoModelForCausalLM"),
    ("ForMaskedLM", "AutoModelForMaskedLM"),
    ("ForSequenceClassification", "AutoModelForSequenceClassification"),
    ("ForTokenClassification", "AutoModelForTokenClassification"),
    ("ForQuestionAnswering", "AutoModelForQuestionAnswering"),
    ("ForConditionalGeneration", "AutoModelForSeq2SeqLM"),
    ("ForImageClassification", "AutoModelForImageClassification"),
)


def automodel_for_task(task: str | None, config: Any) -> Any:
    """The auto class a ``task`` loads with, or (no task) the one ``config`` names.

    Args:
        task: a transformers pipeline task (``"text-generation"``, ``"fill-mask"``,
            an alias such as ``"sentiment-analysis"``), or ``None``.
        config: the checkpoint's config, read when there is no task: its
            ``architectures`` pick the class by their name's ending
            (``GPT2LMHeadModel`` -> ``AutoModelForCausalLM``); ``AutoModel``
            when nothing matches.

    Raises:
        ValueError: ``task`` is not a transformers pipeline task.
    """
    if task is not None:
        from transformers.pipelines import check_task

        try:
            _, targeted, _ = check_task(task)
        except KeyError as error:
            raise ValueError(f"unknown task {task!r}: {error.args[0]}") from None
        classes = targeted.get("pt") or ()
        if not classes:
            raise ValueError(f"the task {task!r} names no PyTorch model class in transformers.")
        return classes[0]
    for architecture in getattr(config, "architectures", None) or ():
        for suffix, name in _ARCHITECTURE_SUFFIXES:
            if architecture.endswith(suffix):
                return getattr(transformers, name)
    return transformers.AutoModel


def _picked(options: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: options[name] for name in names if name in options}


def load_config(repo_id_or_path: str | os.PathLike[str], options: Mapping[str, Any]) -> Any:
    """The model's config (``AutoConfig.from_pretrained``), read with the load options."""
    return transformers.AutoConfig.from_pretrained(
        repo_id_or_path, **_picked(options, CONFIG_OPTIONS)
    )


def meta_model(automodel: Any, config: Any, options: Mapping[str, Any]) -> torch.nn.Module:
    """The model built from ``config`` with every parameter and buffer on ``meta``.

    Args:
        automodel: the class that builds it (``from_config``).
        config: the model's config.
        options: the ``from_pretrained`` options; the ones ``from_config`` also
            takes (``dtype``, ``attn_implementation``, ``trust_remote_code``) are
            used so the empty model matches the one that will be loaded.
    """
    kwargs = _picked(options, _MODEL_OPTIONS)
    dtype = options.get("dtype")
    if dtype is not None and dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    with init_empty_weights(include_buffers=True):
        if hasattr(automodel, "from_config"):
            model = automodel.from_config(config, **kwargs)
        else:  # a concrete model class
            model = automodel._from_config(config, **kwargs)
    return model.eval()


def load_pretrained(
    automodel: Any, repo_id_or_path: str | os.PathLike[str], options: Mapping[str, Any]
) -> torch.nn.Module:
    """The model with its real weights (``from_pretrained(repo_id_or_path, **options)``).

    The shipped demo model loads without transformers' progress bar, also when its
    weights are read lazily at the first trace.
    """
    from ._demo import is_demo_model, quiet_loading

    with quiet_loading() if is_demo_model(repo_id_or_path) else contextlib.nullcontext():
        model = automodel.from_pretrained(repo_id_or_path, **options)
    return model.eval()


def load_tokenizer(
    repo_id_or_path: str | os.PathLike[str],
    options: Mapping[str, Any],
    tokenizer_kwargs: Mapping[str, Any],
) -> Any:
    """The tokenizer saved with the model, set to pad on the left.

    Args:
        repo_id_or_path: where the model (and its tokenizer) is.
        options: the model's load options (revision, token, ... are reused).
        tokenizer_kwargs: extra ``AutoTokenizer.from_pretrained`` arguments,
            which win over the above.
    """
    kwargs = {"padding_side": "left", **_picked(options, CONFIG_OPTIONS), **tokenizer_kwargs}
    return transformers.AutoTokenizer.from_pretrained(repo_id_or_path, **kwargs)
