"""Generation: results, per-step values and interventions against plain transformers."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.streamers import BaseStreamer

from endoscope import InterleavingTracer, LanguageModel

PROMPT = "The Eiffel Tower is in"
PROMPTS = ["Big Ben", "The Eiffel Tower is in"]
STEPS = 4


@pytest.fixture
def lm(gpt2, tokenizer) -> LanguageModel:
    return LanguageModel(gpt2, tokenizer=tokenizer)


def plain_generate(gpt2, tokenizer, prompt, **options):
    """transformers' own greedy generation, with the logits of every step."""
    encoded = tokenizer(prompt, return_tensors="pt")
    options = {"max_new_tokens": STEPS, "do_sample": False, **options}
    with torch.no_grad():
        return gpt2.generate(
            **encoded,
            pad_token_id=tokenizer.eos_token_id,
            output_logits=True,
            return_dict_in_generate=True,
            **options,
        )


def test_the_tracer_has_iteration():
    assert all(hasattr(InterleavingTracer, name) for name in ("iter", "all", "next"))


def test_result_is_what_generate_returns(lm, gpt2, tokenizer):
    with lm.generate(PROMPT, max_new_tokens=STEPS) as tracer:
        tokens = tracer.result.save()
    expected = plain_generate(gpt2, tokenizer, PROMPT)
    assert torch.equal(tokens, expected.sequences)


def test_generate_options_pass_through(lm, gpt2, tokenizer):
    with lm.generate(PROMPT, max_new_tokens=2, return_dict_in_generate=True) as tracer:
        out = tracer.result.save()
    assert torch.equal(
        out.sequences, plain_generate(gpt2, tokenizer, PROMPT, max_new_tokens=2).sequences
    )


def test_the_first_read_is_the_first_step(lm, gpt2, tokenizer):
    with lm.generate(PROMPT, max_new_tokens=STEPS):
        first = lm.lm_head.output.save()
    expected = plain_generate(gpt2, tokenizer, PROMPT)
    assert torch.equal(first[:, -1], expected.logits[0])


def test_iter_reads_chosen_steps(lm, gpt2, tokenizer):
    with lm.generate(PROMPT, max_new_tokens=STEPS) as tracer:
        logits = [].save()
        for _ in tracer.iter[1:3]:
            logits.append(lm.lm_head.output[:, -1].save())
    expected = plain_generate(gpt2, tokenizer, PROMPT)
    assert len(logits) == 2
    for got, want in zip(logits, expected.logits[1:3]):
        assert torch.equal(got, want)


def test_all_reads_every_step_and_the_code_after_runs(lm, gpt2, tokenizer):
    with lm.generate(max_new_tokens=STEPS) as tracer:
        with tracer.invoke(PROMPT):
            logits = [].save()
            for _ in tracer.all():
                logits.append(lm.lm_head.output[:, -1].save())
            after_loop = torch.ones(1).save()
        with tracer.invoke():  # after an unbounded loop, read later values elsewhere
            tokens = tracer.result.save()
    expected = plain_generate(gpt2, tokenizer, PROMPT)
    assert len(logits) == STEPS
    for got, want in zip(logits, expected.logits):
        assert torch.equal(got, want)
    assert torch.equal(tokens, expected.sequences)
    assert torch.equal(after_loop, torch.ones(1))


def test_the_result_is_readable_after_an_unbounded_loop(lm, gpt2, tokenizer):
    with lm.generate(PROMPT, max_new_tokens=STEPS) as tracer:
        logits = [].save()
        for _ in tracer.iter[:]:
            logits.append(lm.lm_head.output[:, -1])
        tokens = tracer.result.save()  # served after the loop ran out
    expected = plain_generate(gpt2, tokenizer, PROMPT)
    assert len(logits) == STEPS
    assert all(torch.equal(got, want) for got, want in zip(logits, expected.logits))
    assert torch.equal(tokens, expected.sequences)


def test_next_moves_to_the_following_step(lm, gpt2, tokenizer):
    with lm.generate(PROMPT, max_new_tokens=STEPS) as tracer:
        first = lm.lm_head.output[:, -1].save()
        tracer.next()
        second = lm.lm_head.output[:, -1].save()
    expected = plain_generate(gpt2, tokenizer, PROMPT)
    assert torch.equal(first, expected.logits[0])
    assert torch.equal(second, expected.logits[1])


def forced_logits(logits: torch.Tensor, token: int) -> None:
    """Make ``token`` the argmax of the last position, in place."""
    logits[:, -1, token] = logits[:, -1].max() + 10.0


