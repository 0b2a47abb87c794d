"""tracer.cache(): values after interventions, filters, navigation, disk."""

from __future__ import annotations

import pytest
import torch

from endoscope_envoy import NNsight


def test_cache_every_module(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace(x) as tracer:
        cache = tracer.cache()
    h = net.embed(x)
    assert torch.equal(cache["model.embed"].output, h)
    for i, layer in enumerate(net.layers):
        h = layer(h)
        assert torch.equal(cache.model.layers[i].output, h)
        assert torch.equal(cache[f"model.layers.{i}"].output, h)
    assert torch.equal(cache.model.output, net(x))


def test_cache_sees_interventions_and_filters(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace(x) as tracer:
        cache = tracer.cache(modules=[model.layers[0], "layers.1"], include_inputs=True)
        model.layers[0].output[:] = 1
    assert torch.equal(cache.model.layers[0].output, torch.ones(3, 8))
    assert torch.equal(cache.model.layers[1].input, torch.ones(3, 8))
    assert "model.head" not in cache


def test_cache_with_invokes_dtype_and_detach(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace() as tracer:
        cache = tracer.cache(modules=[model.head], dtype=torch.float64)
        with tracer.invoke(x[:1]):
            pass
        with tracer.invoke(x[1:]):
            pass
    out = cache["model.head"].output
    assert out.dtype == torch.float64 and not out.requires_grad
    assert torch.allclose(out, net(x).double())


def test_cache_streams_to_disk(net, x, tmp_path, no_leftovers) -> None:
    from endoscope_cache import load

    model = NNsight(net)
    with model.trace(x) as tracer:
        tracer.cache(directory=tmp_path / "acts")
    loaded = load(tmp_path / "acts")
    assert torch.equal(
        loaded.model.layers[2].output, net.layers[2](net.layers[1](net.layers[0](net.embed(x))))
    )


def test_cache_appends_to_a_directory_across_traces(net, x, tmp_path, no_leftovers) -> None:
    from endoscope_cache import load

    model = NNsight(net)
    with model.trace(x) as tracer:
        tracer.cache(directory=tmp_path / "acts")
    with pytest.raises(FileExistsError, match="append=True"):
        with model.trace(x) as tracer:
            tracer.cache(directory=tmp_path / "acts")
    with model.trace(x * 2) as tracer:
        tracer.cache(directory=tmp_path / "acts", append=True, fsync=False)
    loaded = load(tmp_path / "acts")
    first, second = loaded.model.layers[0].output
    assert torch.equal(first, net.layers[0](net.embed(x)))
    assert torch.equal(second, net.layers[0](net.embed(x * 2)))
