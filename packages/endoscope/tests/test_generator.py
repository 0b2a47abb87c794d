"""``lm.generator``: generate's ids and each step's streamed tokens, as module values."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

from endoscope import LanguageModel, MissedProviderError, OutOfOrderError

PROMPT = "The Eiffel Tower is in"
STEPS = 4


@pytest.fixture
def lm(gpt2, tokenizer) -> LanguageModel:
    return LanguageModel(gpt2, tokenizer=tokenizer)


def plain_sequences(gpt2, tokenizer, prompt=PROMPT, **options) -> torch.Tensor:
    encoded = tokenizer(prompt, return_tensors="pt")
    options = {"max_new_tokens": STEPS, "do_sample": False, **options}
    with torch.no_grad():
        return gpt2.generate(**encoded, pad_token_id=tokenizer.eos_token_id, **options)


def test_the_streamer_gives_the_prompt_then_each_steps_tokens(lm, gpt2, tokenizer):
    """nnsight 0.8.1 (checked for issue 17, point 11): in step n of tracer.iter,
    lm.generator.streamer.output is the streamer's call n, made before step n's
    forward: the prompt's ids at step 0, then the token chosen at step n - 1."""
    with lm.generate(PROMPT, max_new_tokens=STEPS) as tracer:
        streamed = [].save()
        for _ in tracer.iter[0 : STEPS + 1]:
            streamed.append(lm.generator.streamer.output)
    expected = plain_sequences(gpt2, tokenizer)
    start = tokenizer(PROMPT, return_tensors="pt")["input_ids"].shape[1]
    prompt_ids, *tokens = streamed
    assert torch.equal(prompt_ids, expected[:, :start])
    assert len(tokens) == STEPS
    for step, token in enumerate(tokens):
        assert torch.equal(token, expected[:, start + step])


def test_each_invoke_streams_its_own_rows(lm, gpt2, tokenizer):
    prompts = ["Big Ben is", "The capital of Italy is"]
    with lm.generate(max_new_tokens=2) as tracer:
        firsts = [].save()
        for prompt in prompts:
            with tracer.invoke(prompt):
                tracer.next()  # call 1: the token chosen at step 0
                firsts.append(lm.generator.streamer.output)
    for prompt, first in zip(prompts, firsts):
        alone = plain_sequences(gpt2, tokenizer, prompt, max_new_tokens=1)
        assert first.shape == (1,)
        assert torch.equal(first, alone[:, -1])


def test_generator_output_is_the_result_with_a_deprecation_at_the_users_line(lm, gpt2, tokenizer):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with lm.generate(PROMPT, max_new_tokens=STEPS) as tracer:
            ids = lm.generator.output.save()  # the line the warning names
            result = tracer.result.save()
    assert torch.equal(ids, plain_sequences(gpt2, tokenizer))
    assert torch.equal(result, ids)
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == 1
    assert "tracer.result" in str(deprecations[0].message)
    assert deprecations[0].filename == __file__
    lines, first = inspect.getsourcelines(
        test_generator_output_is_the_result_with_a_deprecation_at_the_users_line
    )
    marked = next(i for i, text in enumerate(lines) if "# the line the warning names" in text)
    assert deprecations[0].lineno == first + marked


def test_writing_generator_output_replaces_the_result(lm):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with lm.generate(PROMPT, max_new_tokens=2) as tracer:
            lm.generator.output = lm.generator.output[:, :3]
            result = tracer.result.save()
    assert result.shape == (1, 3)


def test_beam_search_runs_without_a_streamer(lm, gpt2, tokenizer):
    with lm.generate(PROMPT, max_new_tokens=2, num_beams=2) as tracer:
        tokens = tracer.result.save()
    assert torch.equal(tokens, plain_sequences(gpt2, tokenizer, max_new_tokens=2, num_beams=2))
    with pytest.raises(MissedProviderError, match="generator.streamer.output") as caught:
        with lm.generate(PROMPT, max_new_tokens=2, num_beams=2):
            lm.generator.streamer.output.save()
    assert "beam search" in str(caught.value)


def test_a_streamed_step_past_the_last_is_missed_without_a_beam_search_hint(lm):
    with pytest.raises(MissedProviderError, match=r"streamer.output.i9") as caught:
        with lm.generate(PROMPT, max_new_tokens=2) as tracer:
            for _ in tracer.iter[9]:
                lm.generator.streamer.output.save()
    assert "beam search" not in str(caught.value)


def test_reading_the_generator_in_a_forward_trace_says_to_generate(lm):
    with pytest.raises(MissedProviderError, match=r"inside `with lm.generate\(...\):`"):
        with lm.trace(PROMPT):
            lm.generator.streamer.output.save()


def test_the_generator_is_reachable_but_not_in_the_models_tree(lm, gpt2):
    assert lm.generator.path == "model.generator"
    assert lm.generator.streamer.path == "model.generator.streamer"
    # The tree mirrors the model alone.
    assert repr(lm) == repr(gpt2)
    assert [path for path, _ in lm.named_modules()] == [
        "model" + (f".{name}" if name else "") for name, _ in gpt2.named_modules()
    ]


def test_a_read_of_the_streamer_after_the_model_started_numbers_its_calls_right(
    lm, gpt2, tokenizer
):
    # The prompt is streamed before the first forward: by the time the reads below
    # are made (the model paused at step 0's logits), the streamer already ran once.
    with lm.generate(PROMPT, max_new_tokens=STEPS) as tracer:
        logits = lm.lm_head.output.save()
        tracer.next()
        first_token = lm.generator.streamer.output.save()  # call 1
    expected = plain_sequences(gpt2, tokenizer)
    start = tokenizer(PROMPT, return_tensors="pt")["input_ids"].shape[1]
    assert torch.equal(first_token, expected[:, start])
    assert torch.equal(logits[:, -1].argmax(-1), first_token)
    with pytest.raises(OutOfOrderError, match="streamer.output.i0"):
        with lm.generate(PROMPT, max_new_tokens=STEPS):
            lm.lm_head.output.save()
            lm.generator.streamer.output.save()  # the prompt: already streamed


def test_the_generator_stays_the_same_after_the_weights_load(saved_model):
    lm = LanguageModel(str(saved_model))  # empty until the first trace
    generator = lm.generator
    with lm.generate(PROMPT, max_new_tokens=2) as tracer:
        first = lm.generator.streamer.output.save()
        tokens = tracer.result.save()
    assert lm.dispatched and lm.generator is generator
    assert torch.equal(first, tokens[:, : first.shape[1]])


def test_a_streamer_read_after_a_module_of_its_step_says_when_it_streams(lm):
    """nnsight 0.8.1 (checked for issue 17, point 11): reading another module of
    step n first, then lm.generator.streamer.output, is an OutOfOrderError (its
    call n came before step n's forward); the message says so."""
    with pytest.raises(OutOfOrderError, match="streamer.output.i1") as caught:
        with lm.generate(PROMPT, max_new_tokens=STEPS) as tracer:
            for _ in tracer.iter[1:3]:
                lm.transformer.h[0].output.save()
                lm.generator.streamer.output.save()
    message = str(caught.value)
    assert "in step n lm.generator.streamer.output is what was streamed before" in message
    assert "read it before the step's other modules" in message
