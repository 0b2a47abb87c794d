"""Forward wrappers: a call site's wrappers are lent before its next run starts."""

from __future__ import annotations

import pytest
import torch

from endoscope_envoy import NNsight, NotInTraceError, save, serve_module


def wrapped(net: torch.nn.Module) -> list[str]:
    """Names of the modules wearing endoscope's wrapper in their ``forward`` now."""
    return [
        name or "<root>"
        for name, m in net.named_modules()
        if hasattr(m.__dict__.get("forward"), "_endoscope_wrapper")
    ]


def trace_reading(model: NNsight, x: torch.Tensor, index: int) -> tuple[list[str], torch.Tensor]:
    """One call site: what is wrapped when the body starts, and block ``index``'s output."""
    with model.trace(x):
        at_start = save(wrapped(model._module))
        out = model.layers[index].output.save()
    return at_start, out


def expected_block(net: torch.nn.Module, x: torch.Tensor, index: int) -> torch.Tensor:
    h = net.embed(x)
    for layer in net.layers[: index + 1]:
        h = layer(h)
    return h


def test_second_run_of_a_call_site_starts_with_its_wrappers(net, x, no_leftovers) -> None:
    model = NNsight(net)
    first, out_first = trace_reading(model, x, 1)
    second, out_second = trace_reading(model, x, 1)
    assert first == []  # nothing wrapped before the first read
    # The module read and its ancestors, before the forward starts.
    assert second == ["<root>", "layers.1"]  # a ModuleList never runs: not wrapped
    expected = expected_block(net, x, 1)
    assert torch.equal(out_first, expected)
    assert torch.equal(out_second, expected)


def test_a_loop_over_layers_warms_every_layer_it_read(net, x, no_leftovers) -> None:
    model = NNsight(net)
    for index in range(3):
        _, out = trace_reading(model, x, index)
        assert torch.equal(out, expected_block(net, x, index))
    at_start, out = trace_reading(model, x, 0)
    assert at_start == ["<root>", "layers.0", "layers.1", "layers.2"]
    assert torch.equal(out, expected_block(net, x, 0))


def test_warm_wrappers_serve_every_call_from_the_start(x) -> None:
    # A module called twice per forward, read at its second call: a wrapper lent
    # late would have to number the calls it missed; a warm one counts them all.
    class Twice(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.fc(x)))

    torch.manual_seed(0)
    net = Twice().eval()
    model = NNsight(net)
    calls: list[torch.Tensor] = []
    handle = net.fc.register_forward_hook(lambda m, a, o: calls.append(o))
    net(x)
    handle.remove()

    def body() -> torch.Tensor:
        with model.trace(x) as tracer:
            for _step in tracer.iter[1]:
                second = model.fc.output.save()
        return second

    for _ in range(3):
        assert torch.equal(body(), calls[1])


def test_a_module_whose_forward_changed_is_not_lent(net, x) -> None:
    model = NNsight(net)
    trace_reading(model, x, 1)
    original = type(net.layers[1]).forward
    net.layers[1].forward = lambda h: original(net.layers[1], h) * 2  # the user's patch
    try:
        at_start, out = trace_reading(model, x, 1)
        # Not wrapped at the start (the patch is not what the warm wrapper wraps),
        # yet the read is served, by a wrapper built around the patched forward.
        assert "layers.1" not in at_start
        patched = expected_block(net, x, 1)  # calls the patched forward
    finally:
        del net.layers[1].forward
    assert torch.equal(out, patched)
    assert torch.equal(patched, 2 * expected_block(net, x, 1))


def test_warm_wrappers_are_gone_after_a_failed_run(net, x, no_leftovers) -> None:
    model = NNsight(net)
    trace_reading(model, x, 2)
    try:
        with model.trace(x):
            model.layers[2].output.save()
            raise KeyError("boom")
    except KeyError:
        pass
    try:
        with model.trace(torch.ones(3, 5)):  # wrong width: the forward raises
            model.layers[2].output.save()
    except RuntimeError:
        pass
    assert wrapped(net) == []
    assert all("forward" not in m.__dict__ for m in net.modules())


