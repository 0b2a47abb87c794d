"""Loading: a wrapped object, an empty meta model from a path, dispatch, dtypes, offload."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GPT2LMHeadModel, GPT2Model

from endoscope import Envoy, LanguageModel, TransformersModel

PROMPT = "The Eiffel Tower is in"


def plain(saved_model: Path, **options) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(saved_model, **options).eval()


def plain_logits(model: torch.nn.Module, tokenizer, prompt: str = PROMPT) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(prompt, return_tensors="pt")).logits


def traced_logits(lm: LanguageModel, prompt: str = PROMPT) -> torch.Tensor:
    with lm.trace(prompt):
        logits = lm.lm_head.output.save()
    return logits


def block_output(model: torch.nn.Module, tokenizer, index: int) -> torch.Tensor:
    """The output of ``model.transformer.h[index]`` on :data:`PROMPT`, by a plain hook."""
    seen = []
    handle = model.transformer.h[index].register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        plain_logits(model, tokenizer)
    finally:
        handle.remove()
    return seen[0]


def devices(module: torch.nn.Module) -> set[str]:
    return {p.device.type for p in module.parameters()} | {b.device.type for b in module.buffers()}


def test_wrapping_a_model_object(gpt2, tokenizer):
    lm = LanguageModel(gpt2, tokenizer=tokenizer)
    assert lm.dispatched and lm.repo_id is None
    assert lm._module is gpt2
    assert lm.transformer.h[1].attn._module is gpt2.transformer.h[1].attn
    assert lm.tokenizer is tokenizer
    assert torch.equal(traced_logits(lm), plain_logits(gpt2, tokenizer))


def test_a_path_builds_an_empty_model_without_reading_weights(saved_model, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    lm = LanguageModel(saved_model)
    assert not lm.dispatched
    assert lm.repo_id == str(saved_model)
    assert devices(lm._module) == {"meta"}
    assert lm.device.type == "meta"
    # The whole tree is there to explore.
    assert isinstance(lm.transformer.h[1].attn.c_attn, Envoy)
    assert len(lm.transformer.h) == lm.config.n_layer == 2
    assert "GPT2LMHeadModel" in repr(lm) and "(c_attn)" in repr(lm)
    assert [path for path, _ in lm.named_modules()] == [
        "model" + ("." + name if name else "") for name, _ in lm._module.named_modules()
    ]


def test_a_path_loads_the_tokenizer_padding_left(saved_model):
    lm = LanguageModel(saved_model)
    assert lm.tokenizer is not None
    assert lm.tokenizer.padding_side == "left"
    assert lm.tokenizer.pad_token == lm.tokenizer.eos_token == "<|endoftext|>"


def test_the_first_trace_loads_weights_into_the_same_envoys(saved_model):
    lm = LanguageModel(saved_model)
    layer = lm.transformer.h[1]
    attn = layer.attn
    logits = traced_logits(lm)
    reference = plain(saved_model)
    assert lm.dispatched
    assert devices(lm._module) == {"cpu"}
    assert lm.transformer.h[1] is layer and layer.attn is attn
    assert attn._module is lm._module.transformer.h[1].attn
    assert torch.equal(logits, plain_logits(reference, lm.tokenizer))
    with lm.trace(PROMPT):
        held = layer.output.save()
    assert torch.equal(held, block_output(reference, lm.tokenizer, 1))


def test_dispatch_loads_once(saved_model):
    lm = LanguageModel(saved_model)
    assert lm.dispatch() is lm
    loaded = lm._module
    assert devices(loaded) == {"cpu"}
    lm.dispatch()
    traced_logits(lm)
    assert lm._module is loaded


def test_dispatch_true_loads_at_once(saved_model):
    lm = LanguageModel(saved_model, dispatch=True)
    assert lm.dispatched and devices(lm._module) == {"cpu"}
    assert torch.equal(traced_logits(lm), plain_logits(plain(saved_model), lm.tokenizer))


def test_rename_survives_dispatch(saved_model):
    lm = LanguageModel(saved_model, rename={"transformer.h": "layers", "attn": "attention"})
    before = lm.layers[0].attention
    assert before is lm.transformer.h[0].attn
    with lm.trace(PROMPT):
        via_alias = lm.layers[0].attention.output[0].save()
        via_path = lm.transformer.h[0].attn.output[0].save()
    assert lm.layers[0].attention is before
    assert before._module is lm._module.transformer.h[0].attn
    assert torch.equal(via_alias, via_path)
    assert "transformer.h is also reachable as layers" in repr(lm)


def test_source_read_before_dispatch_follows_the_loaded_module(saved_model):
    lm = LanguageModel(saved_model)
    attn = lm.transformer.h[0].attn
    assert "self_c_attn_1" in str(attn.source)  # self_c_attn_0: the cross-attention branch
    with lm.trace(PROMPT):
        qkv = attn.source.self_c_attn_1.output.save()
    seen = []
    module = lm._module.transformer.h[0].attn.c_attn
    handle = module.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        with torch.no_grad():
            lm._module(**lm.tokenizer(PROMPT, return_tensors="pt"))
    finally:
        handle.remove()
    assert torch.equal(qkv, seen[0])


@pytest.mark.parametrize("option", ["dtype", "torch_dtype"])
def test_dtype(saved_model, option, collect_warnings):
    with collect_warnings() as found:
        lm = LanguageModel(saved_model, **{option: torch.float64})
        assert {p.dtype for p in lm._module.parameters()} == {torch.float64}
        logits = traced_logits(lm)
    assert not [m for m in found if "dtype" in m]
    assert logits.dtype == torch.float64
    reference = plain(saved_model, dtype=torch.float64)
    assert torch.equal(logits, plain_logits(reference, lm.tokenizer))


def test_dtype_by_name(saved_model):
    lm = LanguageModel(saved_model, dtype="float64")
    assert {p.dtype for p in lm._module.parameters()} == {torch.float64}
    assert traced_logits(lm).dtype == torch.float64


def test_offload_to_cpu_and_disk(saved_model, tmp_path):
    device_map = {
        "transformer.wte": "cpu",
        "transformer.wpe": "cpu",
        "transformer.drop": "cpu",
        "transformer.h.0": "cpu",
        "transformer.h.1": "disk",
        "transformer.ln_f": "cpu",
        "lm_head": "cpu",
    }
    lm = LanguageModel(saved_model, device_map=device_map, offload_folder=str(tmp_path))
    with lm.trace(PROMPT):
        block = lm.transformer.h[1].output.save()
        logits = lm.lm_head.output.save()
    assert lm._module.hf_device_map == device_map
    # The disk-offloaded block keeps its weights off the CPU between calls.
    assert devices(lm._module.transformer.h[1]) == {"meta"}
    reference = plain(saved_model)
    assert torch.equal(logits, plain_logits(reference, lm.tokenizer))
    assert torch.equal(block, block_output(reference, lm.tokenizer, 1))


def test_device_map_auto(saved_model):
    lm = LanguageModel(saved_model, device_map="auto")
    assert torch.equal(traced_logits(lm), plain_logits(plain(saved_model), lm.tokenizer))


def test_loading_options_need_a_path(gpt2):
    with pytest.raises(TypeError, match="device_map"):
        LanguageModel(gpt2, device_map="cpu")


@pytest.mark.parametrize("automodel", ["AutoModelForCausalLM", GPT2LMHeadModel])
def test_automodel_by_name_or_class(saved_model, automodel):
    lm = LanguageModel(saved_model, automodel=automodel)
    assert type(lm._module) is GPT2LMHeadModel and devices(lm._module) == {"meta"}
    assert torch.equal(traced_logits(lm), plain_logits(plain(saved_model), lm.tokenizer))


def test_an_unknown_automodel_name(saved_model):
    with pytest.raises(ValueError, match="AutoModelForNothing"):
        LanguageModel(saved_model, automodel="AutoModelForNothing")


def test_a_given_config_is_used(saved_model, tokenizer, monkeypatch):
    config = AutoConfig.from_pretrained(saved_model)
    config.endoscope_marker = "given"

    def refuse(*args, **kwargs):
        raise AssertionError("the config was read again")

    monkeypatch.setattr(AutoConfig, "from_pretrained", refuse)
    lm = LanguageModel(saved_model, config=config, tokenizer=tokenizer)
    assert lm._module.config is config
    lm.dispatch()  # from_pretrained uses (a copy of) it instead of reading config.json
    assert lm._module.config.endoscope_marker == "given"


def test_tokenizer_from_a_path_with_options(saved_model, gpt2):
    lm = LanguageModel(gpt2, tokenizer=str(saved_model), tokenizer_kwargs={"padding_side": "right"})
    assert lm.tokenizer.padding_side == "right"
    # Batches are still padded on the left: endoscope pads, not the tokenizer.
    with lm.trace(["Big Ben", PROMPT]):
        mask = lm.inputs[1]["attention_mask"].save()
    assert mask[0, 0] == 0 and mask[0, -1] == 1


def test_a_loaded_model_finds_its_tokenizer(saved_model):
    model = plain(saved_model)
    lm = LanguageModel(model)
    assert lm.tokenizer is not None
    assert (
        lm.tokenizer("Big Ben")["input_ids"]
        == LanguageModel(saved_model).tokenizer("Big Ben")["input_ids"]
    )


def test_a_call_site_read_before_rebinding_reads_the_new_modules(gpt2, tokenizer):
    # A call site lends the wrappers its last run wore before its next run starts;
    # after the Envoys are pointed at new modules, those wrappers (around the old
    # modules) must not be lent, or the read would wait on a module that never runs.
    import copy

    from endoscope import NNsight
    from endoscope._rebinding import rebind

    model = NNsight(gpt2)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]

    def read_block() -> torch.Tensor:
        with model.trace(ids):
            hidden = model.transformer.h[1].output[0].save()
        return hidden

    read_block()
    replacement = copy.deepcopy(gpt2)
    with torch.no_grad():
        for parameter in replacement.parameters():
            parameter.mul_(0.5)
    rebind(model, replacement)
    assert torch.equal(read_block(), block_output(replacement, tokenizer, 1)[0])


def test_cache_of_every_module_follows_rebinding(gpt2, tokenizer):
    # tracer.cache() remembers the model's module list; Envoys pointed at a new
    # tree (another kind of module where the old one had a Conv1D) must be listed
    # anew, and every value must come from the new modules.
    import copy

    from endoscope import NNsight
    from endoscope._rebinding import rebind

    model = NNsight(gpt2)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with model.trace(ids) as tracer:
        tracer.cache()
    replacement = copy.deepcopy(gpt2)
    old = replacement.transformer.h[0].mlp.c_proj
    linear = torch.nn.Linear(old.weight.shape[0], old.weight.shape[1])
    with torch.no_grad():
        linear.weight.copy_(old.weight.T)
        linear.bias.copy_(old.bias)
    replacement.transformer.h[0].mlp.c_proj = linear
    rebind(model, replacement)
    seen = {}
    handles = [
        module.register_forward_hook(lambda m, a, out, name=name: seen.setdefault(name, out))
        for name, module in replacement.named_modules()
    ]
    try:
        with torch.no_grad():
            replacement(ids)
    finally:
        for handle in handles:
            handle.remove()
    for _ in range(2):
        with model.trace(ids) as tracer:
            cache = tracer.cache()
        assert torch.equal(
            cache["model.transformer.h.0.mlp.c_proj"].output, seen["transformer.h.0.mlp.c_proj"]
        )
        assert torch.equal(cache["model.transformer.h.1.mlp"].output, seen["transformer.h.1.mlp"])
        assert type(model.transformer.h[0].mlp.c_proj._module) is torch.nn.Linear


def test_source_operations_held_from_before_loading_read_the_loaded_model(saved_model):
    # An operation (and a .source) taken from the empty model stays usable: it
    # reads the call site of the same name in the loaded modules' forward.
    lm = LanguageModel(saved_model)
    assert not lm.dispatched
    attn = lm.transformer.h[0].attn
    projection = attn.source.self_c_proj_0
    source = attn.source
    with lm.trace(PROMPT):
        qkv_in = source.self_c_attn_1.input.save()
        projected = projection.output.save()
    assert lm.dispatched
    seen: dict[str, torch.Tensor] = {}
    module = lm._module.transformer.h[0].attn
    handles = [
        module.c_proj.register_forward_hook(lambda m, a, out: seen.setdefault("proj", out)),
        module.c_attn.register_forward_pre_hook(lambda m, a: seen.setdefault("qkv_in", a[0])),
    ]
    try:
        plain_logits(lm._module, lm.tokenizer)
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(projected, seen["proj"])
    assert torch.equal(qkv_in, seen["qkv_in"])


# nnsight 0.8.1 (issue 17, point 5): `nnsight.TransformersModel(repo_id, task=...,
# tokenizer=, processor=, image_processor=, feature_extractor=, peft=, revision=,
# dispatch=, ...from_pretrained options)` is the class for any transformers model;
# `LanguageModel` is a TransformersModel pinned to task="text-generation".


def test_transformers_model_is_language_models_base(saved_model):
    lm = LanguageModel(saved_model)
    assert isinstance(lm, TransformersModel) and lm.task == "text-generation"


def test_transformers_model_text_generation_matches_plain_transformers(saved_model):
    model = TransformersModel(saved_model, task="text-generation", dtype=torch.float64)
    assert type(model._module) is GPT2LMHeadModel and devices(model._module) == {"meta"}
    logits = traced_logits(model)
    reference = plain(saved_model, dtype=torch.float64)
    assert torch.equal(logits, plain_logits(reference, model.tokenizer))
    with model.generate(PROMPT, max_new_tokens=3) as tracer:
        ids = tracer.result.save()
    inputs = model.tokenizer(PROMPT, return_tensors="pt")
    expected = reference.generate(
        **inputs, max_new_tokens=3, do_sample=False, pad_token_id=model.tokenizer.pad_token_id
    )
    assert torch.equal(ids, expected)


def test_transformers_model_task_picks_the_class(saved_model):
    model = TransformersModel(saved_model, task="feature-extraction", dispatch=True)
    assert type(model._module) is GPT2Model and model.dispatched
    with model.trace(PROMPT):
        hidden = model.ln_f.output.save()
    reference = AutoModel.from_pretrained(saved_model).eval()
    with torch.no_grad():
        expected = reference(**model.tokenizer(PROMPT, return_tensors="pt")).last_hidden_state
    assert torch.equal(hidden, expected)


def test_transformers_model_without_a_task_follows_the_architecture(saved_model):
    model = TransformersModel(saved_model)  # config.architectures: GPT2LMHeadModel
    assert type(model._module) is GPT2LMHeadModel and model.task is None
    assert torch.equal(traced_logits(model), plain_logits(plain(saved_model), model.tokenizer))


def test_transformers_model_keeps_given_processors(gpt2, tokenizer):
    processor, images, features = object(), object(), object()
    model = TransformersModel(
        gpt2,
        tokenizer=tokenizer,
        processor=processor,
        image_processor=images,
        feature_extractor=features,
    )
    assert (model.processor, model.image_processor, model.feature_extractor) == (
        processor,
        images,
        features,
    )


def test_transformers_model_an_unknown_task(saved_model):
    with pytest.raises(ValueError, match="unknown task 'no-such-task'"):
        TransformersModel(saved_model, task="no-such-task")


def test_transformers_model_peft_says_how_to_wrap_an_adapter(saved_model):
    with pytest.raises(NotImplementedError, match="PeftModel.from_pretrained"):
        TransformersModel(saved_model, peft="someone/adapter")


def test_first_traces_from_two_threads_load_once(saved_model, monkeypatch):
    lm = LanguageModel(saved_model)
    loads = []
    load = AutoModelForCausalLM.from_pretrained

    def counted(*args, **kwargs):
        loads.append(1)
        return load(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", counted)
    start = threading.Barrier(2)
    logits: list[torch.Tensor] = []
    errors: list[BaseException] = []

    def first_trace() -> None:
        start.wait()
        try:
            logits.append(traced_logits(lm))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=first_trace, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)  # a guard against a hang, not a measurement
    assert not any(thread.is_alive() for thread in threads)
    assert errors == [] and len(loads) == 1
    expected = plain_logits(load(saved_model).eval(), lm.tokenizer)
    assert all(torch.equal(each, expected) for each in logits) and len(logits) == 2


class Halving(torch.nn.Linear):
    """Another type where the checkpoint's model has a Linear."""


