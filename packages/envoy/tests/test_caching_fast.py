"""tracer.cache() through per-module recorders: every value equals a plain torch hook's."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
import torch

from endoscope_cache import EntryList, load
from endoscope_envoy import NNsight


class Twice(torch.nn.Module):
    """One submodule called twice per forward, and a tuple output."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.Linear(8, 8)
        self.act = torch.nn.ReLU()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        h = self.act(self.inner(self.inner(x)))
        return h, {"sum": h.sum(), "none": None}


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(4, 8)
        self.layers = torch.nn.ModuleList([Twice(), Twice()])
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        h = self.embed(x) * scale
        for layer in self.layers:
            h, _ = layer(h)
        return self.head(h)


@pytest.fixture
def model_and_net() -> tuple[NNsight, Model]:
    torch.manual_seed(0)
    net = Model()
    return NNsight(net), net


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple):
        return tuple(_clone(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


def _plain(net: torch.nn.Module, x: torch.Tensor) -> tuple[dict[str, list[Any]], dict]:
    """Every module's outputs and (args, kwargs), per call, by plain torch hooks."""
    outputs: dict[str, list[Any]] = defaultdict(list)
    inputs: dict[str, list[Any]] = defaultdict(list)
    handles = []
    for name, module in net.named_modules():
        path = f"model.{name}" if name else "model"

        def pre(m: Any, args: Any, kwargs: Any, path: str = path) -> None:
            inputs[path].append(_clone((args, kwargs)))

        def post(m: Any, args: Any, output: Any, path: str = path) -> None:
            outputs[path].append(_clone(output))

        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(module.register_forward_hook(post))
    try:
        net(x)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, inputs


def _same(actual: Any, expected: Any) -> None:
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor)
        assert actual.dtype == expected.dtype and torch.equal(actual, expected)
        assert not actual.requires_grad
    elif isinstance(expected, (tuple, list)):
        assert type(actual) is type(expected) and len(actual) == len(expected)
        for a, e in zip(actual, expected):
            _same(a, e)
    elif isinstance(expected, dict):
        assert list(actual) == list(expected)
        for key in expected:
            _same(actual[key], expected[key])
    else:
        assert actual == expected


def _check(cache: Any, expected: dict[str, list[Any]], kind: str = "output") -> None:
    assert set(cache) == set(expected)
    for path, values in expected.items():
        value = cache[path]
        entries = list(value) if isinstance(value, EntryList) else [value]
        assert len(entries) == len(values), path
        assert [e.iteration for e in entries] == list(range(len(values)))
        for entry, want in zip(entries, values):
            _same(getattr(entry, kind), want)


def test_every_module_equals_plain_hooks_trace_after_trace(model_and_net, no_leftovers) -> None:
    model, net = model_and_net
    torch.manual_seed(1)
    x = torch.randn(3, 4)
    outputs, _ = _plain(net, x)
    assert len(outputs["model.layers.0.inner"]) == 2
    for _ in range(4):  # cold, then warm wrappers and the memoised module list
        with model.trace(x) as tracer:
            cache = tracer.cache()
        _check(cache, outputs)


def test_inputs_and_outputs_equal_plain_hooks(model_and_net, no_leftovers) -> None:
    model, net = model_and_net
    x = torch.randn(2, 4)
    outputs, inputs = _plain(net, x)
    for _ in range(2):
        with model.trace(x) as tracer:
            cache = tracer.cache(include_inputs=True)
        _check(cache, outputs)
        _check(cache, inputs, "inputs")


def test_filtered_cache_equals_plain_hooks(model_and_net, no_leftovers) -> None:
    model, net = model_and_net
    x = torch.randn(2, 4)
    outputs, inputs = _plain(net, x)
    wanted = ["model.layers.1.inner", "model.head"]
    for _ in range(2):
        with model.trace(x) as tracer:
            cache = tracer.cache(modules=[model.layers[1].inner, "head"], include_inputs=True)
        _check(cache, {p: outputs[p] for p in wanted})
        _check(cache, {p: inputs[p] for p in wanted}, "inputs")


def test_user_forward_hooks_are_recorded_after(model_and_net) -> None:
    model, net = model_and_net
    x = torch.randn(2, 4)
    handle = net.layers[0].inner.register_forward_hook(lambda m, a, out: out + 1)
    try:
        outputs, _ = _plain(net, x)
        for _ in range(2):
            with model.trace(x) as tracer:
                cache = tracer.cache()
            _check(cache, outputs)
    finally:
        handle.remove()
    with model.trace(x) as tracer:  # the hook is gone: recorded by the wrapper again
        cache = tracer.cache()
    _check(cache, _plain(net, x)[0])


def test_cache_after_interventions_and_a_second_cache(model_and_net, no_leftovers) -> None:
    model, net = model_and_net
    x = torch.randn(2, 4)
    with model.trace(x) as tracer:
        first = tracer.cache()
        second = tracer.cache(modules=["head"])
        model.embed.output[:] = 0
    expected = net.head(net.layers[1](net.layers[0](torch.zeros(2, 8))[0])[0])
    assert torch.equal(first["model.head"].output, expected)
    assert torch.equal(second["model.head"].output, expected)
    assert torch.equal(first["model.embed"].output, torch.zeros(2, 8))
    assert list(second) == ["model.head"]


def test_cache_on_disk_equals_plain_hooks(model_and_net, tmp_path, no_leftovers) -> None:
    model, net = model_and_net
    x = torch.randn(2, 4)
    outputs, _ = _plain(net, x)
    with model.trace(x) as tracer:
        tracer.cache(directory=tmp_path / "acts")
    _check(load(tmp_path / "acts"), outputs)


def test_dtype_and_device_none(model_and_net, no_leftovers) -> None:
    model, net = model_and_net
    x = torch.randn(2, 4)
    outputs, _ = _plain(net, x)
    with model.trace(x) as tracer:
        cache = tracer.cache(dtype=torch.float64, device=None)
    for path, values in outputs.items():
        value = cache[path]
        entries = list(value) if isinstance(value, EntryList) else [value]
        for entry, want in zip(entries, values):
            got = entry.output
            if isinstance(want, tuple):
                got, want = got[0], want[0]
            assert got.dtype == torch.float64 and torch.allclose(got, want.double())


@pytest.fixture
def no_leftovers(model_and_net):
    import gc

    _, net = model_and_net
    yield
    gc.collect()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    assert all("forward" not in m.__dict__ for m in net.modules())
