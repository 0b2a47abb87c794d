from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from endoscope_cache import Cache, load, parse_provider
from endoscope_cache import _cache as cache_module


def test_parse_provider() -> None:
    assert parse_provider("model.transformer.h.0.output.i0") == (
        "model.transformer.h.0",
        "output",
        0,
    )
    assert parse_provider("model.h.10.input.i12") == ("model.h.10", "inputs", 12)
    assert parse_provider("model.output.i3") == ("model", "output", 3)
    assert parse_provider("model.fc.output") == ("model.fc", "output", None)
    assert parse_provider("model.h.0.attn.source.self_c_attn_0.output.i0") is None
    assert parse_provider("model.h.0.grad.i0") is None
    assert parse_provider("output.i0") is None
    assert parse_provider("model.h.0.output.i²") is None
    assert parse_provider("nothing") is None


def test_every_module_matches_plain_torch_hooks(
    toy, ids, recorder_factory, same, matches_reference
) -> None:
    cache = Cache(include_inputs=True)
    ref = recorder_factory(toy, cache)
    with torch.no_grad():
        result = toy(ids, mask=torch.ones(2, 5))
    d = cache.cache
    matches_reference(d, ref)
    # Nested values keep their structure: a tuple holding a dict of tensor, int, None...
    block = d.model.transformer.h[0].output
    assert isinstance(block, tuple) and set(block[1]) == {"mean", "count", "none"}
    assert block[1]["count"] == 8 and block[1]["none"] is None
    # ...and a dataclass with a tensor, another tensor and an int.
    head = d.model.head.output
    assert type(head).__name__ == "HeadOut" and head.step == 1
    assert torch.equal(head.logits, result.logits)
    assert torch.equal(d.model.output.logits, result.logits)
    # The mask went in as a keyword argument.
    assert torch.equal(d.model.inputs[1]["mask"], torch.ones(2, 5))


def test_outputs_only_by_default(toy, ids, recorder_factory, tmp_path) -> None:
    """A kind the options switch off reads as None, as in nnsight 0.8.1 (whose
    ``tracer.cache()`` entries give ``.input``/``.inputs`` None unless
    ``include_inputs=True``, and ``.output`` None with ``include_output=False``);
    on disk too."""
    cache = Cache()
    recorder_factory(toy, cache)
    toy(ids)
    embed = cache.cache.model.embed
    assert embed.inputs is None and embed.input is None
    assert torch.equal(embed.output, toy.embed(ids))
    assert "inputs" not in repr(cache.cache["model.embed"])  # nothing is held
    inputs_only = Cache(include_output=False, include_inputs=True)
    recorder_factory(toy, inputs_only)
    toy(ids)
    assert torch.equal(inputs_only.cache.model.embed.input, ids)
    assert inputs_only.cache.model.embed.output is None
    assert inputs_only.cache["model.shared"].output == [None, None]  # two calls
    again = load(inputs_only.cache.dump(tmp_path / "copy"))
    assert again.model.embed.output is None and torch.equal(again.model.embed.input, ids)
    streamed = Cache(directory=tmp_path / "streamed")
    recorder_factory(toy, streamed)
    toy(ids)
    streamed.close()
    assert load(tmp_path / "streamed").model.embed.inputs is None


def test_a_kept_kind_a_call_never_produced_still_explains_itself() -> None:
    """The clear error stays where the cache keeps the kind but the call left none
    (the module did not return: an error or a stop ended the run)."""
    cache = Cache(include_inputs=True)
    cache.add("model.fc.input.i0", ((torch.ones(1),), {}))
    with pytest.raises(AttributeError, match="did not finish this call"):
        _ = cache.cache.model.fc.output
    assert torch.equal(cache.cache.model.fc.input, torch.ones(1))


