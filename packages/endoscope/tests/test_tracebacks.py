"""A mistake in a LanguageModel trace shows the user's lines, not the library's."""

from __future__ import annotations

import traceback

import pytest

from endoscope import CONFIG, LanguageModel, OutOfOrderError

PROMPT = "The Eiffel Tower is in"


def frames_of(error: BaseException) -> list[traceback.FrameSummary]:
    return traceback.extract_tb(error.__traceback__)


def test_an_error_in_a_trace_shows_only_the_users_lines(gpt2, tokenizer) -> None:
    lm = LanguageModel(gpt2, tokenizer=tokenizer)
    with pytest.raises(KeyError) as caught:
        with lm.trace(PROMPT):
            lm.transformer.h[1].mlp.output.save()
            raise KeyError("mine")
    frames = frames_of(caught.value)
    # No frame of LanguageModel, transformers or torch between the two.
    assert [f.line for f in frames] == ["with lm.trace(PROMPT):", 'raise KeyError("mine")']
    assert {f.filename for f in frames} == {__file__}


def test_an_out_of_order_read_in_generate_shows_only_the_users_lines(gpt2, tokenizer) -> None:
    lm = LanguageModel(gpt2, tokenizer=tokenizer)
    with pytest.raises(OutOfOrderError) as caught:
        with lm.generate(PROMPT, max_new_tokens=2):
            lm.transformer.h[1].output.save()
            lm.transformer.h[0].output.save()
    frames = frames_of(caught.value)
    assert frames[-1].line == "lm.transformer.h[0].output.save()"
    assert {f.filename for f in frames} == {__file__}


def test_debug_keeps_every_frame(gpt2, tokenizer) -> None:
    lm = LanguageModel(gpt2, tokenizer=tokenizer)
    previous = CONFIG.APP.DEBUG
    CONFIG.APP.DEBUG = True
    try:
        with pytest.raises(KeyError) as caught:
            with lm.trace(PROMPT):
                lm.transformer.h[1].mlp.output.save()
                raise KeyError("mine")
    finally:
        CONFIG.APP.DEBUG = previous
    files = {f.filename for f in frames_of(caught.value)}
    assert any(name.endswith("_language_model.py") for name in files)
    assert any("transformers" in name for name in files)
