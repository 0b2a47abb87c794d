"""remote="local": the block is serialized as for a remote run, then runs here.

nnsight 0.8.1 (issue 17, point 6): ``model.trace(..., remote="local")``,
``generate(..., remote="local")`` and ``model.session(remote="local")`` pickle the
intervention and every value it takes from outside (lambdas and closures by
value), unpickle it, then run it in this process on the caller's own values; a
value that does not pickle fails before the model runs, with pickle's
``TypeError`` ("cannot pickle '_thread.lock' object"). ``remote=True`` goes to
NDIF, which endoscope does not have: a clear error.
"""

from __future__ import annotations

import threading
import traceback

import pytest
import torch

from endoscope_envoy import NNsight, RemoteSerializationError


def forward_calls(net: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    net.register_forward_hook(lambda module, args, out: calls.append(1))
    return calls


def test_a_local_remote_trace_gives_plain_torch_values(net, x, no_leftovers) -> None:
    model = NNsight(net)
    scale = torch.tensor(3.0)  # a value from outside travels with the block
    with model.trace(x, remote="local"):
        hidden = model.layers[0].output.save()
        model.layers[1].output = model.layers[1].output * scale
        out = model.output.save()
    plain_hidden = net.layers[0](net.embed(x))
    assert torch.equal(hidden, plain_hidden)
    assert torch.equal(out, net.head(net.layers[2](net.layers[1](plain_hidden) * 3)))


def test_lambdas_and_closures_travel_by_value(net, x) -> None:
    model = NNsight(net)
    double = lambda t: t * 2  # noqa: E731

    def adder(k: float):
        def add(t: torch.Tensor) -> torch.Tensor:
            return t + k

        return add

    add_one = adder(1.0)
    with model.trace(x, remote="local"):
        both = add_one(double(model.embed.output)).save()
    assert torch.equal(both, net.embed(x) * 2 + 1)


def test_an_unpicklable_value_fails_before_the_model_runs(net, x) -> None:
    model = NNsight(net)
    calls = forward_calls(net)
    lock = threading.Lock()
    with pytest.raises(RemoteSerializationError) as caught:
        with model.trace(x, remote="local"):
            assert lock is not None
            model.output.save()
    assert isinstance(caught.value, TypeError)  # nnsight's pickling error is one
    message = str(caught.value)
    assert "`lock`" in message and "cannot pickle '_thread.lock' object" in message
    assert "Make the value inside the block" in message
    users = [f for f in traceback.extract_tb(caught.value.__traceback__) if f.filename == __file__]
    assert users[-1].line == 'with model.trace(x, remote="local"):'
    assert calls == []


def test_outside_values_are_the_callers_own(net, x) -> None:
    """As nnsight's local simulation: the block runs on the caller's objects."""
    model = NNsight(net)
    seen: list[torch.Tensor] = []
    with model.trace(x, remote="local"):
        seen.append(model.embed.output)
    assert len(seen) == 1 and torch.equal(seen[0], net.embed(x))


def test_a_local_remote_session(net, x) -> None:
    model = NNsight(net)
    with model.session(remote="local"):
        with model.trace(x):
            first = model.layers[0].output.save()
        with model.trace(x):
            model.layers[0].output = first * 0
            out = model.output.save()
    zeros = torch.zeros_like(first)
    assert torch.equal(out, net.head(net.layers[2](net.layers[1](zeros))))
    lock = threading.Lock()
    with pytest.raises(RemoteSerializationError, match="`lock`"):
        with model.session(remote="local"):
            with model.trace(x):
                assert lock is not None


def test_a_local_remote_scan(net, x) -> None:
    model = NNsight(net)
    with model.scan(x, remote="local"):
        hidden = model.layers[0].output.save()
    assert hidden.shape == (3, 8)


@pytest.mark.parametrize("remote", [True, "https://ndif.example"])
def test_remote_runs_are_a_clear_error(net, x, remote) -> None:
    model = NNsight(net)
    with pytest.raises(NotImplementedError, match=r"remote execution \(NDIF\) is not available"):
        model.trace(x, remote=remote)
    with pytest.raises(NotImplementedError, match=r"session\(remote="):
        model.session(remote=remote)


lock = threading.Lock()  # a module global the block below shadows


def test_a_global_the_block_assigns_itself_does_not_travel(net, x) -> None:
    model = NNsight(net)
    with model.trace(x, remote="local"):
        lock = model.embed.output  # the block's own value, not the global
        kept = lock.save()
        out = model.output.save()
    assert torch.equal(out, net(x)) and torch.equal(kept, net.embed(x))
