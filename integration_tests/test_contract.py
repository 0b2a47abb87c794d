"""DESIGN.md's user-facing contract, bullet by bullet, through ``import endoscope`` only.

Every value endoscope hands out is compared with the same computation done on the same
weights with plain transformers and torch hooks (``gpt.ref``, a separately loaded copy
endoscope never touches). The central bullets run on both GPT-2s of the ``gpt``
fixture: a 4-layer GPT-2 built from a config with seeded random weights, and the demo
model shipped with endoscope. Comparisons are exact (``torch.equal``) wherever the two
sides do the same arithmetic; only left-padded batches, whose rows are computed with
padding around them, are compared to float32 rounding.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from plain_torch import hooked, record
from torch._subclasses.fake_tensor import FakeTensor

import endoscope
from endoscope import CONFIG, LanguageModel, NNsight

# ----------------------------------------------------------------------------- helpers


def user_frames(error: BaseException) -> list[traceback.FrameSummary]:
    """The traceback frames of ``error`` that are in this file."""
    return [f for f in traceback.extract_tb(error.__traceback__) if f.filename == __file__]


def library_frames(error: BaseException) -> list[str]:
    """The traceback frames of ``error`` inside endoscope's layers (``endoscope_*``).

    (The meta-package's own ``LanguageModel._interleave`` frame is not counted: it
    currently shows up in these tracebacks; see the report.)
    """
    frames = traceback.extract_tb(error.__traceback__)
    return [f.filename for f in frames if "endoscope_" in f.filename]


def record_calls(store: list[Any]) -> Callable[..., None]:
    """A forward hook that appends each call's output to ``store``."""

    def hook(module: Any, args: Any, output: Any) -> None:
        store.append(output)

    return hook


