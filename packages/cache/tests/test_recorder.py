"""Cache.recorder(path, kind): per-module recorders store exactly what add() stores."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from endoscope_cache import Cache, EntryList, load
from endoscope_cache._cache import _ITERATIONS


class Feed:
    """Torch hooks on every module feeding one cache through recorders, another
    through ``add`` with provider strings, and keeping plain clones (via ``Recorder``)."""

    def __init__(self, model: nn.Module, fast: Cache, slow: Cache) -> None:
        self.handles = []
        self.calls: dict[str, int] = {}
        for name, module in model.named_modules():
            path = f"model.{name}" if name else "model"
            self.handles.append(
                module.register_forward_pre_hook(
                    self._pre(path, fast.recorder(path, "inputs"), slow), with_kwargs=True
                )
            )
            self.handles.append(
                module.register_forward_hook(
                    self._post(path, fast.recorder(path), slow), with_kwargs=True
                )
            )

    def _pre(self, path: str, record: Any, slow: Cache) -> Any:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if record is not None:
                record((args, kwargs))
            slow.add(f"{path}.input.i{self.calls.get(path, 0)}", (args, kwargs))

        return hook

    def _post(self, path: str, record: Any, slow: Cache) -> Any:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if record is not None:
                record(output)
            slow.add(f"{path}.output.i{self.calls.get(path, 0)}", output)
            self.calls[path] = self.calls.get(path, 0) + 1

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _entries(value: Any) -> list[Any]:
    return list(value) if isinstance(value, EntryList) else [value]


def _assert_same_cache(fast: Any, slow: Any, same: Any) -> None:
    assert list(fast) == list(slow)
    for path in slow:
        assert type(fast[path]) is type(slow[path]), path
        for a, b in zip(_entries(fast[path]), _entries(slow[path]), strict=True):
            assert a.iteration == b.iteration
            assert a._flags == b._flags
            for kind in ("output", "inputs"):
                if b._has(kind):
                    a_value, b_value = a._read(kind), b._read(kind)
                    same(a_value, b_value)
                    if isinstance(b_value, torch.Tensor):
                        assert a_value.requires_grad == b_value.requires_grad


OPTIONS = [
    {},
    {"detach": False},
    {"device": None},
    {"device": None, "detach": False},
    {"dtype": torch.float64},
    {"include_inputs": True},
    {"include_inputs": True, "include_output": False},
    {"include_inputs": True, "modules": ["model.shared", "model.transformer.h.1"]},
    {"modules": ["model.head", "model.embed"], "dtype": torch.float16},
]


@pytest.mark.parametrize("options", OPTIONS, ids=[repr(o) for o in OPTIONS])
def test_recorders_store_what_add_stores(
    toy, ids, recorder_factory, matches_reference, same, options
) -> None:
    fast, slow = Cache(**options), Cache(**options)
    feed = Feed(toy, fast, slow)
    try:
        with torch.enable_grad():
            toy(ids)
            toy(ids)  # a second pass: every module's entries become lists
    finally:
        feed.remove()
    _assert_same_cache(fast.cache, slow.cache, same)
    if not options:
        # The defaults against plain-torch clones too (one pass).
        again = Cache(include_inputs=True)
        feed = Feed(toy, again, Cache(include_inputs=True))
        ref = recorder_factory(toy)
        try:
            toy(ids)
        finally:
            feed.remove()
        matches_reference(again.cache, ref)


def test_recorded_tensors_are_detached_and_moved_only_when_needed() -> None:
    cache = Cache()
    t = torch.ones(2, requires_grad=True)
    plain = torch.ones(2)
    cache.recorder("model.a")(t * 2)
    cache.recorder("model.b")(plain)
    a, b = cache.cache["model.a"].output, cache.cache["model.b"].output
    assert not a.requires_grad and torch.equal(a, torch.full((2,), 2.0))
    assert b is plain  # nothing to change: the same tensor, as with add()
    kept = Cache(detach=False)
    kept.recorder("model.a")(t * 2)
    assert kept.cache["model.a"].output.requires_grad


def test_outputs_of_none_and_nested_values() -> None:
    cache = Cache()
    record = cache.recorder("model.a")
    record(None)
    record((torch.ones(1, requires_grad=True) * 3, {"n": 1, "t": torch.zeros(1)}))
    first, second = cache.cache["model.a"]
    assert first.output is None and first.iteration == 0
    out, extra = second.output
    assert not out.requires_grad and torch.equal(out, torch.full((1,), 3.0))
    assert extra["n"] == 1 and second.iteration == 1


def test_recorder_filters_and_kinds() -> None:
    cache = Cache(modules=["model.a"], include_inputs=True)
    assert cache.recorder("model.b") is None
    assert cache.recorder("model.b", "inputs") is None
    assert cache.recorder("model.a", "input") is not None
    assert Cache().recorder("model.a", "inputs") is None
    assert Cache(include_output=False).recorder("model.a") is None
    with pytest.raises(ValueError, match="kind must be"):
        cache.recorder("model.a", "outputs")
    # A recorder takes the path as a module path: a "source" component is a module.
    Cache().recorder("model.source.fc")(torch.ones(1))


def test_inputs_and_outputs_share_an_entry_per_call() -> None:
    cache = Cache(include_inputs=True)
    inputs, output = cache.recorder("model.a", "inputs"), cache.recorder("model.a")
    for i in range(3):
        inputs(((torch.full((1,), float(i)),), {}))
        output(torch.full((1,), i + 10.0))
    entries = cache.cache["model.a"]
    assert [e.iteration for e in entries] == [0, 1, 2]
    assert [e.input.item() for e in entries] == [0.0, 1.0, 2.0]
    assert [e.output.item() for e in entries] == [10.0, 11.0, 12.0]
    # A bare tuple or value is normalised as add() does.
    other = Cache(include_inputs=True)
    record = other.recorder("model.b", "inputs")
    record(torch.ones(1))
    record((torch.ones(1), torch.zeros(1)))
    first, second = other.cache["model.b"]
    assert first.inputs[1] == {} and len(first.inputs[0]) == 1
    assert len(second.inputs[0]) == 2


def test_recorders_mix_with_add() -> None:
    cache = Cache()
    cache.add("model.a.output.i0", torch.zeros(1))
    record = cache.recorder("model.a")
    record(torch.ones(1))  # call 0 again: a new entry, as add() would make
    record(torch.full((1,), 2.0))
    cache.add("model.a.output.i2", torch.full((1,), 3.0))
    assert [e.output.item() for e in cache.cache["model.a"]] == [0.0, 1.0, 2.0, 3.0]
    assert [e.iteration for e in cache.cache["model.a"]] == [0, 0, 1, 2]


def test_recorders_stream_to_disk(tmp_path, toy, ids, same) -> None:
    disk = Cache(directory=tmp_path / "fast", include_inputs=True)
    memory = Cache(include_inputs=True)
    feed = Feed(toy, disk, memory)
    try:
        toy(ids)
    finally:
        feed.remove()
    disk.close()
    loaded = load(tmp_path / "fast")
    _assert_same_cache(loaded, memory.cache, same)
    with pytest.raises(ValueError, match="closed"):
        disk.recorder("model.head")(torch.ones(1))


def test_recorders_do_not_touch_the_provider_memos() -> None:
    cache = Cache()
    before = len(_ITERATIONS)
    record = cache.recorder("model.a")
    for _ in range(5):
        record(torch.ones(1))
    assert cache._heads == {} and len(_ITERATIONS) == before


def test_readme_recorder_example_runs() -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    example = re.search(r"## Recording from your own hooks.*?```python\n(.*?)```", text, re.DOTALL)
    assert example is not None
    exec(compile(example.group(1), "README.md", "exec"), {"__name__": "readme_recorder"})


def test_recorders_make_one_per_path_in_order() -> None:
    paths = ["model.a", "model.b", "model.c"]
    everything = Cache().recorders(paths)
    assert len(everything) == 3 and all(r is not None for r in everything)
    some = Cache(modules=["model.b"], include_inputs=True)
    outputs = some.recorders(paths)
    inputs = some.recorders(paths, "input")
    assert [r is not None for r in outputs] == [False, True, False]
    assert [r is not None for r in inputs] == [False, True, False]
    assert Cache(include_output=False).recorders(paths) == [None, None, None]
    with pytest.raises(ValueError, match="kind must be"):
        some.recorders(paths, "grad")


def test_caches_with_the_same_options_share_their_transform() -> None:
    a, b = Cache(), Cache(device="cpu")
    assert a._transform is b._transform and a.device == torch.device("cpu")
    assert Cache(detach=False)._transform is not a._transform
    renamed = Cache(rename={"transformer.h": "layers"})
    assert renamed.cache._names.rename == {"transformer.h": "layers"}
    assert a.cache._names.rename == {} and not a.cache._names
