"""TransformersModel and LanguageModel: NNsight for transformers models.

On top of :class:`endoscope_envoy.NNsight` they add loading (an empty meta model
until weights are needed), a tokenizer, text and token inputs that several
invokes share as one left-padded batch, and ``generate``. ``TransformersModel``
takes any task (nnsight 0.8's class for any transformers model);
``LanguageModel`` is its text-generation form.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from transformers import AutoModelForCausalLM

from endoscope_envoy import (
    Envoy,
    InterleavingTracer,
    NNsight,
    ScanTracer,
    batch_inputs,
    opens_with,
    register_internal_module,
    serve_module,
)

from ._generator import GENERATOR_NAME, Generator, GeneratorEnvoy, beams, streamer_for
from ._inputs import encode_input, pad_invokes, prompts_of, split_input_kwargs, with_positions
from ._loading import (
    automodel_class,
    automodel_for_task,
    load_config,
    load_pretrained,
    load_tokenizer,
    meta_model,
)
from ._rebinding import rebind

__all__ = ["LanguageModel", "TransformersModel"]

# envoys= not given: the class attribute applies (a given None means plain Envoy).
_CLASS_ENVOYS: Any = object()

# The frames of LanguageModel and of the modules it runs during a trace are
# endoscope's own: hidden from tracebacks, never taken for the user's line. Not
# the whole package: _main_job opens traces as a user does.
for _module in (
    "_decorators",
    "_generator",
    "_inputs",
    "_language_model",
    "_loading",
    "_rebinding",
):
    register_internal_module(f"{__package__}.{_module}")

Inputs = tuple[tuple[Any, ...], dict[str, Any]]


def _tokenized(rows: Mapping[str, Any], prompts: list[str]) -> Mapping[str, Any]:
    """The tokenize step of an invoke whose text was tokenized with the others'."""
    return rows