@pytest.mark.parametrize("step", [0, 2])
def test_an_intervention_on_a_chosen_step_changes_that_token(lm, gpt2, tokenizer, step):
    baseline = plain_generate(gpt2, tokenizer, PROMPT).sequences
    start = tokenizer(PROMPT, return_tensors="pt")["input_ids"].shape[1]
    token = 17 if int(baseline[0, start + step]) != 17 else 18
    with lm.generate(PROMPT, max_new_tokens=STEPS) as tracer:
        for _ in tracer.iter[step]:
            forced_logits(lm.lm_head.output, token)
        tokens = tracer.result.save()
    # Up to the step: unchanged; at it: the forced token; after it: what plain
    # transformers generates from the prefix ending in that token.
    assert torch.equal(tokens[:, : start + step], baseline[:, : start + step])
    assert int(tokens[0, start + step]) == token
    prefix = tokens[:, : start + step + 1]
    with torch.no_grad():
        rest = gpt2.generate(
            prefix,
            attention_mask=torch.ones_like(prefix),
            max_new_tokens=STEPS - step - 1,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )
    assert torch.equal(tokens, rest)


def test_batched_generation_matches_each_prompt_alone(lm, gpt2, tokenizer):
    with lm.generate(max_new_tokens=STEPS) as tracer:
        with tracer.invoke(PROMPTS[0]):
            short_logits = [].save()
            for _ in tracer.all():
                short_logits.append(lm.lm_head.output[:, -1].save())
        with tracer.invoke(PROMPTS[1]):
            long_logits = [].save()
            for _ in tracer.all():
                long_logits.append(lm.lm_head.output[:, -1].save())
        with tracer.invoke():
            tokens = tracer.result.save()
    width = tokens.shape[1] - STEPS
    for row, (prompt, logits) in enumerate(zip(PROMPTS, [short_logits, long_logits])):
        expected = plain_generate(gpt2, tokenizer, prompt)
        n = expected.sequences.shape[1]
        assert torch.equal(tokens[row, -n:], expected.sequences[0])
        assert tokens[row, : width - (n - STEPS)].eq(tokenizer.eos_token_id).all()
        assert len(logits) == STEPS
        for got, want in zip(logits, expected.logits):
            torch.testing.assert_close(got, want)


class Collect(BaseStreamer):
    """A streamer that keeps every chunk of tokens it is given."""

    def __init__(self) -> None:
        self.chunks: list[torch.Tensor] = []
        self.ended = False

    def put(self, value: torch.Tensor) -> None:
        self.chunks.append(value.clone())

    def end(self) -> None:
        self.ended = True


def test_a_streamer_gets_the_tokens(lm, gpt2, tokenizer):
    streamer = Collect()
    with lm.generate(PROMPT, max_new_tokens=STEPS, streamer=streamer) as tracer:
        streamed = lm.generator.streamer.output.save()  # endoscope's own, beside it
        first = lm.lm_head.output.save()
        tokens = tracer.result.save()
    assert streamer.ended and len(streamer.chunks) == STEPS + 1
    assert torch.equal(streamer.chunks[0], streamed)
    prompt_ids, *new = streamer.chunks
    assert torch.equal(
        prompt_ids.reshape(1, -1), tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    )
    start = prompt_ids.numel()
    assert torch.equal(torch.cat([c.reshape(-1) for c in new]), tokens[0, start:])
    assert torch.equal(tokens, plain_generate(gpt2, tokenizer, PROMPT).sequences)
    assert first.shape[-1] == len(tokenizer)


def test_stopping_early_at_an_end_token_warns_nothing_and_keeps_values(
    lm, gpt2, tokenizer, collect_warnings
):
    baseline = plain_generate(gpt2, tokenizer, PROMPT, max_new_tokens=8)
    start = tokenizer(PROMPT, return_tensors="pt")["input_ids"].shape[1]
    end_token = int(baseline.sequences[0, start + 1])  # the second new token
    with collect_warnings() as found:
        with lm.generate(max_new_tokens=8, eos_token_id=end_token) as tracer:
            with tracer.invoke(PROMPT):
                logits = [].save()
                for _ in tracer.all():
                    logits.append(lm.lm_head.output[:, -1].save())
                after_loop = torch.ones(1).save()
            with tracer.invoke():
                first = lm.lm_head.output[:, -1].save()
                tokens = tracer.result.save()
    assert found == []
    steps_run = tokens.shape[1] - start
    assert steps_run < 8 and int(tokens[0, -1]) == end_token
    assert torch.equal(tokens[0], baseline.sequences[0, : start + steps_run])
    assert torch.equal(first, baseline.logits[0])
    assert len(logits) == steps_run
    for got, want in zip(logits, baseline.logits):
        assert torch.equal(got, want)
    assert torch.equal(after_loop, torch.ones(1))


