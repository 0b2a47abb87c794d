"""Every input form of a LanguageModel trace gives the logits plain transformers gives."""

from __future__ import annotations

import pytest
import torch

from endoscope import LanguageModel

PROMPT = "The Eiffel Tower is in"
PROMPTS = ["The Eiffel Tower is in", "Big Ben", "The capital of Italy is"]


@pytest.fixture
def lm(gpt2, tokenizer) -> LanguageModel:
    return LanguageModel(gpt2, tokenizer=tokenizer)


def reference(gpt2, tokenizer, prompt: str) -> torch.Tensor:
    """Logits of ``prompt`` alone, from the unwrapped model."""
    with torch.no_grad():
        return gpt2(**tokenizer(prompt, return_tensors="pt")).logits


def ids_of(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt)["input_ids"]


def trace_logits(lm: LanguageModel, *inputs, **kwargs) -> torch.Tensor:
    with lm.trace(*inputs, **kwargs):
        logits = lm.lm_head.output.save()
    return logits


def test_a_string(lm, gpt2, tokenizer):
    assert torch.equal(trace_logits(lm, PROMPT), reference(gpt2, tokenizer, PROMPT))


def test_a_string_root_inputs_are_keyword_token_tensors(lm, tokenizer):
    with lm.trace(PROMPT):
        inputs = lm.inputs.save()
        first = lm.input.save()
    args, kwargs = inputs
    ids = torch.tensor([ids_of(tokenizer, PROMPT)])
    assert args == ()
    assert list(kwargs) == ["input_ids", "attention_mask", "position_ids"]
    assert torch.equal(kwargs["input_ids"], ids)
    assert torch.equal(kwargs["attention_mask"], torch.ones_like(ids))
    assert kwargs["position_ids"].tolist() == [list(range(ids.shape[1]))]
    assert torch.equal(first, ids)


def test_token_ids_as_a_list(lm, gpt2, tokenizer):
    logits = trace_logits(lm, ids_of(tokenizer, PROMPT))
    assert torch.equal(logits, reference(gpt2, tokenizer, PROMPT))


@pytest.mark.parametrize("shape", ["1d", "2d"])
def test_token_ids_as_a_tensor(lm, gpt2, tokenizer, shape):
    ids = torch.tensor(ids_of(tokenizer, PROMPT))
    logits = trace_logits(lm, ids if shape == "1d" else ids[None])
    assert torch.equal(logits, reference(gpt2, tokenizer, PROMPT))


@pytest.mark.parametrize("kind", ["tensors", "lists", "dict"])
def test_a_tokenizer_output(lm, gpt2, tokenizer, kind):
    encoded = tokenizer(PROMPT, return_tensors="pt" if kind == "tensors" else None)
    value = dict(encoded) if kind == "dict" else encoded
    assert torch.equal(trace_logits(lm, value), reference(gpt2, tokenizer, PROMPT))


def test_keyword_only_inputs(lm, gpt2, tokenizer):
    encoded = tokenizer(PROMPT, return_tensors="pt")
    logits = trace_logits(
        lm, input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]
    )
    assert torch.equal(logits, reference(gpt2, tokenizer, PROMPT))


def test_keyword_token_ids_as_a_list(lm, gpt2, tokenizer):
    logits = trace_logits(lm, input_ids=ids_of(tokenizer, PROMPT))
    assert torch.equal(logits, reference(gpt2, tokenizer, PROMPT))


def test_keyword_inputs_in_an_invoke(lm, gpt2, tokenizer):
    encoded = tokenizer(PROMPT, return_tensors="pt")
    with lm.trace() as tracer:
        with tracer.invoke(**encoded):
            logits = lm.lm_head.output.save()
    assert torch.equal(logits, reference(gpt2, tokenizer, PROMPT))


def test_labels_are_an_input_and_give_the_loss(lm, gpt2, tokenizer):
    encoded = tokenizer(PROMPT, return_tensors="pt")
    with lm.trace(PROMPT, labels=encoded["input_ids"]) as tracer:
        loss = tracer.result.loss.save()
    with torch.no_grad():
        expected = gpt2(**encoded, labels=encoded["input_ids"]).loss
    assert torch.equal(loss, expected)


def test_other_keywords_go_to_the_forward(lm, gpt2, tokenizer):
    with lm.trace(PROMPT, output_hidden_states=True) as tracer:
        hidden = tracer.result.hidden_states.save()
    with torch.no_grad():
        expected = gpt2(**tokenizer(PROMPT, return_tensors="pt"), output_hidden_states=True)
    assert len(hidden) == len(expected.hidden_states) == 3
    for got, want in zip(hidden, expected.hidden_states):
        assert torch.equal(got, want)