class TransformersModel(NNsight):
    """A transformers model of any task, ready to trace (and generate, if it can).

    nnsight 0.8's ``TransformersModel``: the class is picked by ``task`` (or by
    the checkpoint's architecture when no task is given), and loading is as for
    :class:`LanguageModel`, its text-generation form.

    Example:
        >>> lm = TransformersModel("path/or/hub-id", task="text-generation")  # doctest: +SKIP
        >>> with lm.trace("The Eiffel Tower is in"):  # doctest: +SKIP
        ...     hidden = lm.transformer.h[0].output[0].save()
        ...     logits = lm.lm_head.output.save()
        >>> with lm.generate("Paris is", max_new_tokens=5) as tracer:  # doctest: +SKIP
        ...     tokens = tracer.result.save()

    Args:
        model: a hub id or local path to load, or a model object to wrap.
        tokenizer: the tokenizer (or a path to load it from). By default it is
            loaded from ``model`` when that is a path or id, or from the model's
            ``config.name_or_path`` when that is set. A tokenizer without a pad
            token gets its end-of-sequence token as one.
        task: a transformers pipeline task (``"text-generation"``,
            ``"fill-mask"``, ``"text-classification"``, ...) naming the auto
            class that loads ``model``. Without it (and without ``automodel``),
            the class follows the checkpoint's ``config.architectures``
            (``*ForCausalLM`` loads as ``AutoModelForCausalLM``, ...), else
            ``AutoModel``.
        automodel: the class that loads ``model`` (``from_config`` /
            ``from_pretrained``), or its name in ``transformers``; wins over
            ``task``.
        config: the model's config, if already at hand (else read from ``model``).
        dispatch: load the weights now. When ``False`` (the default) the model
            is built on the ``meta`` device, so its tree can be explored without
            reading weights; they load on the first trace or :meth:`dispatch`.
        device_map: where the weights go (``"auto"``, ``"cpu"``, a dict of module
            paths to devices, ``"disk"`` for offload), as in transformers.
        dtype: the weights' dtype (``torch.float16``, ``"bfloat16"``, ``"auto"``).
        torch_dtype: the older name of ``dtype``.
        rename: extra names for modules (see :class:`NNsight`).
        envoys: which Envoy class wraps each module (see :class:`NNsight`).
        scheduler: how interventions run (see :class:`NNsight`).
        tokenizer_kwargs: extra ``AutoTokenizer.from_pretrained`` arguments.
        processor: a processor object to keep as ``.processor`` (nnsight's
            option; endoscope's inputs are text and token ids).
        image_processor: kept as ``.image_processor``.
        feature_extractor: kept as ``.feature_extractor``.
        peft: not supported: load the adapter with ``peft`` yourself and wrap
            the resulting model object.
        **from_pretrained_kwargs: everything else goes to ``from_pretrained``
            (``offload_folder``, ``revision``, ``attn_implementation``, ...).

    Attributes:
        tokenizer: the tokenizer, or ``None`` when there is none.
        repo_id: where the model is loaded from (``None`` for a wrapped object).
        task: the task given, or ``None``.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | torch.nn.Module,
        *,
        task: str | None = None,
        tokenizer: Any = None,
        automodel: Any = None,
        config: Any = None,
        dispatch: bool = False,
        device_map: Any = None,
        dtype: Any = None,
        torch_dtype: Any = None,
        rename: Mapping[str, str | Sequence[str]] | None = None,
        envoys: type[Envoy] | Mapping[type | str, type[Envoy]] | None = _CLASS_ENVOYS,
        scheduler: Any = None,
        tokenizer_kwargs: Mapping[str, Any] | None = None,
        processor: Any = None,
        image_processor: Any = None,
        feature_extractor: Any = None,
        peft: str | None = None,
        **from_pretrained_kwargs: Any,
    ) -> None:
        if peft is not None:
            raise NotImplementedError(
                f"{type(self).__name__}(peft={peft!r}): endoscope does not load PEFT "
                "adapters; load the model with peft yourself (PeftModel.from_pretrained"
                f"(base, {peft!r})) and wrap that object: {type(self).__name__}(model, "
                "tokenizer=tokenizer)."
            )
        self._automodel = (
            automodel_class(automodel) if automodel is not None else automodel_for_task(task, None)
        )
        self.task = task
        self.processor = processor
        self.image_processor = image_processor
        self.feature_extractor = feature_extractor
        options = dict(from_pretrained_kwargs)
        if device_map is not None:
            options["device_map"] = device_map
        if dtype is not None or torch_dtype is not None:
            options["dtype"] = dtype if dtype is not None else torch_dtype
        self._load_options = options
        if isinstance(model, torch.nn.Module):
            if options:
                raise TypeError(
                    "loading options ("
                    + ", ".join(sorted(options))
                    + ") only apply when LanguageModel loads the model from a path or "
                    "hub id; this one was given a model object."
                )
            self.repo_id: str | None = None
            self._dispatched = True
            module = model
        else:
            self.repo_id = os.fspath(model)
            self._dispatched = bool(dispatch)
            if automodel is None and task is None:
                # The class follows the checkpoint's architecture: its config says.
                if config is None:
                    config = load_config(self.repo_id, options)
                self._automodel = automodel_for_task(None, config)
            if config is not None:
                options["config"] = config  # the loaded model is built from it too
            if dispatch:
                module = load_pretrained(self._automodel, self.repo_id, options)
            else:
                if config is None:
                    config = load_config(self.repo_id, options)
                module = meta_model(self._automodel, config, options)
        self.tokenizer = self._resolve_tokenizer(tokenizer, module, dict(tokenizer_kwargs or {}))
        self._takes_positions = "position_ids" in inspect.signature(module.forward).parameters
        if envoys is _CLASS_ENVOYS:
            envoys = type(self).envoys
        super().__init__(module, rename=rename, envoys=envoys, scheduler=scheduler)
        # generate()'s ids and streamed tokens pass through these (see _generator).
        self._generator = Generator()
        self._generator_envoy = GeneratorEnvoy(
            self._generator, path=f"{self.path}.{GENERATOR_NAME}", root=self, parent=self
        )

    @property
    def generator(self) -> Envoy:
        """``generate``'s ids (``.output``, deprecated: use ``tracer.result``) and the
        tokens of each step (``.streamer.output``); see :mod:`endoscope._generator`.

        Not one of the model's modules: the Envoy tree, ``print(lm)`` and
        ``named_modules()`` mirror the model alone. A model with a child of its
        own named ``generator`` keeps it here instead.
        """
        own = self._children.get(GENERATOR_NAME)
        return own if own is not None else self._generator_envoy

    # ------------------------------------------------------------ loading

    def _resolve_tokenizer(
        self, tokenizer: Any, module: torch.nn.Module, tokenizer_kwargs: dict[str, Any]
    ) -> Any:
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(tokenizer, self._load_options, tokenizer_kwargs)
        elif tokenizer is None:
            source = self.repo_id or getattr(getattr(module, "config", None), "name_or_path", "")
            if source:
                try:
                    tokenizer = load_tokenizer(source, self._load_options, tokenizer_kwargs)
                except (OSError, ValueError):
                    if self.repo_id is not None:
                        raise
                    tokenizer = None  # a wrapped model whose origin has no tokenizer
        if tokenizer is not None and getattr(tokenizer, "pad_token", None) is None:
            eos = getattr(tokenizer, "eos_token", None)
            if eos is not None:
                tokenizer.pad_token = eos
        return tokenizer

    @property
    def dispatched(self) -> bool:
        """Whether the real weights are loaded (``False`` while on ``meta``)."""
        return self._dispatched

    def dispatch(self) -> TransformersModel:
        """Load the real weights now (done on the first trace otherwise).

        The Envoys (and aliases) stay the same objects and now wrap the loaded
        modules. Does nothing if the weights are already loaded.

        Returns:
            This model.
        """
        # An edited copy (model.edit()) shares its original's Envoy tree and root.
        root = cast(TransformersModel, self._root)
        if not root._dispatched:
            # Under the empty model's trace lock: a scan of it in another thread
            # ends before its Envoys move, and a second thread's first trace waits
            # for this load instead of loading again.
            with root._exclusive():
                if not root._dispatched:
                    assert root.repo_id is not None
                    loaded = load_pretrained(root._automodel, root.repo_id, root._load_options)
                    rebind(root, loaded)
                    root._dispatched = True
        if self._module is not root._module:
            self._module = root._module
            self._ordered = root._ordered
            self._forget_lookups()
            self._dispatched = True
        return self

    # ------------------------------------------------------------ traces

    def trace(self, *inputs: Any, trace: bool = True, **kwargs: Any) -> Any:
        """Open a trace of one forward pass.

        Args:
            *inputs: a prompt, a list of prompts, token ids (a list, a list of
                lists, a tensor) or a tokenizer output; none when the body opens
                ``tracer.invoke(...)`` blocks.
            trace: ``False`` runs the forward at once and returns its output, with
                no block (the model's edits still apply).
            **kwargs: keyword inputs (``input_ids``, ``attention_mask``,
                ``position_ids``, ``token_type_ids``, ``labels``,
                ``inputs_embeds``); other keywords (``output_attentions``,
                ``use_cache``, ...) are passed to the forward unbatched.
                nnsight's ``remote=False`` and ``blocking`` are accepted;
                ``remote="local"`` serializes the block as a remote run would,
                then runs it here (see :meth:`NNsight.trace`).

        Returns:
            The tracer, to use as ``with lm.trace(...) as tracer:`` (the output
            with ``trace=False``).

        Raises:
            NotImplementedError: ``remote=True`` (models run in this process).
        """
        backend = self._local_only(kwargs, "trace")
        inputs_kwargs, options = split_input_kwargs(kwargs)
        tracer = InterleavingTracer(self, *inputs, **inputs_kwargs)
        tracer.run_kwargs = options
        if backend is not None:
            tracer.backend = backend
        return tracer if trace else tracer.run_untraced()

    def generate(self, *inputs: Any, trace: bool = True, **kwargs: Any) -> Any:
        """Open a trace of a whole ``generate`` call, or generate at once.

        ``with lm.generate(...) as tracer:`` traces it; called any other way
        (``ids = lm.generate(...)``), or with ``trace=False``, it generates now and
        returns ``generate``'s output, as nnsight does (the model's edits apply).

        Args:
            *inputs: as for :meth:`trace`.
            trace: ``False`` generates at once even as a ``with`` statement's
                expression.
            **kwargs: keyword inputs as for :meth:`trace`; everything else
                (``max_new_tokens``, ``do_sample``, ``streamer``,
                ``eos_token_id``, ...) goes to the model's ``generate``.

        Returns:
            The tracer (``tracer.result`` is ``generate``'s return value), or that
            return value when generating at once.

        Raises:
            NotImplementedError: ``remote=True`` (models run in this process).
        """
        backend = self._local_only(kwargs, "generate")
        inputs_kwargs, options = split_input_kwargs(kwargs)
        tracer = InterleavingTracer(self, *inputs, **inputs_kwargs)
        tracer.run_method = "_generate"
        tracer.run_kwargs = options
        if backend is not None:
            tracer.backend = backend
        if trace and opens_with(sys._getframe(1)):
            return tracer
        return tracer.run_untraced()

    def scan(self, *inputs: Any, **kwargs: Any) -> InterleavingTracer:
        """Open a trace on fake tensors: shapes without computing or loading weights.

        Before dispatch the scan runs on the empty meta model, so nothing is
        loaded; keywords are split as in :meth:`trace`. See
        :meth:`endoscope_envoy.NNsight.scan`.
        """
        backend = self._local_only(kwargs, "scan")
        inputs_kwargs, options = split_input_kwargs(kwargs)
        tracer = super().scan(*inputs, **inputs_kwargs)
        if backend is not None:
            tracer.backend = backend
        tracer.run_kwargs = options
        return tracer

    # ------------------------------------------------- NNsight extension points

    def _missed_hint(self, requester: str, tracer: Any) -> str | None:
        generator = f"{self.path}.{GENERATOR_NAME}."
        if requester.startswith(generator) and GENERATOR_NAME not in self._children:
            if getattr(tracer, "run_method", None) != "_generate":
                return (
                    f"{self.path}.{GENERATOR_NAME} passes on what generate() makes: read it "
                    "inside `with lm.generate(...):`, not in a trace of one forward pass."
                )
            if beams(self._module, tracer.run_kwargs) != 1:
                return (
                    "Under beam search (num_beams > 1) generate() streams nothing: the "
                    "streamer's values exist only with one beam; the ids are tracer.result."
                )
        return None

    def _out_of_order_hint(self, requester: str, tracer: Any) -> str | None:
        streamer = f"{self.path}.{GENERATOR_NAME}.streamer."
        if not requester.startswith(streamer) or GENERATOR_NAME in self._children:
            return None
        # As in nnsight 0.8.1: step n's streamer call is the one before step n's forward.
        return (
            "generate() streams the prompt before step 0's forward and the token chosen "
            "at step n after step n's forward, so in step n lm.generator.streamer.output "
            "is what was streamed before that step's forward (the prompt at step 0, then "
            "step n-1's token): read it before the step's other modules, or read step "
            "n's token in step n + 1."
        )

    def _pad_token_id(self) -> int:
        """The id left padding uses (tokenizer's pad, then end-of-sequence, then 0)."""
        candidates = [getattr(self.tokenizer, "pad_token_id", None)]
        candidates.append(getattr(self.tokenizer, "eos_token_id", None))
        config = getattr(self._module, "config", None)
        candidates += [getattr(config, "pad_token_id", None), getattr(config, "eos_token_id", None)]
        for candidate in candidates:
            if isinstance(candidate, (list, tuple)):
                candidate = candidate[0] if candidate else None
            if isinstance(candidate, int):
                return candidate
        return 0

    def _tokenize(self, prompts: list[str]) -> Mapping[str, Any]:
        return self.tokenizer(prompts)

    def _prepare_inputs(self, *args: Any, **kwargs: Any) -> Inputs:
        """One invoke's input as left-padded ``input_ids``/``attention_mask`` keywords.

        ``position_ids`` (from the attention mask) are added when the model's
        forward takes them and the input does not bring its own.
        """
        tokenize = self._tokenize if self.tokenizer is not None else None
        return self._encode(args, kwargs, tokenize, self._pad_token_id())

    def _prepare_invokes(self, invokes: Sequence[Inputs]) -> list[Inputs]:
        """Every invoke's input, the text of all of them tokenized in one call.

        One tokenizer call and one pad-id lookup per trace instead of per invoke
        (each costs about as much as the rest of an invoke's preparation). The
        ids are the same: the tokenizer pads nothing, so a prompt's ids do not
        depend on the others in its call.
        """
        if (
            len(invokes) < 2
            or self.tokenizer is None
            or type(self)._prepare_inputs is not TransformersModel._prepare_inputs
        ):
            return super()._prepare_invokes(invokes)
        # An invoke's text: its one input, when that is a prompt or a list of them.
        texts = [prompts_of(args[0]) if len(args) == 1 else None for args, _ in invokes]
        prompts = [prompt for text in texts if text is not None for prompt in text]
        encoded = dict(self._tokenize(prompts)) if prompts else {}
        if any(
            not isinstance(column, list) or len(column) != len(prompts)
            for column in encoded.values()
        ):
            return super()._prepare_invokes(invokes)  # not one entry per prompt: per invoke
        pad_token_id = self._pad_token_id()
        prepared = []
        start = 0
        for (args, kwargs), text in zip(invokes, texts):
            tokenize = self._tokenize
            if text is not None:
                end = start + len(text)
                rows = {name: column[start:end] for name, column in encoded.items()}
                start = end
                tokenize = functools.partial(_tokenized, rows)
            prepared.append(self._encode(args, kwargs, tokenize, pad_token_id))
        return prepared

    def _encode(
        self,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        tokenize: Callable[[list[str]], Mapping[str, Any]] | None,
        pad_token_id: int,
    ) -> Inputs:
        if len(args) > 1:
            raise TypeError(
                f"an invoke takes one input, got {len(args)}: pass several prompts as "
                "a list, or give each its own tracer.invoke(...)."
            )
        encoded = encode_input(
            args[0] if args else None, kwargs, tokenize=tokenize, pad_token_id=pad_token_id
        )
        if self._takes_positions:
            # Always, not only when padded: every run's inputs have the same keys,
            # and no data-dependent check (model.scan runs on fake tensors).
            encoded = with_positions(encoded)
        return (), encoded

    def _batch_inputs(self, inputs: Sequence[Inputs]) -> tuple[Any, dict[str, Any], list[Any], int]:
        """Left-pad every invoke to one length, then stack them (each keeps its rows)."""
        if len(inputs) == 1 or any(args for args, _ in inputs):
            return batch_inputs(inputs)
        padded = pad_invokes([kwargs for _, kwargs in inputs], pad_token_id=self._pad_token_id())
        return batch_inputs([((), kwargs) for kwargs in padded])

    def _interleave(
        self, tracer: InterleavingTracer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not isinstance(tracer, ScanTracer):  # a scan runs the empty model as it is
            self.dispatch()
        device = self._input_device()
        if device is not None:
            kwargs = {
                name: value.to(device) if isinstance(value, torch.Tensor) else value
                for name, value in kwargs.items()
            }
        return super()._interleave(tracer, args, kwargs)

    def _input_device(self) -> torch.device | None:
        """Where token inputs go: the input embeddings' device (``None``: leave them)."""
        embeddings = getattr(self._module, "get_input_embeddings", None)
        weight = getattr(embeddings() if embeddings is not None else None, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.device.type == "meta":
            return None
        return weight.device

    def _generate(self, *args: Any, **kwargs: Any) -> Any:
        """Run ``generate`` on the batched inputs (the tracer's run method)."""
        module: Any = self._module
        generation_config = getattr(module, "generation_config", None)
        if kwargs.get("pad_token_id") is None and (
            generation_config is None or generation_config.pad_token_id is None
        ):
            # Without one, transformers warns whenever a row ends before the others.
            kwargs["pad_token_id"] = self._pad_token_id()
        if GENERATOR_NAME in self._children:
            return module.generate(*args, **kwargs)  # the model's own `generator` wins
        generator = self._generator
        envoy = self._generator_envoy
        # Served from their first call: the streamer gets the prompt before the
        # first forward, so a hook put on it by a later read would number its
        # calls from the wrong one.
        serve_module(envoy, ancestors=False)
        serve_module(envoy.streamer, ancestors=False)
        streamer = streamer_for(generator, module, kwargs)
        if streamer is not None:
            kwargs["streamer"] = streamer
        # Through the generator, whose .output may read or replace the ids.
        return generator(module.generate(*args, **kwargs))


class LanguageModel(TransformersModel):
    """A transformers language model, ready to trace and generate.

    :class:`TransformersModel` with ``task="text-generation"``: loaded with
    ``AutoModelForCausalLM`` unless ``automodel`` says otherwise. Every option
    is :class:`TransformersModel`'s.

    Example:
        >>> lm = LanguageModel("path/or/hub-id")  # doctest: +SKIP
        >>> with lm.trace("The Eiffel Tower is in"):  # doctest: +SKIP
        ...     hidden = lm.transformer.h[0].output[0].save()
        ...     logits = lm.lm_head.output.save()
        >>> with lm.generate("Paris is", max_new_tokens=5) as tracer:  # doctest: +SKIP
        ...     tokens = tracer.result.save()
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | torch.nn.Module,
        *,
        task: str | None = "text-generation",
        automodel: Any = None,
        **kwargs: Any,
    ) -> None:
        if automodel is None and task == "text-generation":
            automodel = AutoModelForCausalLM
        super().__init__(model, task=task, automodel=automodel, **kwargs)