def test_module_filter_accepts_paths_and_objects_with_path(
    toy, ids, recorder_factory, same
) -> None:
    chosen = Cache(modules=["model.transformer.h.1", SimpleNamespace(path="model.head.proj")])
    single = Cache(modules="model.embed")
    ref = recorder_factory(toy, chosen)
    recorder_factory(toy, single)
    toy(ids)
    assert list(chosen.cache) == ["model.transformer.h.1", "model.head.proj"]
    same(chosen.cache.model.transformer.h[1].output, ref.outputs["model.transformer.h.1"][0])
    same(chosen.cache.model.head.proj.output, ref.outputs["model.head.proj"][0])
    assert list(single.cache) == ["model.embed"]
    with pytest.raises(TypeError, match="module path strings"):
        Cache(modules=[3])


def test_operation_paths_and_other_providers_are_not_entries() -> None:
    cache = Cache(include_inputs=True)
    cache.add("model.h.0.attn.source.self_c_attn_0.output.i0", torch.ones(1))
    cache.add("model.h.0.attn.source.self_c_attn_0.input.i0", ((torch.ones(1),), {}))
    cache.add("model.h.0.grad.i0", torch.ones(1))
    assert len(cache.cache) == 0
    cache.add("model.h.0.attn.output.i0", torch.ones(1))
    assert list(cache.cache) == ["model.h.0.attn"]


def test_filtered_providers_are_parsed_once(monkeypatch) -> None:
    calls = []
    real = cache_module.parse_provider

    def counting(provider: str):
        calls.append(provider)
        return real(provider)

    monkeypatch.setattr(cache_module, "parse_provider", counting)
    cache = Cache(modules=["model.a"])
    for _ in range(5):
        cache.add("model.b.output.i0", torch.ones(1))
        cache.add("model.a.output.i0", torch.ones(1))
    assert calls == ["model.b.output.i0", "model.a.output.i0"]
    assert list(cache.cache) == ["model.a"] and len(cache.cache["model.a"]) == 5


def test_parse_memo_is_bounded(monkeypatch) -> None:
    monkeypatch.setattr(cache_module, "_MEMO_LIMIT", 4)
    cache = Cache()
    for i in range(10):
        cache.add(f"model.m{i}.output.i{i}", i)
        cache.add(f"model.output.i{i}", i)
    assert len(cache._heads) <= 4
    assert [cache.cache[f"model.m{i}"].output for i in range(10)] == list(range(10))
    assert [e.output for e in cache.cache["model"]] == list(range(10))


@dataclasses.dataclass
class Pack:
    hidden: torch.Tensor
    ids: torch.Tensor
    note: str = "n"


def test_device_dtype_and_detach_apply_to_every_nested_tensor() -> None:
    w = torch.ones(3, requires_grad=True)
    hidden = w * 2
    ids = torch.tensor([1, 2, 3])
    value = (hidden, [hidden, {"ids": ids, "mask": ids > 1}], Pack(hidden, ids), None, 4)

    converted = Cache(dtype=torch.float16)
    converted.add("model.output.i0", value)
    out = converted.cache.model.output
    for tensor in (out[0], out[1][0], out[2].hidden):
        assert tensor.dtype == torch.float16 and not tensor.requires_grad
        assert torch.equal(tensor, hidden.detach().to(torch.float16))
    # Only floating-point tensors change dtype.
    assert out[1][1]["ids"].dtype == torch.int64 and out[2].ids.dtype == torch.int64
    assert out[1][1]["mask"].dtype == torch.bool
    assert out[2].note == "n" and out[3] is None and out[4] == 4

    moved = Cache(device="meta")
    moved.add("model.output.i0", value)
    out = moved.cache.model.output
    assert all(t.device.type == "meta" for t in (out[0], out[1][0], out[1][1]["ids"], out[2].ids))

    attached = Cache(detach=False, device=None)
    attached.add("model.output.i0", value)
    out = attached.cache.model.output
    assert out[0] is hidden and out[2].hidden.grad_fn is not None
    out[0].sum().backward()
    assert torch.equal(w.grad, torch.full((3,), 2.0))

    detached = Cache(device=None)
    detached.add("model.output.i0", hidden)
    stored = detached.cache.model.output
    assert not stored.requires_grad and stored.data_ptr() == hidden.data_ptr()

    with pytest.raises(TypeError, match=r"torch\.dtype"):
        Cache(dtype="float16")  # type: ignore[arg-type]


