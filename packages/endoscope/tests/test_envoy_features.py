"""envoy's features on a LanguageModel: scan, edit, session, gradients, cache, source."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from endoscope import LanguageModel
from endoscope_source import SourceError

PROMPT = "The Eiffel Tower is in"
OTHER = "The capital of Italy is"


def plain_run(model, tokenizer, prompt: str, hook=None, index: int = 0):
    """Logits of ``prompt``, with ``hook`` on block ``index`` if given."""
    handle = model.transformer.h[index].register_forward_hook(hook) if hook else None
    try:
        with torch.no_grad():
            return model(**tokenizer(prompt, return_tensors="pt")).logits
    finally:
        if handle is not None:
            handle.remove()


def test_scan_of_an_empty_model_loads_nothing(saved_model, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    model = LanguageModel(saved_model)
    with model.scan(PROMPT) as tracer:
        shape = model.transformer.h[0].output.shape.save()
    n = len(model.tokenizer(PROMPT)["input_ids"])
    assert tuple(shape) == (1, n, 32)
    assert tuple(tracer.shapes["model.lm_head"]["output"].shape) == (1, n, len(model.tokenizer))
    assert not model.dispatched
    assert {p.device.type for p in model._module.parameters()} == {"meta"}


def test_an_edit_made_before_loading_applies_after(saved_model):
    model = LanguageModel(saved_model)
    with model.edit() as (_, edited):
        model.transformer.h[0].output[:] = 0
    with edited.trace(PROMPT):
        logits = edited.lm_head.output.save()
    with model.trace(PROMPT):
        untouched = model.lm_head.output.save()
    assert model.dispatched and edited._module is model._module
    reference = AutoModelForCausalLM.from_pretrained(saved_model).eval()
    zeroed = plain_run(reference, model.tokenizer, PROMPT, lambda m, a, out: torch.zeros_like(out))
    assert torch.equal(logits, zeroed)
    assert torch.equal(untouched, plain_run(reference, model.tokenizer, PROMPT))


def test_a_session_carries_values_between_traces(gpt2, tokenizer):
    model = LanguageModel(gpt2, tokenizer=tokenizer)
    with model.session():
        with model.trace(PROMPT):
            donor = model.transformer.h[0].output[:, -1]
        with model.trace(OTHER):
            model.transformer.h[0].output[:, -1] = donor
            patched = model.lm_head.output.save()
    hidden = []
    plain_run(gpt2, tokenizer, PROMPT, lambda m, a, out: hidden.append(out))

    def put(module, args, out):
        out = out.clone()
        out[:, -1] = hidden[0][:, -1]
        return out

    assert torch.equal(patched, plain_run(gpt2, tokenizer, OTHER, put))


def test_gradients_of_hidden_states(gpt2, tokenizer):
    model = LanguageModel(gpt2, tokenizer=tokenizer)
    with model.trace(PROMPT):
        hidden = model.transformer.h[0].output
        loss = model.lm_head.output[:, -1].logsumexp(-1).sum()
        with loss.backward():
            grad = hidden.grad.save()
    kept = []

    def keep(module, args, out):
        out.retain_grad()
        kept.append(out)

    handle = gpt2.transformer.h[0].register_forward_hook(keep)
    try:
        logits = gpt2(**tokenizer(PROMPT, return_tensors="pt")).logits
    finally:
        handle.remove()
    logits[:, -1].logsumexp(-1).sum().backward()
    gpt2.zero_grad()
    assert torch.equal(grad, kept[0].grad)


def test_cache_of_a_batch_of_prompts(gpt2, tokenizer):
    model = LanguageModel(gpt2, tokenizer=tokenizer)
    with model.trace([PROMPT, "Big Ben"]) as tracer:
        cache = tracer.cache(modules=[model.transformer.h[1]])
    block = cache["model.transformer.h.1"].output
    n = len(tokenizer("Big Ben")["input_ids"])
    seen = []
    plain_run(gpt2, tokenizer, "Big Ben", lambda m, a, out: seen.append(out), index=1)
    assert block.shape[0] == 2
    torch.testing.assert_close(block[1:, -n:], seen[0])


def test_source_operations_of_a_loaded_model(saved_model):
    model = LanguageModel(saved_model, dispatch=True)
    with model.trace(PROMPT):
        projected = model.transformer.h[0].attn.source.self_c_proj_0.output.save()
    seen = []
    module = model._module.transformer.h[0].attn.c_proj
    handle = module.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        with torch.no_grad():
            model._module(**model.tokenizer(PROMPT, return_tensors="pt"))
    finally:
        handle.remove()
    assert torch.equal(projected, seen[0])


def test_attention_weights_inside_the_attention_function(gpt2, tokenizer):
    # transformers picks the attention function at run time (a local variable of
    # the attention's forward): its .source is known after one run reads it.
    gpt2.set_attn_implementation("eager")
    model = LanguageModel(gpt2, tokenizer=tokenizer)
    attn = model.transformer.h[0].attn
    with model.trace(PROMPT):
        returned = attn.source.attention_interface_0.output.save()
    inner = attn.source.attention_interface_0.source
    assert "def eager_attention_forward" in str(inner)
    with model.trace(PROMPT):
        scores = inner.torch_matmul_0.output.save()
        weights = inner.nn_functional_softmax_0.output.save()
    assert torch.equal(weights, returned[1])
    assert weights.shape[-2:] == scores.shape[-2:] == (weights.shape[-1],) * 2
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


def plain_c_attn(model, tokenizer, prompt: str = PROMPT) -> torch.Tensor:
    """Block 0's ``attn.c_attn`` output on ``prompt``, by a plain hook."""
    seen = []
    handle = model.transformer.h[0].attn.c_attn.register_forward_hook(
        lambda module, args, out: seen.append(out)
    )
    try:
        plain_run(model, tokenizer, prompt)
    finally:
        handle.remove()
    return seen[0]