def test_a_module_class_whose_forward_changed_is_not_lent(net, x, no_leftovers) -> None:
    model = NNsight(net)
    trace_reading(model, x, 1)
    cls = type(net.layers[1])
    original = cls.forward
    cls.forward = lambda self, h: original(self, h) * 2  # a patch of the class
    try:
        at_start, out = trace_reading(model, x, 1)
        patched = expected_block(net, x, 1)
    finally:
        cls.forward = original
    # No layer is lent its old wrapper (it wraps the old forward), yet the read
    # is served, by a wrapper around the patched one; the rest stay warm.
    assert at_start == ["<root>"]
    assert torch.equal(out, patched)
    assert not torch.equal(patched, expected_block(net, x, 1))
    # The class is back: the next run lends every warm wrapper again.
    at_start, out = trace_reading(model, x, 1)
    assert at_start == ["<root>", "layers.1"]
    assert torch.equal(out, expected_block(net, x, 1))


def test_a_module_with_its_own_instance_forward_stays_warm(net, x, no_leftovers) -> None:
    # Libraries such as accelerate give modules an instance forward for good.
    layer = net.layers[1]
    own = layer.forward
    layer.forward = lambda h: own(h) + 1
    try:
        model = NNsight(net)
        for _ in range(3):
            at_start, out = trace_reading(model, x, 1)
            assert torch.equal(out, expected_block(net, x, 1))
        assert at_start == ["<root>", "layers.1"]
        # Returned after every run: the instance forward is the library's again.
        assert wrapped(net) == []
        assert torch.equal(layer(torch.ones(1, 8)), own(torch.ones(1, 8)) + 1)
    finally:
        del layer.forward


def test_a_container_that_runs_is_wrapped_as_an_ancestor(x, no_leftovers) -> None:
    # A ModuleList is never called, so it is no ancestor a read can find running;
    # a subclass with its own forward is called, and a read of its output after a
    # child's (while it runs) needs its wrapper in place from its call's start.
    class Stack(torch.nn.ModuleList):
        def forward(self, h: torch.Tensor) -> torch.Tensor:
            for layer in self:
                h = torch.relu(layer(h))
            return h

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stack = Stack(torch.nn.Linear(8, 8) for _ in range(2))
            self.plain = torch.nn.ModuleList([torch.nn.Linear(8, 8)])

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return self.plain[0](self.stack(h))

    torch.manual_seed(0)
    net = Net().eval()
    h = torch.randn(2, 8)
    model = NNsight(net)
    for _ in range(3):  # cold, then warm
        with model.trace(h):
            at_start = save(wrapped(net))
            first = model.stack[0].output.save()
            whole = model.stack.output.save()
            last = model.plain[0].output.save()
    assert at_start == ["<root>", "stack", "stack.0", "plain.0"]
    assert torch.equal(first, net.stack[0](h))
    assert torch.equal(whole, net.stack(h))
    assert torch.equal(last, net(h))


def test_serve_module_wraps_a_module_before_any_read(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace(x):
        serve_module(model.layers[2], ancestors=False)
        at_start = save(wrapped(net))
        out = model.layers[2].output.save()
    assert at_start == ["layers.2"]
    assert torch.equal(out, expected_block(net, x, 2))
    with pytest.raises(NotInTraceError, match="outside a trace"):
        serve_module(model.layers[2])


def test_wrappers_of_a_class_made_before_and_after_its_forward_changed(net, x) -> None:
    model = NNsight(net)
    trace_reading(model, x, 0)  # warms layers.0's wrapper, around Block's forward
    cls = type(net.layers[0])
    original = cls.forward
    cls.forward = lambda self, h: original(self, h) * 2
    try:
        trace_reading(model, x, 1)  # the same call site adds layers.1's, around the patch
        at_start, out = trace_reading(model, x, 0)
        patched = expected_block(net, x, 0)
    finally:
        cls.forward = original
    assert "layers.0" not in at_start  # its wrapper calls the old forward
    assert torch.equal(out, patched)
    assert not torch.equal(patched, expected_block(net, x, 0))
