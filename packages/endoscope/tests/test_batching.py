"""Several invokes share one left-padded batch and each gets its prompt's own answers."""

from __future__ import annotations

import pytest
import torch

from endoscope import BatchingError, LanguageModel

# Different lengths on purpose: the short ones are padded on the left.
PROMPTS = ["Big Ben", "The Eiffel Tower is in", "The capital of Italy is"]


@pytest.fixture
def lm(gpt2, tokenizer) -> LanguageModel:
    return LanguageModel(gpt2, tokenizer=tokenizer)


def alone(gpt2, tokenizer, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, first block's output)`` of ``prompt`` run by itself."""
    encoded = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = gpt2(**encoded, output_hidden_states=True)
    return out.logits, out.hidden_states[1]


def test_each_invoke_gets_its_prompts_logits_alone(lm, gpt2, tokenizer):
    logits, blocks = [], []
    with lm.trace() as tracer:
        for prompt in PROMPTS:
            with tracer.invoke(prompt):
                blocks.append(lm.transformer.h[0].output.save())
                logits.append(lm.lm_head.output.save())
    width = max(len(tokenizer(p)["input_ids"]) for p in PROMPTS)
    for prompt, got_logits, got_block in zip(PROMPTS, logits, blocks):
        want_logits, want_block = alone(gpt2, tokenizer, prompt)
        n = want_logits.shape[1]
        assert got_logits.shape == (1, width, want_logits.shape[-1])
        torch.testing.assert_close(got_logits[:, width - n :], want_logits)
        torch.testing.assert_close(got_block[:, width - n :], want_block)


def test_batched_inputs_are_left_padded_with_masks_and_positions(lm, tokenizer):
    with lm.trace() as tracer:
        for prompt in PROMPTS:
            with tracer.invoke(prompt):
                pass
        with tracer.invoke():
            batch = lm.inputs[1].save()
    lengths = [len(tokenizer(p)["input_ids"]) for p in PROMPTS]
    width = max(lengths)
    assert batch["input_ids"].shape == (3, width)
    for row, (prompt, n) in enumerate(zip(PROMPTS, lengths)):
        assert batch["input_ids"][row, width - n :].tolist() == tokenizer(prompt)["input_ids"]
        assert batch["attention_mask"][row].tolist() == [0] * (width - n) + [1] * n
        assert batch["position_ids"][row].tolist() == [0] * (width - n) + list(range(n))


def test_unpadded_batches_count_positions_from_zero(lm, tokenizer):
    with lm.trace() as tracer:
        with tracer.invoke("Big Ben"):
            pass
        with tracer.invoke("Big Ben"):
            pass
        with tracer.invoke():
            batch = lm.inputs[1].save()
    n = len(tokenizer("Big Ben")["input_ids"])
    assert list(batch) == ["input_ids", "attention_mask", "position_ids"]
    assert batch["position_ids"].tolist() == [list(range(n))] * 2
    assert batch["attention_mask"].tolist() == [[1] * n] * 2


def test_a_model_without_position_ids_gets_none(tokenizer):
    class NoPositions(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(len(tokenizer), 4)

        def forward(self, input_ids, attention_mask=None):
            return self.embed(input_ids) * attention_mask[..., None]

    lm = LanguageModel(NoPositions(), tokenizer=tokenizer)
    with lm.trace() as tracer:
        with tracer.invoke("Big Ben"):
            pass
        with tracer.invoke(PROMPTS[1]):
            pass
        with tracer.invoke():
            batch = lm.inputs[1].save()
            out = lm.output.save()
    assert list(batch) == ["input_ids", "attention_mask"]
    assert out.shape[:2] == batch["input_ids"].shape
    assert out[0, 0].eq(0).all()  # the padded position is masked out


def test_an_invoke_with_a_list_contributes_several_rows(lm, gpt2, tokenizer):
    with lm.trace() as tracer:
        with tracer.invoke(PROMPTS[:2]):
            pair = lm.lm_head.output.save()
        with tracer.invoke(PROMPTS[2]):
            single = lm.lm_head.output.save()
        with tracer.invoke():
            everything = lm.lm_head.output.save()
    width = everything.shape[1]
    assert pair.shape[0] == 2 and single.shape[0] == 1 and everything.shape[0] == 3
    assert torch.equal(everything, torch.cat([pair, single]))
    for row, prompt in enumerate(PROMPTS):
        want, _ = alone(gpt2, tokenizer, prompt)
        n = want.shape[1]
        torch.testing.assert_close(everything[row : row + 1, width - n :], want)


def test_invokes_of_different_input_forms_batch_together(lm, gpt2, tokenizer):
    ids = tokenizer(PROMPTS[1])["input_ids"]
    encoded = tokenizer(PROMPTS[2], return_tensors="pt")
    results = []
    with lm.trace() as tracer:
        with tracer.invoke(PROMPTS[0]):
            results.append(lm.lm_head.output.save())
        with tracer.invoke(ids):
            results.append(lm.lm_head.output.save())
        with tracer.invoke(**encoded):
            results.append(lm.lm_head.output.save())
    for prompt, got in zip(PROMPTS, results):
        want, _ = alone(gpt2, tokenizer, prompt)
        torch.testing.assert_close(got[:, got.shape[1] - want.shape[1] :], want)


def replace_last(value: torch.Tensor):
    """A forward hook that sets the output's last position to ``value``."""

    def hook(module, args, output):
        output = output.clone()
        output[:, -1] = value
        return output

    return hook


def test_patching_across_prompts_of_different_lengths(lm, gpt2, tokenizer):
    """Copy the last position's block-0 output of one prompt into another's."""
    source, target = "The Eiffel Tower is in", "Big Ben"
    with lm.trace() as tracer:
        with tracer.invoke(source):
            donor = lm.transformer.h[0].output[:, -1].clone()
        with tracer.invoke(target):
            hidden = lm.transformer.h[0].output  # wait for block 0 (donor exists then)
            hidden[:, -1] = donor
            patched = lm.lm_head.output.save()

    _, hidden = alone(gpt2, tokenizer, source)
    handle = gpt2.transformer.h[0].register_forward_hook(replace_last(hidden[:, -1]))
    try:
        want, _ = alone(gpt2, tokenizer, target)
    finally:
        handle.remove()
    n = want.shape[1]
    torch.testing.assert_close(patched[:, -n:], want)


def test_user_position_ids_are_kept_and_padded(lm, gpt2, tokenizer):
    short = tokenizer("Big Ben", return_tensors="pt")
    positions = torch.arange(short["input_ids"].shape[1])[None] + 3
    with lm.trace() as tracer:
        with tracer.invoke(**short, position_ids=positions):
            got = lm.lm_head.output.save()
        with tracer.invoke(PROMPTS[1]):
            pass
    with torch.no_grad():
        want = gpt2(**short, position_ids=positions).logits
    torch.testing.assert_close(got[:, -want.shape[1] :], want)


def test_invokes_with_different_keywords_do_not_batch(lm, tokenizer):
    ids = tokenizer("Big Ben", return_tensors="pt")["input_ids"]
    with pytest.raises(BatchingError, match="different keyword arguments"):
        with lm.trace() as tracer:
            with tracer.invoke("Big Ben", labels=ids):
                pass
            with tracer.invoke("Big Ben"):
                pass


@pytest.fixture(scope="module")
def demo():
    """The demo model, wrapped, and the same weights loaded with plain transformers."""
    import endoscope
    from endoscope._demo import load_demo_transformers

    return endoscope.demo_model(), *load_demo_transformers()


def test_patching_before_the_donor_exists_on_the_demo_model(demo):
    """The natural form: the target invoke writes the donor's value before reading
    anything of its own, and waits until the donor invoke has made it."""
    lm, plain, tokenizer = demo
    clean, corrupt = "The Eiffel Tower is in the city of", "The Leaning Tower is in the city of"
    with lm.trace() as tracer:
        with tracer.invoke(clean):
            subject = lm.transformer.h[0].input[:, 1]
            late = lm.transformer.h[1].mlp.output[:, -1]
        with tracer.invoke(corrupt):
            lm.transformer.h[0].input[:, 1] = subject
            lm.transformer.h[1].mlp.output[:, -1] = late * 2
            patched = lm.lm_head.output.save()

    def embed(module, args):
        hidden = args[0].clone()
        hidden[1, 1] = hidden[0, 1]
        return (hidden, *args[1:])

    def mlp(module, args, output):
        output = output.clone()
        output[1, -1] = output[0, -1] * 2
        return output

    ids = torch.tensor([tokenizer(p)["input_ids"] for p in (clean, corrupt)])
    handles = [
        plain.transformer.h[0].register_forward_pre_hook(embed),
        plain.transformer.h[1].mlp.register_forward_hook(mlp),
    ]
    try:
        with torch.no_grad():
            want = plain(ids).logits
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(patched, want[1:])
    assert tokenizer.decode(patched[0, -1].argmax()) == tokenizer.decode(want[1, -1].argmax())


def _same_inputs(got, want) -> None:
    assert got[0] == want[0]
    assert list(got[1]) == list(want[1])
    for name, value in want[1].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(got[1][name], value), name
        else:
            assert got[1][name] == value, name


def test_invokes_text_is_tokenized_in_one_call_with_the_same_ids(lm, tokenizer):
    # Every form an invoke may bring, text between the others: one tokenizer call
    # for all the text, and each invoke's inputs exactly as prepared alone.
    ids = tokenizer("The capital of Italy is")["input_ids"]
    invokes = [
        (("Big Ben",), {}),
        ((["The Eiffel Tower is in", "Big Ben"],), {}),
        ((ids,), {}),
        ((torch.tensor([ids]),), {}),
        ((dict(tokenizer("Paris")),), {}),
        ((), {"input_ids": [ids]}),
        (("The capital of Italy is",), {"labels": [ids]}),
    ]
    want = [lm._prepare_inputs(*args, **kwargs) for args, kwargs in invokes]
    calls = []

    def counting(prompts):
        calls.append(list(prompts))
        return tokenizer(prompts)

    lm._tokenize = counting
    got = lm._prepare_invokes(invokes)
    assert calls == [["Big Ben", "The Eiffel Tower is in", "Big Ben", "The capital of Italy is"]]
    assert len(got) == len(want)
    for got_one, want_one in zip(got, want):
        _same_inputs(got_one, want_one)


def test_a_trace_of_text_invokes_tokenizes_once_and_keeps_each_prompts_values(lm, gpt2, tokenizer):
    calls = []

    def counting(prompts):
        calls.append(list(prompts))
        return tokenizer(prompts)

    lm._tokenize = counting
    blocks = []
    with lm.trace() as tracer:
        for prompt in PROMPTS:
            with tracer.invoke(prompt):
                blocks.append(lm.transformer.h[0].output.save())
    assert calls == [PROMPTS]
    for prompt, got in zip(PROMPTS, blocks):
        _, want = alone(gpt2, tokenizer, prompt)
        torch.testing.assert_close(got[:, got.shape[1] - want.shape[1] :], want)


def test_a_subclass_preparing_its_own_inputs_is_asked_per_invoke(gpt2, tokenizer):
    seen = []

    class Custom(LanguageModel):
        def _prepare_inputs(self, *args, **kwargs):
            seen.append(args[0])
            return super()._prepare_inputs(*args, **kwargs)

    lm = Custom(gpt2, tokenizer=tokenizer)
    with lm.trace() as tracer:
        for prompt in PROMPTS:
            with tracer.invoke(prompt):
                pass
    assert seen == PROMPTS