class HeadEnvoy(Envoy):
    """The Envoy type for :class:`Halving`: loading builds a new Envoy there."""


def test_children_looked_up_before_loading_are_the_loaded_ones(saved_model, monkeypatch):
    # Envoys keep a child they found once where normal lookup finds it; loading
    # that builds a new Envoy (another module type) must not leave the old one
    # there, in the model or in an edited copy made before the load.
    import endoscope._language_model as language_model

    lm = LanguageModel(saved_model, envoys={Halving: HeadEnvoy})
    with lm.edit() as (_, edited):
        pass
    old_head, old_mlp = lm.lm_head, lm.transformer.h[0].mlp
    assert edited.lm_head is old_head and edited.transformer.h[0].mlp is old_mlp
    real = language_model.load_pretrained

    def load_with_another_head(*args, **kwargs):
        loaded = real(*args, **kwargs)
        head = loaded.lm_head
        loaded.lm_head = Halving(head.in_features, head.out_features, bias=False)
        with torch.no_grad():
            loaded.lm_head.weight.copy_(head.weight)
        return loaded

    monkeypatch.setattr(language_model, "load_pretrained", load_with_another_head)
    edited.dispatch()
    loaded = lm._module
    assert isinstance(loaded.lm_head, Halving)
    for model in (lm, edited):
        assert model.lm_head is not old_head and isinstance(model.lm_head, HeadEnvoy)
        assert model.lm_head._module is loaded.lm_head
        assert model.transformer.h[0].mlp is old_mlp  # same type: the same Envoy
        assert model.transformer.h[0].mlp._module is loaded.transformer.h[0].mlp
    assert torch.equal(traced_logits(edited), plain_logits(loaded, lm.tokenizer))