def test_a_child_then_an_operation_of_the_parents_source(gpt2, tokenizer):
    """nnsight 0.8.1 (issue 17, point 12): once ``attn.source`` exists (here
    built outside any trace), ``attn.c_attn.output`` and then
    ``attn.source.self_c_proj_0.input`` work in one step, run after run."""
    lm = LanguageModel(gpt2, tokenizer=tokenizer)
    str(lm.transformer.h[0].attn.source)
    hidden = gpt2.config.n_embd
    for _ in range(2):  # the second run lends the same wrappers again
        with lm.trace(PROMPT):
            qkv = lm.transformer.h[0].attn.c_attn.output.save()
            query = lm.transformer.h[0].attn.source.split_1.output[0].save()
            merged = lm.transformer.h[0].attn.source.self_c_proj_0.input.save()
            attn = lm.transformer.h[0].attn.output[0].save()
        expected = plain_c_attn(gpt2, tokenizer)
        assert torch.equal(qkv, expected)
        assert torch.equal(query, expected[..., :hidden])
        assert torch.equal(gpt2.transformer.h[0].attn.c_proj(merged), attn)


def test_source_of_an_expression_callee_inside_a_trace(gpt2, tokenizer):
    """nnsight 0.8.1 (issue 17, point 13): ``self.c_attn(h).split(...)`` calls
    ``torch.Tensor.split``; inside a trace ``split_1.source`` is the source of the
    callee that runs, and its operations read and write like any other. Outside
    a trace, before any run, it says why it cannot tell (nnsight: "only available
    inside a trace"); after a run, the callee that ran."""
    lm = LanguageModel(gpt2, tokenizer=tokenizer)
    split = lm.transformer.h[0].attn.source.split_1
    with pytest.raises(SourceError, match="only known when it runs.*inside a trace"):
        split.source
    hidden = gpt2.config.n_embd
    with lm.trace(PROMPT):
        pieces = split.source.torch__VF_split_0.output.save()
        split.source.torch__VF_split_0.output = (pieces[0] * 0, pieces[1], pieces[2])
        merged = lm.transformer.h[0].attn.source.self_c_proj_0.input.save()
    expected = plain_c_attn(gpt2, tokenizer)
    assert [tuple(p.shape) for p in pieces] == [tuple(expected[..., :hidden].shape)] * 3
    assert torch.equal(pieces[2], expected[..., 2 * hidden :])
    # A zero query gives every position uniform attention over the values it sees.
    values = expected[..., 2 * hidden :]
    steps = torch.arange(1, values.shape[1] + 1).view(1, -1, 1)
    assert torch.allclose(merged, values.cumsum(1) / steps, atol=1e-6)
    assert "def split(self, split_size" in str(split.source)
    with lm.trace(PROMPT):  # and again, the callee now known
        again = split.source.torch__VF_split_0.output.save()
    assert torch.equal(again[0], expected[..., :hidden])