def test_inputs_are_normalised_to_args_and_kwargs() -> None:
    cache = Cache(include_inputs=True, include_output=False)
    x = torch.ones(2)
    cache.add("model.a.input.i0", ((x,), {"k": 1}))
    cache.add("model.b.input.i0", (x, x))
    cache.add("model.c.input.i0", x)
    d = cache.cache
    assert d.model.a.inputs[1] == {"k": 1} and torch.equal(d.model.a.input, x)
    assert len(d.model.b.inputs[0]) == 2 and d.model.b.inputs[1] == {}
    assert torch.equal(d.model.c.input, x)


def test_iterations_pair_inputs_with_outputs_and_repeat_passes_append() -> None:
    cache = Cache(include_inputs=True)
    a, b = torch.zeros(1), torch.ones(1)
    cache.add("model.f.input.i0", ((a,), {}))
    cache.add("model.f.input.i1", ((b,), {}))  # generation: a second call starts...
    cache.add("model.f.output.i0", a + 10)  # ...before the first one's output lands
    cache.add("model.f.output.i1", b + 10)
    calls = cache.cache["model.f"]
    assert [e.iteration for e in calls] == [0, 1]
    assert torch.equal(calls[0].input, a) and torch.equal(calls[0].output, a + 10)
    assert torch.equal(calls[1].input, b) and torch.equal(calls[1].output, b + 10)
    # A second forward pass numbering calls from 0 again gets new entries.
    cache.add("model.f.input.i0", ((b,), {}))
    cache.add("model.f.output.i0", b)
    assert len(calls) == 3 and calls[2].iteration == 0 and torch.equal(calls[2].output, b)
    # Without an iteration suffix, values go to the latest call, then start new ones.
    plain = Cache(include_inputs=True)
    plain.add("model.g.input", ((a,), {}))
    plain.add("model.g.output", a)
    plain.add("model.g.output", b)
    assert len(plain.cache["model.g"]) == 2 and torch.equal(plain.cache["model.g"][1].output, b)


def test_two_forward_passes_through_hooks(toy, ids, recorder_factory, same) -> None:
    cache = Cache(modules=["model.transformer.h.0", "model.shared"])
    ref = recorder_factory(toy, cache)
    toy(ids)
    ref.new_pass()
    toy(ids[:, :3])
    h0 = cache.cache["model.transformer.h.0"]
    assert [e.iteration for e in h0] == [0, 0]
    same(h0[1].output, ref.outputs["model.transformer.h.0"][1])
    assert [e.iteration for e in cache.cache["model.shared"]] == [0, 1, 0, 1]


def test_inplace_module_after_a_cached_one_matches_a_plain_hook_capture() -> None:
    # A cached tensor shares storage with the model's (as a plain detach() capture
    # does), so an in-place ReLU afterwards shows through in both.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True))
    cache = Cache(modules=["model.0"])
    plain = {}
    model[0].register_forward_hook(lambda m, i, o: plain.__setitem__("out", o.detach()))
    model[0].register_forward_hook(lambda m, i, o: cache.add("model.0.output.i0", o))
    model(torch.randn(3, 4))
    assert torch.equal(cache.cache.model[0].output, plain["out"])


def test_repr_and_context_manager() -> None:
    with Cache() as cache:
        cache.add("model.output.i0", torch.zeros(2, 3))
    assert "model  output=float32[2, 3]" in repr(cache)
    assert repr(cache).startswith("Cache(\nCacheDict(1 module, in memory)")
