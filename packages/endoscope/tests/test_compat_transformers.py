"""nnsight 0.8.1 behaviours (issue 17) shown on transformers models.

Each docstring states what nnsight 0.8.1 does (checked by running it); the envoy
package's ``test_nnsight_compat.py`` shows the same on plain modules.
"""

from __future__ import annotations

import torch
from transformers import BertConfig, BertModel

from endoscope import Envoy, LanguageModel, NNsight

PROMPTS = ["Big Ben", "The Eiffel Tower is in"]  # different lengths: one is padded


def test_berts_output_submodule_is_E_output() -> None:
    """nnsight 0.8.1 exposes BERT's ``layer.output`` submodule (a ``BertOutput``)
    as ``layer.E_output``, ``layer.output`` staying the layer's output; so does
    endoscope, besides its own ``layer.output_``."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
    )
    bert = BertModel(config).eval()
    model = NNsight(bert)
    layer = model.encoder.layer[0]
    assert layer.E_output is layer.output_
    assert layer.E_output.path == "model.encoder.layer.0.output"
    assert layer.attention.E_output.path == "model.encoder.layer.0.attention.output"
    ids = torch.tensor([[1, 5, 7, 9]])
    with model.trace(ids):
        projected = layer.attention.E_output.dense.output.save()
        sub = layer.E_output.output.save()
        whole = layer.output.save()
    seen = {}
    handles = [
        bert.encoder.layer[0].attention.output.dense.register_forward_hook(
            lambda m, a, out: seen.setdefault("dense", out)
        ),
        bert.encoder.layer[0].output.register_forward_hook(
            lambda m, a, out: seen.setdefault("sub", out)
        ),
    ]
    with torch.no_grad():
        plain = bert(ids).last_hidden_state
    for handle in handles:
        handle.remove()
    assert torch.equal(projected, seen["dense"])
    assert torch.equal(sub, seen["sub"])
    assert torch.equal(whole, plain)  # one layer: its output is the last hidden state


def test_a_language_model_subclass_default_envoys_and_a_passed_none(gpt2, tokenizer) -> None:
    """nnsight 0.8.1: what ``envoys=`` passes is all there is (``None``: plain
    ``Envoy``). A LanguageModel subclass's class-level ``envoys`` applies only when
    the keyword is omitted."""

    class Block(Envoy):
        pass

    class Blocks(LanguageModel):
        envoys = {"h.*": Block}

    assert type(Blocks(gpt2, tokenizer=tokenizer).transformer.h[1]) is Block
    assert type(Blocks(gpt2, tokenizer=tokenizer, envoys=None).transformer.h[1]) is Envoy
    assert type(LanguageModel(gpt2, tokenizer=tokenizer, envoys=Block).lm_head) is Block


def test_a_cache_made_in_an_invoke_keeps_that_prompts_rows(gpt2, tokenizer) -> None:
    """nnsight 0.8.1: ``tracer.cache()`` inside an invoke of a LanguageModel records
    that invoke's rows of the batch (padding included), its inputs too."""
    lm = LanguageModel(gpt2, tokenizer=tokenizer)
    caches, logits = [], []
    with lm.trace() as tracer:
        for prompt in PROMPTS:
            with tracer.invoke(prompt):
                caches.append(tracer.cache(include_inputs=True))
                logits.append(lm.lm_head.output.save())
    width = max(len(tokenizer(p)["input_ids"]) for p in PROMPTS)
    for prompt, cache, read in zip(PROMPTS, caches, logits):
        encoded = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            alone = gpt2(**encoded, output_hidden_states=True)
        n = alone.logits.shape[1]
        cached = cache.model.lm_head.output
        assert cached.shape == (1, width, alone.logits.shape[-1])
        assert torch.equal(cached, read)  # what the invoke itself read
        torch.testing.assert_close(cached[:, width - n :], alone.logits)
        block = cache.model.transformer.h[0].output
        block = block[0] if isinstance(block, tuple) else block
        torch.testing.assert_close(block[:, width - n :], alone.hidden_states[1])
        assert cache.model.lm_head.input.shape[0] == 1
