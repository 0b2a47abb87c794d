from __future__ import annotations

import pickle

import pytest
import torch

from endoscope_cache import Cache, CacheDict, Entry, EntryList


@pytest.fixture
def run(toy, ids, recorder_factory):
    """A cache of every module of the toy model, inputs included, plus the references."""
    cache = Cache(include_inputs=True)
    recorder = recorder_factory(toy, cache)
    with torch.no_grad():
        toy(ids)
    return cache.cache, recorder


def test_key_access_returns_the_entry(run, same) -> None:
    d, ref = run
    entry = d["model.transformer.h.0"]
    assert isinstance(entry, Entry)
    same(entry.output, ref.outputs["model.transformer.h.0"][0])
    same(entry.inputs, ref.inputs["model.transformer.h.0"][0])
    same(entry.input, ref.inputs["model.transformer.h.0"][0][0][0])
    assert Cache.CacheDict is CacheDict


def test_attribute_and_index_navigation_reads_at_any_level(run, same) -> None:
    d, ref = run
    same(d.model.transformer.h[0].output, ref.outputs["model.transformer.h.0"][0])
    same(d.model.transformer.h[2].mlp[0].output, ref.outputs["model.transformer.h.2.mlp.0"][0])
    same(d.model.transformer.output, ref.outputs["model.transformer"][0])
    same(d.model.output, ref.outputs["model"][0])
    same(d.model.head.inputs, ref.inputs["model.head"][0])
    same(d.model.embed.input, ref.inputs["model.embed"][0][0][0])
    same(d.model.transformer.h[1].input, ref.inputs["model.transformer.h.1"][0][0][0])
    # kwargs come through as kwargs
    assert d.model.transformer.h[1].inputs[1] == {"scale": 0.5}
    assert d.model.head.inputs[1] == {"step": 1}


def test_views_are_cachedicts_of_the_subtree(run) -> None:
    d, _ = run
    view = d.model.transformer.h[1]
    assert isinstance(view, CacheDict)
    assert set(view) == {
        k for k in d if k == "model.transformer.h.1" or k.startswith("model.transformer.h.1.")
    }
    # Keys a view yields index it, as for any dict; relative paths work too.
    for key in view:
        assert view[key] is d[key]
    assert view["attn"] is d["model.transformer.h.1.attn"]
    assert isinstance(d["model.transformer.h"], CacheDict)
    assert d["model.transformer.h"][0]["mlp.2"] is d["model.transformer.h.0.mlp.2"]


def test_negative_indices_and_slices_pick_cached_children(run, same) -> None:
    d, ref = run
    same(d.model.transformer.h[-1].output, ref.outputs["model.transformer.h.2"][0])
    picked = d.model.transformer.h[1:]
    assert [v.output[0].shape for v in picked] == [torch.Size([2, 5, 8])] * 2
    same(picked[0].output, ref.outputs["model.transformer.h.1"][0])


def test_a_module_called_several_times_has_one_entry_per_call(run, same) -> None:
    d, ref = run
    calls = d["model.shared"]
    assert isinstance(calls, EntryList) and len(calls) == 2
    assert [e.iteration for e in calls] == [0, 1]
    for entry, out, inp in zip(calls, ref.outputs["model.shared"], ref.inputs["model.shared"]):
        same(entry.output, out)
        same(entry.inputs, inp)
    # The second call's input is the first call's output.
    same(calls[1].input, calls[0].output)
    outputs = d.model.shared.output
    assert isinstance(outputs, list) and len(outputs) == 2
    same(outputs[1], ref.outputs["model.shared"][1])


def test_unknown_names_raise_attribute_error_with_the_nearest_paths(run) -> None:
    d, _ = run
    with pytest.raises(AttributeError) as info:
        _ = d.model.transformr
    message = str(info.value)
    assert "'model.transformr'" in message and "model.transformer" in message
    assert "Check the spelling" in message
    with pytest.raises(AttributeError, match=r"model\.transformer\.ln_f"):
        _ = d.model.transformer.ln_g
    assert not hasattr(d.model, "nothing_like_it")
    with pytest.raises(AttributeError, match="cached names under 'model'"):
        _ = d.model.qqqqqqqqqqqq
    # Python's printers (3.12+, 3.11 uncaught) suggest from dir(error.obj) unless
    # it offers nothing: the message's own nearest paths are not repeated.
    with pytest.raises(AttributeError) as info:
        _ = d.model.transformr
    assert info.value.name == "transformr" and dir(info.value.obj) == []


def test_unknown_keys_raise_key_error_with_the_nearest_paths(run) -> None:
    d, _ = run
    with pytest.raises(KeyError, match=r"model\.transformer\.h\.0"):
        _ = d["model.transformer.h.0.atn"]


def test_index_past_a_module_list_raises_index_error(run) -> None:
    d, _ = run
    with pytest.raises(
        IndexError,
        match=r"index 3 is out of range for 'model.transformer.h': cached indices are 0-2",
    ):
        _ = d.model.transformer.h[3]
    with pytest.raises(IndexError, match="index -4"):
        _ = d.model.transformer.h[-4]
    with pytest.raises(IndexError, match=r"'model\.embed' has no numbered children"):
        _ = d.model.embed[0]
    with pytest.raises(
        IndexError, match=r"ran 2 times: pick one call with cache\['model.shared'\]\[1\]"
    ):
        _ = d.model.shared[1]
    with pytest.raises(TypeError, match="module paths"):
        _ = d[1.5]


