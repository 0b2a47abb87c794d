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


def test_a_trace_that_raises_leaves_its_disk_cache_incomplete_naming_the_error(
    net, x, tmp_path, no_leftovers
) -> None:
    """What the modules before the error recorded is on disk; the cache says it is a
    part, and why. A stopped trace (``tracer.stop()``) ends as asked: complete."""
    from endoscope_cache import IncompleteCacheError, IncompleteCacheWarning, load

    model = NNsight(net)
    with pytest.raises(ValueError, match="not this batch"):
        with model.trace(x) as tracer:
            tracer.cache(directory=tmp_path / "failed")
            model.layers[1].output.sum()
            raise ValueError("not this batch")
    with pytest.raises(IncompleteCacheError) as raised:
        load(tmp_path / "failed")
    assert "stopped with an error before the end (ValueError: not this batch)" in str(raised.value)
    with pytest.warns(IncompleteCacheWarning):
        partial = load(tmp_path / "failed", allow_incomplete=True)
    # Values reach the cache after the interventions of their call: layers[1]'s call
    # is where the error came, so its children are kept, and it is not.
    h = net.layers[0](net.embed(x))
    assert list(partial) == [
        "model.embed",
        *("model.layers.0.fc", "model.layers.0.act", "model.layers.0"),
        *("model.layers.1.fc", "model.layers.1.act"),
    ]
    assert torch.equal(partial.model.layers[0].output, h)
    assert torch.equal(partial.model.layers[1].act.output, net.layers[1].act(net.layers[1].fc(h)))

    with model.trace(x) as tracer:
        tracer.cache(directory=tmp_path / "stopped")
        model.layers[1].output.sum()
        tracer.stop()
    stopped = load(tmp_path / "stopped")
    assert stopped.complete and list(stopped) == list(partial)  # the same point, as asked

    # The failed batch, run again, completes the first cache.
    with model.trace(x) as tracer:
        tracer.cache(directory=tmp_path / "failed", append=True, modules=[model.layers[2]])
    whole = load(tmp_path / "failed")
    assert whole.complete
    assert torch.equal(whole.model.layers[2].output, net.layers[2](net.layers[1](h)))


# Three traces, each caching to its own directory; the third stops for good inside the
# forward pass (a user hook on layers[1]) and is killed there with SIGKILL.
KILLED_IN_A_TRACE = """
import importlib.util, os, signal, sys, torch
from endoscope_envoy import CONFIG, NNsight

conftest, base, CONFIG.scheduler = sys.argv[1], sys.argv[2], sys.argv[3]
spec = importlib.util.spec_from_file_location("envoy_conftest", conftest)
helpers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(helpers)
torch.manual_seed(0)
net = helpers.Net().eval()
torch.manual_seed(1)
x = torch.randn(3, 4)
model = NNsight(net)

def pause(module, args, output):
    os.write(1, b"paused\\n")
    while True:
        signal.pause()

for i in range(3):
    if i == 2:
        net.layers[1].register_forward_hook(pause)
    with model.trace(x * (i + 1)) as tracer:
        tracer.cache(directory=os.path.join(base, f"trace{i}"), include_inputs=True)
"""


def test_a_process_killed_mid_trace_leaves_earlier_traces_whole_and_says_so(
    net, x, tmp_path, scheduler
) -> None:
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from endoscope_cache import IncompleteCacheError, IncompleteCacheWarning, LostValueError, load

    conftest = Path(__file__).with_name("conftest.py")
    script = tmp_path / "writer.py"  # a file: the traces' source is read from it
    script.write_text(KILLED_IN_A_TRACE)
    child = subprocess.Popen(
        [sys.executable, "-W", "ignore", str(script), str(conftest), str(tmp_path), scheduler],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = child.stdout.readline()  # blocks until the third trace is inside layers[1]
        assert line == b"paused\n", line + child.stderr.read()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    for i in range(2):  # the traces that finished read back whole, as plain torch computes
        done = load(tmp_path / f"trace{i}")
        h = net.embed(x * (i + 1))
        assert torch.equal(done.model.embed.output, h)
        for k in range(3):
            assert torch.equal(done.model.layers[k].input, h)
            h = net.layers[k](h)
            assert torch.equal(done.model.layers[k].output, h)
        assert torch.equal(done.model.output, net.head(h))
    # The interrupted one refuses to open silently, and says what it lost.
    with pytest.raises(IncompleteCacheError, match="complete: 0 values of 0 modules in 0 shards"):
        load(tmp_path / "trace2")
    with pytest.warns(IncompleteCacheWarning):
        partial = load(tmp_path / "trace2", allow_incomplete=True)
    assert not partial.complete and "model.embed.output.i0" in partial.lost
    with pytest.raises(LostValueError, match=r"model\.embed\.output\.i0 was lost"):
        _ = partial.model.embed.output
    with pytest.raises(AttributeError, match="This cache is incomplete"):
        _ = partial.model.head