def test_a_list_of_prompts_is_one_left_padded_batch(lm, gpt2, tokenizer):
    with lm.trace(PROMPTS):
        kwargs = lm.inputs[1].save()
        logits = lm.lm_head.output.save()
    lengths = [len(ids_of(tokenizer, p)) for p in PROMPTS]
    width = max(lengths)
    ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
    assert ids.shape == mask.shape == (3, width)
    for row, (prompt, n) in enumerate(zip(PROMPTS, lengths)):
        assert ids[row, width - n :].tolist() == ids_of(tokenizer, prompt)
        assert ids[row, : width - n].eq(tokenizer.eos_token_id).all()  # pad = eos
        assert mask[row].tolist() == [0] * (width - n) + [1] * n
        assert kwargs["position_ids"][row, width - n :].tolist() == list(range(n))
        torch.testing.assert_close(
            logits[row : row + 1, width - n :], reference(gpt2, tokenizer, prompt)
        )


def test_ragged_token_id_lists(lm, gpt2, tokenizer):
    rows = [ids_of(tokenizer, p) for p in PROMPTS]
    logits = trace_logits(lm, rows)
    width = max(len(r) for r in rows)
    for row, prompt in enumerate(PROMPTS):
        n = len(rows[row])
        torch.testing.assert_close(
            logits[row : row + 1, width - n :], reference(gpt2, tokenizer, prompt)
        )


def test_equal_length_token_id_lists_are_one_long_tensor(lm, gpt2, tokenizer):
    # Rows of one length take the one-tensor path (no padding); the result must
    # match a tensor of the same ids and the model's own logits.
    rows = [ids_of(tokenizer, PROMPT)] * 2
    with lm.trace(rows):
        ids = lm.input.save()
        logits = lm.lm_head.output.save()
    assert ids.dtype == torch.long and torch.equal(ids, torch.tensor(rows))
    with torch.no_grad():
        expected = gpt2(torch.tensor(rows)).logits
    assert torch.equal(logits, expected)


def test_tokenizer_was_given_a_pad_token(lm, tokenizer):
    assert lm.tokenizer is tokenizer
    assert tokenizer.pad_token == tokenizer.eos_token


def test_text_without_a_tokenizer_says_what_to_do(gpt2):
    lm = LanguageModel(gpt2)
    assert lm.tokenizer is None
    with pytest.raises(ValueError, match="no tokenizer"):
        with lm.trace(PROMPT):
            lm.lm_head.output.save()


def test_token_ids_work_without_a_tokenizer(gpt2, tokenizer):
    lm = LanguageModel(gpt2)
    logits = trace_logits(lm, ids_of(tokenizer, PROMPT))
    assert torch.equal(logits, reference(gpt2, tokenizer, PROMPT))


def test_a_float_tensor_is_refused(lm):
    with pytest.raises(TypeError, match="inputs_embeds"):
        with lm.trace(torch.randn(1, 4)):
            lm.lm_head.output.save()


def test_inputs_embeds(lm, gpt2, tokenizer):
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        embeds = gpt2.transformer.wte(ids)
    logits = trace_logits(lm, inputs_embeds=embeds)
    torch.testing.assert_close(logits, reference(gpt2, tokenizer, PROMPT))


def test_two_positional_inputs_are_refused(lm):
    with pytest.raises(TypeError, match="one input"):
        with lm.trace() as tracer:
            with tracer.invoke("a", "b"):
                lm.lm_head.output.save()


def test_mismatched_attention_mask_is_refused(lm, tokenizer):
    ids = torch.tensor([ids_of(tokenizer, PROMPT)])
    with pytest.raises(ValueError, match="attention_mask"):
        with lm.trace(input_ids=ids, attention_mask=torch.ones(1, 2, dtype=torch.long)):
            lm.lm_head.output.save()


def test_token_id_lists_hold_ints_only() -> None:
    from endoscope._inputs import _is_int_sequence

    assert _is_int_sequence([1, 2, 3]) and _is_int_sequence((4,)) and _is_int_sequence([])
    for bad in ([1, True], [1.0, 2], [1, "2"], [[1, 2]], "12", None, 3):
        assert not _is_int_sequence(bad), bad


def test_a_list_of_booleans_is_refused_as_token_ids(lm):
    with pytest.raises(TypeError):
        with lm.trace([True, False]):
            pass