def test_reading_where_nothing_was_cached_says_what_to_do() -> None:
    cache = Cache(modules=["model.h.0"])
    cache.add("model.h.0.output.i0", torch.ones(1))
    d = cache.cache
    with pytest.raises(AttributeError, match=r"cache root has no output.*cache\['model.h.0'\]"):
        _ = d.output
    with pytest.raises(AttributeError, match=r"nothing was cached for 'model.h' itself.*modules="):
        _ = d.model.h.output
    assert d.model.h[0].inputs is None  # not kept: None, as nnsight's cache
    empty = Cache().cache
    with pytest.raises(AttributeError, match="the cache is empty"):
        _ = empty.model


def test_rename_and_alias_paths() -> None:
    cache = Cache(rename={"transformer.h": "layers", "attn": "attention"})
    value = torch.arange(3.0)
    cache.add("model.transformer.h.0.attn.output.i0", value)
    cache.add("model.transformer.h.1.output.i0", value + 1)
    d = cache.cache
    assert torch.equal(d.model.layers[0].attention.output, value)
    assert torch.equal(d["model.layers.0.attention"].output, value)
    assert torch.equal(d.model.layers[1].output, value + 1)
    assert torch.equal(d.model.transformer.h[0].attn.output, value)  # real names still work
    assert list(d.keys(alias=True)) == ["model.layers.0.attention", "model.layers.1"]
    assert list(d.keys()) == ["model.transformer.h.0.attn", "model.transformer.h.1"]
    with pytest.raises(AttributeError, match=r"model\.layers\.0\.attention"):
        _ = d.model.layers[0].attentio

    # alias= is the reverse mapping (alias -> real), as a model wrapper passes it
    aliased = Cache(alias={"blocks": "h"})
    aliased.add("model.h.2.output.i0", value)
    assert torch.equal(aliased.cache.model.blocks[2].output, value)
    # Whole components only: "h" inside "c_h" is left alone.
    other = Cache(rename={"h": "blocks"})
    other.add("model.c_h.output.i0", value)
    assert list(other.cache.keys(alias=True)) == ["model.c_h"]


def test_repr_lists_paths_with_shapes(run) -> None:
    d, _ = run
    text = repr(d)
    first = text.splitlines()[0]
    assert first == f"CacheDict({len(d)} modules, in memory)"
    assert "model.transformer.h.0.attn" in text
    line = next(line for line in text.splitlines() if line.strip().startswith("model.embed "))
    assert "output=float32[2, 5, 8]" in line and "inputs=((int64[2, 5],), {})" in line
    assert "model.shared" in text and "2 calls" in text and "i1: output=float32[2, 5, 8]" in text
    assert repr(d.model.transformer.h[0]).startswith(
        "CacheDict('model.transformer.h.0', 6 modules, in memory)"
    )
    assert repr(CacheDict()) == "CacheDict(0 modules, in memory)"


def test_dir_lists_children_for_completion(run) -> None:
    d, _ = run
    names = dir(d.model)
    assert {"embed", "transformer", "shared", "head", "output", "inputs"} <= set(names)
    assert "0" not in dir(d.model.transformer.h)


def test_constructed_from_data_and_pickled() -> None:
    one, two = Entry(output=torch.ones(2), iteration=0), Entry(output=torch.zeros(2), iteration=1)
    d = CacheDict({"m.a": one, "m.b": [one, two], "m.c": [two]}, rename={"a": "alpha"})
    assert d["m.a"] is one and isinstance(d["m.b"], EntryList) and d["m.c"] is two
    assert torch.equal(d.m.alpha.output, torch.ones(2))
    with pytest.raises(TypeError, match="Entry objects"):
        CacheDict({"m": 3})  # type: ignore[dict-item]
    restored = pickle.loads(pickle.dumps(d))
    assert list(restored) == ["m.a", "m.b", "m.c"]
    assert torch.equal(restored.m.alpha.output, torch.ones(2))
    assert torch.equal(restored.m.b.output[1], torch.zeros(2))


def test_dict_method_names_are_reachable_by_key() -> None:
    cache = Cache()
    cache.add("model.keys.output.i0", torch.ones(1))
    d = cache.cache
    assert callable(d.model.keys)
    assert torch.equal(d["model.keys"].output, torch.ones(1))
    assert torch.equal(d.model["keys"].output, torch.ones(1))


def test_filling_after_construction_continues_the_call_list() -> None:
    d = CacheDict({"m": Entry(output=torch.zeros(1), iteration=0)})
    entry, index = d._slot("m", "output", 1)
    entry._set("output", torch.ones(1))
    assert index == 1 and isinstance(d["m"], EntryList) and len(d["m"]) == 2
    entry, index = d._slot("m", "inputs", 1)
    assert index == 1 and entry is d["m"][1]