def test_rows_ending_at_different_steps_are_padded_without_warnings(
    lm, gpt2, tokenizer, collect_warnings
):
    short = plain_generate(gpt2, tokenizer, PROMPTS[0], max_new_tokens=6).sequences
    start = tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"].shape[1]
    end_token = int(short[0, start])  # the first prompt ends at once
    with collect_warnings() as found:
        with lm.generate(PROMPTS, max_new_tokens=6, eos_token_id=end_token) as tracer:
            tokens = tracer.result.save()
    assert found == []
    assert lm._module.generation_config.pad_token_id is None  # the model is left as it was
    width = max(len(tokenizer(p)["input_ids"]) for p in PROMPTS)
    new = tokens[:, width:]
    # The first row ends at once and is filled with the pad token (end of text).
    assert int(new[0, 0]) == end_token
    assert new[0, 1:].eq(tokenizer.eos_token_id).all()
    # The second row is what it is alone, padded after its end if it ends too.
    alone = plain_generate(gpt2, tokenizer, PROMPTS[1], max_new_tokens=6, eos_token_id=end_token)
    count = alone.sequences.shape[1] - len(tokenizer(PROMPTS[1])["input_ids"])
    assert torch.equal(new[1, :count], alone.sequences[0, -count:])
    assert new[1, count:].eq(tokenizer.eos_token_id).all()


def test_generate_called_without_a_with_statement_generates_at_once(lm, gpt2, tokenizer):
    expected = plain_generate(gpt2, tokenizer, PROMPT).sequences
    ids = lm.generate(PROMPT, max_new_tokens=STEPS)  # as nnsight: no block, the ids
    assert torch.equal(ids, expected)
    assert torch.equal(lm.generate(PROMPT, max_new_tokens=STEPS, trace=False), expected)
    with lm.generate(PROMPT, max_new_tokens=STEPS) as tracer:
        tokens = tracer.result.save()
    assert torch.equal(tokens, expected)


def test_a_subclass_passing_generate_on_still_opens_a_trace(gpt2, tokenizer):
    class Mine(LanguageModel):
        def generate(self, *inputs, **kwargs):
            kwargs.setdefault("max_new_tokens", STEPS)
            return super().generate(*inputs, **kwargs)

    lm = Mine(gpt2, tokenizer=tokenizer)
    with lm.generate(PROMPT) as tracer:
        assert isinstance(tracer, InterleavingTracer)
        tokens = tracer.result.save()
    assert torch.equal(tokens, plain_generate(gpt2, tokenizer, PROMPT).sequences)
    assert torch.equal(lm.generate(PROMPT), tokens)


def test_trace_false_and_remote(lm, gpt2, tokenizer):
    encoded = tokenizer(PROMPT, return_tensors="pt")
    out = lm.trace(PROMPT, trace=False, remote=False)
    with torch.no_grad():
        assert torch.equal(out.logits, gpt2(**encoded).logits)
    for method in (lm.trace, lm.generate, lm.scan):
        with pytest.raises(NotImplementedError, match="remote=True"):
            method(PROMPT, remote=True)


def test_remote_local_trace_and_generate(lm, gpt2, tokenizer):
    """nnsight 0.8.1 (issue 17, point 6): remote="local" on trace and generate
    serializes the block, then runs it here; an unpicklable value from outside is
    pickle's TypeError before anything runs."""
    steps = 3
    with lm.generate(PROMPT, max_new_tokens=steps, remote="local") as tracer:
        tokens = tracer.result.save()
    expected = plain_generate(gpt2, tokenizer, PROMPT, max_new_tokens=steps).sequences
    assert torch.equal(tokens, expected)
    with lm.trace(PROMPT, remote="local"):
        logits = lm.lm_head.output.save()
    with torch.no_grad():
        assert torch.equal(logits, gpt2(**tokenizer(PROMPT, return_tensors="pt")).logits)
    handle = open(__file__)  # noqa: SIM115
    try:
        with pytest.raises(TypeError, match="`handle`.*cannot be serialized"):
            with lm.generate(PROMPT, max_new_tokens=2, remote="local"):
                assert handle is not None
    finally:
        handle.close()