def zero(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(output)


def plain(gpt: Any, ids: torch.Tensor, **kwargs: Any) -> Any:
    """The plain model's output on ``ids``, with the all-ones mask endoscope passes."""
    with torch.no_grad():
        return gpt.ref(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)


def same(a: Any, b: Any) -> bool:
    """Exact equality of tensors inside tuples, lists and dicts."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and torch.equal(a.detach(), b.detach())
        )
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a is b or a == b


@pytest.fixture
def lm(gpt: Any) -> Any:
    """The fixture model's ``LanguageModel`` (weights loaded), without leftover edits.

    Tests take it as a parameter named like this module-level function: invokes must
    use the caller's local, never the global of the same name.
    """
    gpt.lm.dispatch()
    gpt.lm.clear_edits()
    return gpt.lm


# ---------------------------------------------------------- the block of the contract


def test_read_edit_replace_and_save(gpt: Any, lm: Any) -> None:
    prompt = gpt.prompts[0]
    with lm.trace(prompt) as tracer:
        hidden = lm.transformer.h[1].output.save()
        lm.transformer.h[2].mlp.output[:] = 0
        lm.transformer.h[3].output = lm.transformer.h[3].output * 2
        also = endoscope.save(lm.transformer.h[3].output)
        logits = lm.lm_head.output.save()
        result = tracer.result.save()
        scratch = hidden * 0  # not saved
    seen: dict[str, Any] = {}
    with hooked(
        (gpt.ref.transformer.h[1], record(seen, "hidden")),
        (gpt.ref.transformer.h[2].mlp, zero),
        (gpt.ref.transformer.h[3], lambda m, a, o: o * 2),
        (gpt.ref.transformer.h[3], record(seen, "replaced")),  # sees the doubled value
    ):
        expected = plain(gpt, gpt.ids(prompt))
    assert torch.equal(hidden, seen["hidden"])
    assert torch.equal(also, seen["replaced"])  # a read after a write sees the new value
    assert torch.equal(logits, expected.logits)
    assert torch.equal(result.logits, expected.logits)
    assert type(result) is type(expected)
    with pytest.raises(NameError, match="'scratch' was assigned inside the traced block"):
        print(scratch)  # unsaved locals do not leave the block


def test_language_model_from_a_path_or_a_model_object(gpt: Any) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lazy = LanguageModel(str(gpt.path))
    eager = LanguageModel(str(gpt.path), dispatch=True)
    hf_model = AutoModelForCausalLM.from_pretrained(gpt.path, local_files_only=True).eval()
    wrapped = LanguageModel(hf_model, tokenizer=AutoTokenizer.from_pretrained(gpt.path))
    assert not lazy.dispatched and eager.dispatched and wrapped.dispatched
    assert repr(lazy) == repr(eager) == repr(wrapped) == repr(gpt.ref)  # the tree, before loading
    prompt = gpt.prompts[0]
    expected = plain(gpt, gpt.ids(prompt)).logits
    for model in (lazy, eager, wrapped):
        with model.trace(prompt):
            logits = model.lm_head.output.save()
        assert torch.equal(logits, expected)
    assert lazy.dispatched


def test_values_are_real_tensors_inside_the_block(gpt: Any, lm: Any) -> None:
    with lm.trace(gpt.prompts[1]):
        hidden = lm.transformer.h[0].output
        norm = hidden.norm().save()
        kind = type(hidden).__name__
        kind = endoscope.save(kind)
    seen: dict[str, Any] = {}
    with hooked((gpt.ref.transformer.h[0], record(seen, "h"))):
        plain(gpt, gpt.ids(gpt.prompts[1]))
    assert kind == "Tensor"
    assert torch.equal(norm, seen["h"].norm())


# -------------------------------------------------------------------------- invokes


def test_invokes_batch_into_one_forward_and_see_their_rows(gpt: Any, lm: Any) -> None:
    clean, corrupt = gpt.pair
    forwards: list[Any] = []
    handle = lm.register_forward_pre_hook(lambda m, a: forwards.append(1))
    try:
        with lm.trace() as tracer:
            with tracer.invoke(clean):
                first = lm.transformer.h[1].output.save()
            with tracer.invoke(corrupt):
                second = lm.transformer.h[1].output.save()
                second_logits = lm.lm_head.output.save()
            with tracer.invoke([clean, corrupt]):
                pair = lm.transformer.h[1].output.save()
            with tracer.invoke():
                everything = lm.transformer.h[1].output.save()
    finally:
        handle.remove()
    assert len(forwards) == 1
    seen: dict[str, Any] = {}
    with hooked((gpt.ref.transformer.h[1], record(seen, "h"))):
        expected = plain(gpt, gpt.ids(clean, corrupt, clean, corrupt))
    assert torch.equal(first, seen["h"][0:1])
    assert torch.equal(second, seen["h"][1:2])
    assert torch.equal(second_logits, expected.logits[1:2])
    assert torch.equal(pair, seen["h"][2:4])
    assert torch.equal(everything, seen["h"])


def test_activation_patching_across_invokes(gpt: Any, lm: Any) -> None:
    clean, corrupt = gpt.pair
    with lm.trace() as tracer:
        with tracer.invoke(clean):
            clean_last = lm.transformer.h[1].output[:, -1]
        with tracer.invoke(corrupt):
            hidden = lm.transformer.h[1].output
            hidden[:, -1] = clean_last
            patched = lm.lm_head.output.save()

    def patch(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[1, -1] = output[0, -1]
        return output

    with hooked((gpt.ref.transformer.h[1], patch)):
        expected = plain(gpt, gpt.ids(clean, corrupt)).logits[1:2]
    unpatched = plain(gpt, gpt.ids(clean, corrupt)).logits[1:2]
    assert torch.equal(patched, expected)
    assert not torch.equal(patched, unpatched)


def test_invokes_use_the_callers_locals_over_module_globals(gpt: Any) -> None:
    # ``lm`` is also this module's fixture function, and ``plain`` a helper.
    lm, plain = gpt.fresh(), "a local"
    clean, corrupt = gpt.pair
    with lm.trace() as tracer:
        with tracer.invoke(clean):
            clean_hidden = lm.transformer.h[0].output
        with tracer.invoke(corrupt):
            hidden = lm.transformer.h[0].output
            hidden[:] = clean_hidden
            logits = lm.lm_head.output.save()
            seen_plain = endoscope.save(plain)
    assert seen_plain == "a local"
    # The corrupt row continues from the clean row's layer-0 output: it becomes the clean row.
    expected = globals()["plain"](gpt, gpt.ids(clean, corrupt)).logits
    assert torch.equal(logits[0], expected[0])


def test_left_padded_batch_equals_one_prompt_at_a_time(gpt: Any, lm: Any) -> None:
    prompts = gpt.prompts
    rows: list[torch.Tensor] = []
    with lm.trace() as tracer:
        for prompt in prompts:
            with tracer.invoke(prompt):
                rows.append(lm.lm_head.output.save())
    for prompt, row in zip(prompts, rows):
        alone = plain(gpt, gpt.ids(prompt)).logits
        n = alone.shape[1]
        assert row.shape[0] == 1 and row.shape[1] == max(len(gpt.ids(p)[0]) for p in prompts)
        torch.testing.assert_close(row[:, -n:], alone)


def test_patching_with_a_barrier_on_the_same_module(gpt: Any, lm: Any) -> None:
    clean, corrupt = gpt.pair
    with lm.trace() as tracer:
        barrier = tracer.barrier(2)
        with tracer.invoke(clean):
            clean_last = lm.transformer.h[2].output[:, -1]
            barrier()
        with tracer.invoke(corrupt):
            barrier()
            lm.transformer.h[2].output[:, -1] = clean_last
            patched = lm.lm_head.output.save()

    def patch(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[1, -1] = output[0, -1]
        return output

    with hooked((gpt.ref.transformer.h[2], patch)):
        expected = plain(gpt, gpt.ids(clean, corrupt)).logits[1:2]
    assert torch.equal(patched, expected)


# ----------------------------------------------------------- .output / .input / .inputs


def test_input_and_inputs_get(gpt: Any, lm: Any) -> None:
    prompt = gpt.prompts[0]
    with lm.trace(prompt):
        inputs = lm.transformer.h[1].inputs.save()
        first = lm.transformer.h[1].input.save()
        head_input = lm.lm_head.input.save()
    args, kwargs = inputs
    seen: dict[str, Any] = {}

    def keep(module: Any, a: Any, k: Any) -> None:
        seen["args"], seen["kwargs"] = a, k

    with hooked(
        (gpt.ref.lm_head, lambda m, a, o: seen.setdefault("head", a[0])),
        pre=((gpt.ref.transformer.h[1], keep),),
    ):
        plain(gpt, gpt.ids(prompt))
    assert torch.equal(first, seen["args"][0])
    assert torch.equal(args[0], seen["args"][0])
    assert len(args) == len(seen["args"])
    assert [type(a) for a in args] == [type(a) for a in seen["args"]]
    assert kwargs.keys() == seen["kwargs"].keys()
    assert same(kwargs["position_ids"], seen["kwargs"]["position_ids"])
    assert torch.equal(head_input, seen["head"])


def test_input_and_inputs_set(gpt: Any, lm: Any) -> None:
    prompt = gpt.prompts[0]
    with lm.trace(prompt):
        lm.transformer.h[1].input = lm.transformer.h[1].input * 0.5
        args, kwargs = lm.transformer.h[2].inputs
        lm.transformer.h[2].inputs = ((args[0] + 1, *args[1:]), kwargs)
        logits = lm.lm_head.output.save()

    def halve(module: Any, a: Any, k: Any) -> Any:
        return (a[0] * 0.5, *a[1:]), k

    def plus_one(module: Any, a: Any, k: Any) -> Any:
        return (a[0] + 1, *a[1:]), k

    pre = ((gpt.ref.transformer.h[1], halve), (gpt.ref.transformer.h[2], plus_one))
    with hooked(pre=pre):
        expected = plain(gpt, gpt.ids(prompt)).logits
    assert torch.equal(logits, expected)


def test_output_of_a_tuple_returning_module(gpt: Any, lm: Any) -> None:
    prompt = gpt.prompts[2]
    with lm.trace(prompt):
        attn = lm.transformer.h[0].attn.output
        lm.transformer.h[0].attn.output = (attn[0] * 3, *attn[1:])
        kind = endoscope.save(type(attn))
        logits = lm.lm_head.output.save()
    with hooked((gpt.ref.transformer.h[0].attn, lambda m, a, o: (o[0] * 3, *o[1:]))):
        expected = plain(gpt, gpt.ids(prompt)).logits
    assert kind is tuple
    assert torch.equal(logits, expected)


def test_out_of_order_access_fails_at_the_users_line(gpt: Any, lm: Any) -> None:
    with lm.trace(gpt.prompts[0]):
        lm.lm_head.output.save()  # the model's order is known after one trace
    with pytest.raises(endoscope.OutOfOrderError) as caught:
        with lm.trace(gpt.prompts[0]):
            lm.transformer.h[2].output.save()
            early = lm.transformer.h[1].output.save()  # noqa: F841
    assert "model.transformer.h.1.output" in str(caught.value)
    assert user_frames(caught.value)[-1].line == (
        "early = lm.transformer.h[1].output.save()  # noqa: F841"
    )
    with lm.trace(gpt.prompts[0]):  # the model works as before
        after = lm.transformer.h[2].output.save()
    seen: dict[str, Any] = {}
    with hooked((gpt.ref.transformer.h[2], record(seen, "h"))):
        plain(gpt, gpt.ids(gpt.prompts[0]))
    assert torch.equal(after, seen["h"])


# ------------------------------------------------------------------------ Envoy tree


def test_tree_mirrors_the_module_tree(gpt: Any, lm: Any, capsys: pytest.CaptureFixture) -> None:
    print(lm)
    assert capsys.readouterr().out == repr(gpt.ref) + "\n"
    expected = ["model" + (f".{name}" if name else "") for name, _ in gpt.ref.named_modules()]
    assert [envoy.path for envoy in lm.modules()] == expected
    assert [path for path, _ in lm.named_modules()] == expected
    assert all(path == envoy.path for path, envoy in lm.named_modules())
    block = lm.transformer.h[1]
    assert lm.get("transformer.h.1") is block
    assert lm.get("model.transformer.h.1") is block
    assert lm.transformer.get("h.1") is block
    assert lm["transformer.h.1.mlp"] is block.mlp
    assert len(lm.transformer.h) == gpt.n_layer
    assert list(lm.transformer.h) == [lm.transformer.h[i] for i in range(gpt.n_layer)]
    assert lm.transformer.h[-1] is lm.transformer.h[gpt.n_layer - 1]
    # Other attributes come from the module.
    assert torch.equal(lm.lm_head.weight, gpt.ref.lm_head.weight)
    assert lm.config.n_layer == gpt.n_layer


def test_a_typo_names_the_nearest_modules(gpt: Any, lm: Any) -> None:
    with pytest.raises(AttributeError) as caught:
        lm.transformr
    assert "'transformer'" in str(caught.value)
    with pytest.raises(AttributeError) as caught:
        lm.transformer.h[0].mpl
    message = str(caught.value)
    assert "'mlp'" in message and "ln_1" in message  # nearest name and the children
    with pytest.raises(AttributeError) as caught:
        lm.get("transformer.h.0.atn")
    assert "'attn'" in str(caught.value)
    with pytest.raises(AttributeError) as caught:
        with lm.trace(gpt.prompts[0]):
            lm.transformer.h[0].mlp.c_fcc.output.save()
    assert "'c_fc'" in str(caught.value)
    assert user_frames(caught.value)[-1].line == "lm.transformer.h[0].mlp.c_fcc.output.save()"


def test_rename_aliases(gpt: Any, capsys: pytest.CaptureFixture) -> None:
    rename = {"transformer": "model", "transformer.h": "layers", "mlp": ["ffn", "feed_forward"]}
    model = gpt.fresh(rename=rename)
    assert model.model is model.transformer
    assert model.model.h[1] is model.transformer.h[1]
    assert model.layers[1] is model.transformer.h[1]  # a dotted path is mounted on the root
    assert model.layers[1].ffn is model.transformer.h[1].mlp
    assert model.layers[1].feed_forward is model.transformer.h[1].mlp
    with model.trace(gpt.prompts[0]):
        ffn = model.layers[1].ffn.output.save()
        model.layers[2].ffn.output[:] = 0
        logits = model.lm_head.output.save()
    seen: dict[str, Any] = {}
    with hooked(
        (gpt.ref.transformer.h[1].mlp, record(seen, "mlp")), (gpt.ref.transformer.h[2].mlp, zero)
    ):
        expected = plain(gpt, gpt.ids(gpt.prompts[0])).logits
    assert torch.equal(ffn, seen["mlp"])
    assert torch.equal(logits, expected)
    assert model.layers[1] is model.transformer.h[1]  # still, after loading the weights
    print(model)
    assert "layers" in capsys.readouterr().out


def heads_of(x: torch.Tensor, n_head: int) -> torch.Tensor:
    return x.view(*x.shape[:-1], n_head, x.shape[-1] // n_head)


class Projection(endoscope.Envoy):
    """An Envoy for GPT-2's ``Conv1D``: its input seen per attention head."""

    n_head = 4

    @endoscope.eproperty(key="input")
    @endoscope.requires_input
    def heads(self) -> Any:
        """The first input as ``[batch, tokens, heads, head_dim]`` (a view: edits reach it)."""

    @heads.preprocess
    def heads(self, value: Any) -> torch.Tensor:
        (x, *_), _ = value
        return heads_of(x, self.n_head)

    @heads.postprocess
    def heads(self, value: torch.Tensor) -> Any:
        return ((value.flatten(-2),), {})

    @endoscope.eproperty(key="input")
    @endoscope.requires_input
    def head_copy(self) -> Any:
        """A copy of the input per head; in-place edits are swapped in by ``transform``."""

    @head_copy.preprocess
    def head_copy(self, value: Any) -> torch.Tensor:
        (x, *_), _ = value
        return heads_of(x.clone(), self.n_head)

    @head_copy.transform
    def head_copy(value: torch.Tensor) -> Any:
        return ((value.flatten(-2),), {})

    @endoscope.eproperty(key="output")
    @endoscope.requires_output
    def doubled(self) -> Any:
        """The output, doubled (reading only)."""

    @doubled.preprocess
    def doubled(self, value: torch.Tensor) -> torch.Tensor:
        return value * 2


def test_envoys_mapping_and_custom_eproperties(gpt: Any) -> None:
    from transformers.pytorch_utils import Conv1D

    n_head = gpt.ref.config.n_head
    model = gpt.fresh(envoys={Conv1D: Projection})
    assert isinstance(model.transformer.h[0].attn.c_proj, Projection)
    assert isinstance(model.transformer.h[0].mlp.c_fc, Projection)
    assert type(model.transformer.h[0].attn) is endoscope.Envoy
    assert n_head == Projection.n_head
    prompt = gpt.prompts[0]
    with model.trace(prompt):
        before = model.transformer.h[0].attn.c_proj.heads.clone().save()
        model.transformer.h[0].attn.c_proj.heads[:, :, 0] = 0  # a view: edits the input
        model.transformer.h[1].attn.c_proj.head_copy[:, :, 1] = 0  # a copy: transform
        heads = model.transformer.h[2].attn.c_proj.heads
        model.transformer.h[2].attn.c_proj.heads = heads * 2  # postprocess
        doubled = model.transformer.h[3].mlp.c_fc.doubled.save()
        logits = model.lm_head.output.save()

    def zero_head(head: int) -> Callable[..., Any]:
        def hook(module: Any, args: Any, kwargs: Any) -> Any:
            x = heads_of(args[0].clone(), n_head)
            x[:, :, head] = 0
            return (x.flatten(-2), *args[1:]), kwargs

        return hook

    def double(module: Any, args: Any, kwargs: Any) -> Any:
        return (args[0] * 2, *args[1:]), kwargs

    seen: dict[str, Any] = {}

    def keep(module: Any, args: Any, kwargs: Any) -> None:
        seen["c_proj"] = args[0].clone()

    h = gpt.ref.transformer.h
    with hooked(
        (h[3].mlp.c_fc, record(seen, "c_fc")),
        pre=(
            (h[0].attn.c_proj, keep),
            (h[0].attn.c_proj, zero_head(0)),
            (h[1].attn.c_proj, zero_head(1)),
            (h[2].attn.c_proj, double),
        ),
    ):
        expected = plain(gpt, gpt.ids(prompt)).logits
    assert torch.equal(before, heads_of(seen["c_proj"], n_head))
    assert torch.equal(doubled, seen["c_fc"] * 2)
    assert torch.equal(logits, expected)


# --------------------------------------------------------------------------- .source


def test_source_names_each_call_site(gpt: Any, lm: Any) -> None:
    assert lm.lm_head.source.operations == ["F_linear_0"]
    mlp = lm.transformer.h[0].mlp.source
    assert mlp.operations == ["self_c_fc_0", "self_act_0", "self_c_proj_0", "self_dropout_0"]
    text = str(mlp)
    assert "self_c_fc_0" in text and "hidden_states = self.c_fc(hidden_states)" in text
    attention = lm.transformer.h[0].attn.source.operations
    # self.c_attn(...) is called twice in the source: the cross-attention branch is _0.
    assert attention.index("self_c_attn_0") < attention.index("self_c_attn_1")
    assert {"transpose_0", "transpose_1", "self_c_proj_0"} <= set(attention)
    assert lm.transformer.h[0].mlp.act.source.operations == [
        "math_sqrt_0",
        "torch_pow_0",
        "torch_tanh_0",
    ]


def test_source_read_and_write_one_operation(gpt: Any, lm: Any) -> None:
    prompt = gpt.prompts[1]
    with lm.trace(prompt):
        qkv_input = lm.transformer.h[1].attn.source.self_c_attn_1.input.save()
        qkv = lm.transformer.h[1].attn.source.self_c_attn_1.output.save()
        args, kwargs = lm.transformer.h[1].attn.source.self_c_proj_0.inputs
        projected_in = args[0].save()
        lm.transformer.h[2].mlp.source.self_act_0.output = torch.zeros_like(
            lm.transformer.h[2].mlp.source.self_act_0.output
        )
        lm.transformer.h[3].mlp.act.source.torch_tanh_0.output[:] = 1
        head = lm.lm_head.source.F_linear_0.output.save()
        logits = lm.lm_head.output.save()
    seen: dict[str, Any] = {}
    h = gpt.ref.transformer.h

    def keep(name: str) -> Callable[..., None]:
        def hook(module: Any, a: Any, k: Any) -> None:
            seen[name] = a[0]

        return hook

    def tanh_one(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        return 0.5 * x * (1.0 + torch.ones_like(x))

    with hooked(
        (h[1].attn.c_attn, record(seen, "qkv")),
        (h[2].mlp.act, zero),
        (h[3].mlp.act, tanh_one),
        pre=((h[1].attn.c_attn, keep("qkv_in")), (h[1].attn.c_proj, keep("proj_in"))),
    ):
        expected = plain(gpt, gpt.ids(prompt)).logits
    assert torch.equal(qkv, seen["qkv"])
    assert torch.equal(qkv_input, seen["qkv_in"])
    assert torch.equal(projected_in, seen["proj_in"])
    assert torch.equal(logits, expected)
    assert torch.equal(head, expected)


def test_recursive_source(eager_gpt2_path: Path) -> None:
    model = endoscope.LanguageModel(str(eager_gpt2_path), attn_implementation="eager")
    # Names are known before the weights load (the tree is on the meta device).
    names = model.transformer.h[1].attn.source.self__upcast_and_reordered_attn_0.source
    assert {"torch_baddbmm_0", "nn_functional_softmax_0"} <= set(names.operations)
    model.dispatch()
    prompt = "The capital of France is"
    with model.trace(prompt):
        helper = model.transformer.h[1].attn.source.self__upcast_and_reordered_attn_0
        probs = helper.source.nn_functional_softmax_0.output.save()
        helper = model.transformer.h[2].attn.source.self__upcast_and_reordered_attn_0
        helper.source.nn_functional_softmax_0.output = torch.zeros_like(probs)
        logits = model.lm_head.output.save()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = AutoModelForCausalLM.from_pretrained(
        eager_gpt2_path, local_files_only=True, attn_implementation="eager"
    ).eval()
    ids = torch.tensor([AutoTokenizer.from_pretrained(eager_gpt2_path)(prompt)["input_ids"]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        attentions = ref(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
        assert torch.equal(probs, attentions[1])
        # The softmax's result goes through attn_dropout next: zeroing there is the same.
        with hooked((ref.transformer.h[2].attn.attn_dropout, zero)):
            expected = ref(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(logits, expected)


# ----------------------------------------------------------------------------- cache


def plain_outputs(gpt: Any, ids: torch.Tensor, *, inputs: bool = False) -> dict[str, Any]:
    """Every module's output (or ``(args, kwargs)``) on ``ids``, keyed like a cache."""
    seen: dict[str, Any] = {}
    hooks, pre = [], []
    for name, module in gpt.ref.named_modules():
        path = "model" + (f".{name}" if name else "")
        if inputs:

            def keep(m: Any, a: Any, k: Any, path: str = path) -> None:
                seen[path] = (a, k)

            pre.append((module, keep))
        else:
            hooks.append((module, record(seen, path)))
    with hooked(*hooks, pre=tuple(pre)):
        plain(gpt, ids)
    return seen


def test_cache_every_module(gpt: Any, lm: Any) -> None:
    prompt = gpt.prompts[0]
    with lm.trace(prompt) as tracer:
        cache = tracer.cache()
    expected = plain_outputs(gpt, gpt.ids(prompt))
    assert set(cache.keys()) == set(expected)  # every module that ran (not the ModuleList)
    for path, output in expected.items():
        if path in ("model", "model.transformer"):  # ModelOutputs: logits, last hidden state
            assert torch.equal(cache[path].output[0], output[0])
        else:
            assert same(cache[path].output, output), path
    for i in range(gpt.n_layer):
        assert torch.equal(
            cache.model.transformer.h[i].output, expected[f"model.transformer.h.{i}"]
        )
    assert torch.equal(
        cache.model.transformer.h[0].mlp.act.output, expected["model.transformer.h.0.mlp.act"]
    )


def test_cache_options_and_interventions(gpt: Any, lm: Any) -> None:
    prompt = gpt.prompts[0]
    blocks = list(lm.transformer.h)
    with lm.trace(prompt) as tracer:
        cache = tracer.cache(modules=[blocks[1], "transformer.h.2"], include_inputs=True)
        half = tracer.cache(modules=["lm_head"], dtype=torch.float16, include_output=True)
        attached = tracer.cache(modules=["transformer.h.1"], detach=False, device=None)
        lm.transformer.h[1].output[:] = 1
    assert sorted(cache.keys()) == ["model.transformer.h.1", "model.transformer.h.2"]
    ones = torch.ones_like(cache.model.transformer.h[1].output)
    assert torch.equal(cache.model.transformer.h[1].output, ones)  # after the intervention
    assert torch.equal(cache.model.transformer.h[2].input, ones)
    args, kwargs = cache.model.transformer.h[2].inputs
    assert torch.equal(args[0], ones) and "position_ids" in kwargs

    def set_one(module: Any, a: Any, output: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(output)

    with hooked((gpt.ref.transformer.h[1], set_one)):
        logits = plain(gpt, gpt.ids(prompt)).logits
    assert half["model.lm_head"].output.dtype == torch.float16
    assert torch.equal(half["model.lm_head"].output, logits.half())
    assert not cache.model.transformer.h[1].output.requires_grad
    assert attached.model.transformer.h[1].output.requires_grad is torch.is_grad_enabled()


def test_cache_streams_to_disk(gpt: Any, lm: Any, tmp_path: Path) -> None:
    prompt = gpt.prompts[1]
    directory = tmp_path / "activations"
    with lm.trace(prompt) as tracer:
        cache = tracer.cache(modules=list(lm.transformer.h), directory=directory)
    assert list(directory.rglob("*.safetensors"))
    expected = plain_outputs(gpt, gpt.ids(prompt))
    for i in range(gpt.n_layer):
        path = f"model.transformer.h.{i}"
        assert torch.equal(cache.model.transformer.h[i].output, expected[path])


# ------------------------------------------------------------------------ generation


def plain_generate(gpt: Any, prompt: str, *hooks: Any, n: int = 3) -> tuple[Any, list[Any]]:
    """Plain greedy ``generate`` of exactly ``n`` tokens; its result and lm_head's outputs."""
    calls: list[Any] = []
    ids = gpt.ids(prompt)
    with hooked((gpt.ref.lm_head, record_calls(calls)), *hooks), torch.no_grad():
        tokens = gpt.ref.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=gpt.tokenizer.eos_token_id,
        )
    return tokens, calls


def test_generate_iter_and_result(gpt: Any, lm: Any) -> None:
    prompt = gpt.prompts[0]
    with lm.generate(prompt, max_new_tokens=3, min_new_tokens=3) as tracer:
        steps = [].save()
        for _step in tracer.iter[0:3]:
            steps.append(lm.lm_head.output[:, -1])
        tokens = tracer.result.save()
    expected, calls = plain_generate(gpt, prompt)
    assert torch.equal(tokens, expected)
    assert len(steps) == len(calls) == 3
    for got, call in zip(steps, calls):
        assert torch.equal(got, call[:, -1])
    # Greedy: the argmax read at each step is the token generated there (min_new_tokens
    # rules out the end token).
    n, eos = gpt.ids(prompt).shape[1], gpt.tokenizer.eos_token_id
    picks = [int(s[0].index_fill(0, torch.tensor([eos]), float("-inf")).argmax()) for s in steps]
    assert picks == expected[0, n:].tolist()


def test_generate_iter_slice_all_and_next(gpt: Any, lm: Any) -> None:
    prompt = gpt.prompts[1]
    _, calls = plain_generate(gpt, prompt)
    with lm.generate(prompt, max_new_tokens=3, min_new_tokens=3) as tracer:
        later = [].save()
        for _step in tracer.iter[1:3]:
            later.append(lm.transformer.h[0].output[:, -1])
    with lm.generate(prompt, max_new_tokens=3, min_new_tokens=3) as tracer:
        first = lm.lm_head.output.save()
        tracer.next()
        second = lm.lm_head.output.save()
    with lm.generate(prompt, max_new_tokens=3, min_new_tokens=3) as tracer:
        every = [].save()
        for _step in tracer.all():
            every.append(lm.lm_head.output)
    h0: list[Any] = []
    with hooked((gpt.ref.transformer.h[0], record_calls(h0))):
        plain_generate(gpt, prompt)
    assert [torch.equal(a, b[:, -1]) for a, b in zip(later, h0[1:3])] == [True, True]
    assert torch.equal(first, calls[0]) and torch.equal(second, calls[1])
    assert len(every) == 3 and all(map(torch.equal, every, calls))


def test_generate_intervention_on_one_step_and_on_every_step(gpt: Any, lm: Any) -> None:
    prompt = gpt.prompts[0]
    with lm.generate(prompt, max_new_tokens=3, min_new_tokens=3) as tracer:
        for _step in tracer.iter[1]:
            lm.transformer.h[1].output[:, -1] = 0
        one = tracer.result.save()
    with lm.generate(max_new_tokens=3, min_new_tokens=3) as tracer:
        with tracer.invoke(prompt):
            for _step in tracer.all():
                lm.transformer.h[1].mlp.output *= 2
        with tracer.invoke():
            every = tracer.result.save()

    count = [0]

    def on_step_one(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        count[0] += 1
        if count[0] != 2:
            return output
        output = output.clone()
        output[:, -1] = 0
        return output

    expected_one, _ = plain_generate(gpt, prompt, (gpt.ref.transformer.h[1], on_step_one))
    doubled = (gpt.ref.transformer.h[1].mlp, lambda m, a, o: o * 2)
    expected_every, _ = plain_generate(gpt, prompt, doubled)
    assert torch.equal(one, expected_one)
    assert torch.equal(every, expected_every)


# --------------------------------------------------------------------------- control


def test_stop_ends_the_forward_early(gpt: Any, lm: Any) -> None:
    prompt = gpt.prompts[0]
    head_calls: list[Any] = []
    handle = lm.lm_head.register_forward_hook(record_calls(head_calls))
    try:
        with lm.trace(prompt) as tracer:
            hidden = lm.transformer.h[1].output.save()
            tracer.stop()
            after = 1  # not reached
    finally:
        handle.remove()
    seen: dict[str, Any] = {}
    with hooked((gpt.ref.transformer.h[1], record(seen, "h"))):
        plain(gpt, gpt.ids(prompt))
    assert torch.equal(hidden, seen["h"])
    assert head_calls == []  # the model did not run past layer 1
    assert "after" not in locals()


def test_skip_bypasses_a_module(gpt: Any, lm: Any) -> None:
    prompt = gpt.prompts[2]
    mlp_calls: list[Any] = []
    handle = lm.transformer.h[1].mlp.register_forward_hook(record_calls(mlp_calls))
    try:
        with lm.trace(prompt):
            lm.transformer.h[1].skip(lm.transformer.h[1].input)
            lm.transformer.h[2].mlp.skip(torch.zeros_like(lm.transformer.h[2].mlp.input))
            logits = lm.lm_head.output.save()
    finally:
        handle.remove()
    identity = (gpt.ref.transformer.h[1], lambda m, a, o: a[0])
    with hooked(identity, (gpt.ref.transformer.h[2].mlp, zero)):
        expected = plain(gpt, gpt.ids(prompt)).logits
    assert mlp_calls == []  # the skipped block's children never ran
    assert torch.equal(logits, expected)


# ------------------------------------------------------------------------- gradients


def test_gradients(gpt: Any, lm: Any) -> None:
    prompt = gpt.prompts[0]
    with lm.trace(prompt):
        first = lm.transformer.h[0].output
        second = lm.transformer.h[2].output
        logits = lm.lm_head.output
        loss = logits[0, -1].log_softmax(-1).max()
        with loss.backward():
            g_second = second.grad.save()
            second.grad = second.grad * 3  # changes the rest of the backward pass
            g_first = first.grad.save()
    lm.zero_grad(set_to_none=True)

    seen: dict[str, Any] = {}
    with hooked(
        (gpt.ref.transformer.h[0], record(seen, "first")),
        (gpt.ref.transformer.h[2], record(seen, "second")),
    ):
        expected = gpt.ref(
            input_ids=gpt.ids(prompt), attention_mask=torch.ones_like(gpt.ids(prompt))
        )
    seen["first"].retain_grad()

    def triple(grad: torch.Tensor) -> torch.Tensor:
        seen["second grad"] = grad
        return grad * 3

    seen["second"].register_hook(triple)
    expected.logits[0, -1].log_softmax(-1).max().backward()
    gpt.ref.zero_grad(set_to_none=True)
    assert g_second.abs().sum() > 0
    assert torch.equal(g_second, seen["second grad"])
    assert torch.equal(g_first, seen["first"].grad)


def test_a_step_that_never_runs_fails_at_the_users_line(gpt: Any, lm: Any) -> None:
    with pytest.raises(endoscope.MissedProviderError) as caught:
        with lm.generate(gpt.prompts[0], max_new_tokens=2, min_new_tokens=2) as tracer:
            for _step in tracer.iter[0:4]:
                lm.lm_head.output.save()
    assert "model.lm_head.output.i2" in str(caught.value)
    assert user_frames(caught.value)[-1].line == "lm.lm_head.output.save()"


# ------------------------------------------------------------- edit, scan, session


def test_edit_copy_inplace_and_clear_edits(gpt: Any, lm: Any) -> None:
    prompt = gpt.prompts[0]
    ids = gpt.ids(prompt)
    with lm.edit() as (_, edited):
        edited.transformer.h[1].mlp.output[:] = 0
    with edited.trace(prompt):
        seen_by_edit = edited.transformer.h[1].mlp.output.save()
        edited_logits = edited.lm_head.output.save()
    with lm.trace(prompt):
        original = lm.lm_head.output.save()
    with hooked((gpt.ref.transformer.h[1].mlp, zero)):
        expected_edit = plain(gpt, ids).logits
    assert torch.equal(seen_by_edit, torch.zeros_like(seen_by_edit))  # edits run first
    assert torch.equal(edited_logits, expected_edit)
    assert torch.equal(original, plain(gpt, ids).logits)

    with lm.edit(inplace=True) as tracer:
        lm.transformer.h[2].output = lm.transformer.h[2].output * 2
    assert tracer.target is lm
    for _ in range(2):  # every later trace
        with lm.trace(prompt):
            twice = lm.lm_head.output.save()
        with hooked((gpt.ref.transformer.h[2], lambda m, a, o: o * 2)):
            assert torch.equal(twice, plain(gpt, ids).logits)
    lm.clear_edits()
    with lm.trace(prompt):
        cleared = lm.lm_head.output.save()
    assert torch.equal(cleared, plain(gpt, ids).logits)


def test_scan_learns_shapes_without_computing(gpt: Any) -> None:
    model = gpt.fresh()  # weights not loaded: the scan does not need them
    prompt = gpt.prompts[1]
    with model.scan(prompt) as tracer:
        shape = model.transformer.h[1].mlp.c_fc.output.shape.save()
        hidden = model.transformer.h[1].output.save()
    assert not model.dispatched
    assert isinstance(hidden, FakeTensor)
    expected = plain_outputs(gpt, gpt.ids(prompt))
    assert hidden.shape == expected["model.transformer.h.1"].shape
    assert shape == expected["model.transformer.h.1.mlp.c_fc"].shape
    for path, output in expected.items():
        if isinstance(output, torch.Tensor):
            spec = tracer.shapes[path]["output"]
            assert (spec.shape, spec.dtype) == (output.shape, output.dtype), path
    with pytest.raises(RuntimeError) as caught:
        with model.scan(prompt):
            model.transformer.h[1].output[:] = torch.zeros(3, 3)
    assert user_frames(caught.value)[-1].line == (
        "model.transformer.h[1].output[:] = torch.zeros(3, 3)"
    )


def test_session_values_flow_between_traces(gpt: Any, lm: Any) -> None:
    clean, corrupt = gpt.pair
    with lm.session():
        with lm.trace(clean):
            hidden = lm.transformer.h[1].output  # not saved: still usable in the session
        with lm.trace(corrupt):
            lm.transformer.h[1].output = hidden
            patched = lm.lm_head.output.save()
        total = (patched.sum() * 0 + 1).save()
    seen: dict[str, Any] = {}
    with hooked((gpt.ref.transformer.h[1], record(seen, "clean"))):
        plain(gpt, gpt.ids(clean))
    with hooked((gpt.ref.transformer.h[1], lambda m, a, o: seen["clean"])):
        expected = plain(gpt, gpt.ids(corrupt)).logits
    assert torch.equal(patched, expected)
    assert total == 1
    with pytest.raises(NameError, match="'hidden' .* call .save\\(\\) on it inside the block"):
        hidden + 1  # not saved: gone after the session


# ---------------------------------------------------------------------------- errors


def test_errors_point_at_the_users_line(gpt: Any, lm: Any) -> None:
    with pytest.raises(IndexError) as caught:
        with lm.trace(gpt.prompts[0]):
            hidden = lm.transformer.h[0].output
            hidden[5]
    assert type(caught.value) is IndexError
    frames = traceback.extract_tb(caught.value.__traceback__)
    assert frames[-1].filename == __file__ and frames[-1].line == "hidden[5]"
    assert library_frames(caught.value) == []
    with pytest.raises(ZeroDivisionError) as caught:
        with lm.trace() as tracer:
            with tracer.invoke(gpt.prompts[0]):
                lm.transformer.h[0].output.save()
            with tracer.invoke(gpt.prompts[1]):
                lm.transformer.h[1].output / 0 if False else 1 / 0
    assert user_frames(caught.value)[-1].line.endswith("else 1 / 0")
    with pytest.raises(endoscope.NotInTraceError):
        lm.transformer.h[0].output
    # The model is usable afterwards: no hooks or state left behind.
    with lm.trace(gpt.prompts[0]):
        logits = lm.lm_head.output.save()
    assert torch.equal(logits, plain(gpt, gpt.ids(gpt.prompts[0])).logits)


def test_config_debug_shows_library_frames(gpt: Any, lm: Any) -> None:
    def frames_with(debug: bool) -> list[str]:
        previous = CONFIG.APP.DEBUG
        CONFIG.APP.DEBUG = debug
        try:
            with lm.trace(gpt.prompts[0]):
                lm.transformer.h[0].output.no_such_attribute
        except AttributeError as error:
            return library_frames(error)
        finally:
            CONFIG.APP.DEBUG = previous
        raise AssertionError("no error")

    assert frames_with(False) == []
    assert frames_with(True) != []


# ------------------------------------------------------------------------ schedulers


@pytest.mark.parametrize("scheduler", ["thread", "greenlet"])
def test_the_contract_block_on_each_scheduler(gpt: Any, scheduler: str) -> None:
    model = LanguageModel(gpt.path.as_posix(), scheduler=scheduler)
    clean, corrupt = gpt.pair
    with model.trace() as tracer:
        with tracer.invoke(clean):
            clean_hidden = model.transformer.h[1].output[:, -1]
        with tracer.invoke(corrupt):
            hidden = model.transformer.h[1].output
            hidden[:, -1] = clean_hidden
            model.transformer.h[2].mlp.output[:] = 0
            logits = model.lm_head.output.save()

    def patch(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[1, -1] = output[0, -1]
        return output

    zero_row = (gpt.ref.transformer.h[2].mlp, lambda m, a, o: torch.cat([o[:1], o[1:] * 0]))
    with hooked((gpt.ref.transformer.h[1], patch), zero_row):
        expected = plain(gpt, gpt.ids(clean, corrupt)).logits[1:2]
    assert torch.equal(logits, expected)


def test_nnsight_wraps_any_module() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    model = NNsight(net)
    x = torch.randn(3, 4)
    with model.trace(x):
        hidden = model[0].output.save()
        model[1].output[:, :4] = 0
        out = model.output.save()
    expected_hidden = net[0](x)
    relu = net[1](expected_hidden)
    relu[:, :4] = 0
    assert torch.equal(hidden, expected_hidden)
    assert torch.equal(out, net[2](relu))


def test_no_hooks_or_wrappers_are_left_behind(gpt: Any, lm: Any, tmp_path: Path) -> None:
    prompt = gpt.prompts[0]
    with lm.trace(prompt) as tracer:
        tracer.cache(modules=["transformer.h.0"])
        lm.transformer.h[1].mlp.source.self_act_0.output[:] = 0
        lm.transformer.h[2].skip(lm.transformer.h[2].input)
        hidden = lm.transformer.h[3].output
        with lm.lm_head.output.sum().backward():
            hidden.grad.save()
    lm.zero_grad(set_to_none=True)
    for path, envoy in lm.named_modules():
        hooks = [envoy._forward_hooks, envoy._forward_pre_hooks, envoy._backward_hooks]
        assert not any(hooks), path
        assert "forward" not in vars(envoy._module), path
    with lm.trace(prompt):
        logits = lm.lm_head.output.save()
    assert torch.equal(logits, plain(gpt, gpt.ids(prompt)).logits)
