"""Gradients inside traces, each checked against the same backward pass in plain torch."""

from __future__ import annotations

import pytest
import torch

from endoscope_envoy import MissedProviderError, NNsight


@pytest.fixture
def mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Tanh(),
        torch.nn.Linear(8, 2),
    )  # fmt: skip


@pytest.fixture
def xs() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 4)


def plain_grads(mlp, x, replace_second=None):
    """Gradients of the outputs of layers 0 and 2 for loss = output.sum() (squared)."""
    first = mlp[0](x)
    first.retain_grad()
    second = mlp[2](mlp[1](first))
    if replace_second is not None:
        second.register_hook(lambda g: replace_second(g))
    second.retain_grad()
    out = mlp[4](mlp[3](second))
    (out**2).sum().backward()
    return first.grad, second.grad


def test_grad_of_hidden_values(mlp, xs) -> None:
    model = NNsight(mlp)
    with model.trace(xs):
        first = model[0].output
        second = model[2].output
        loss = (model.output**2).sum()
        with loss.backward():
            g_second = second.grad.save()
            g_first = first.grad.save()
    expected_first, expected_second = plain_grads(mlp, xs)
    assert torch.equal(g_second, expected_second)
    assert torch.equal(g_first, expected_first)
    assert "grad" not in torch.Tensor.__dict__


def test_setting_a_grad_changes_the_rest_of_the_backward_pass(mlp, xs) -> None:
    model = NNsight(mlp)
    with model.trace(xs):
        first = model[0].output
        second = model[2].output
        with (model.output**2).sum().backward():
            second.grad = second.grad * 3
            g_first = first.grad.save()
    expected_first, _ = plain_grads(mlp, xs, replace_second=lambda g: g * 3)
    assert torch.equal(g_first, expected_first)


def test_parameter_grad_inside_the_block(mlp, xs) -> None:
    model = NNsight(mlp)
    with model.trace(xs):
        with (model.output**2).sum().backward():
            weight_grad = model[0].weight.grad.save()
    mlp.zero_grad()
    (mlp(xs) ** 2).sum().backward()
    assert torch.equal(weight_grad, mlp[0].weight.grad)


def test_one_backward_for_several_invokes(mlp, xs) -> None:
    model = NNsight(mlp)
    with model.trace() as tracer:
        with tracer.invoke(xs[:1]):
            first_a = model[0].output
        with tracer.invoke(xs[1:]):
            first_b = model[0].output
        with tracer.invoke():
            with (model.output**2).sum().backward():
                g_a = first_a.grad.save()
                g_b = first_b.grad.save()
    expected, _ = plain_grads(mlp, xs)
    assert torch.equal(g_a, expected[:1])
    assert torch.equal(g_b, expected[1:])


def test_backward_per_invoke_with_retain_graph(mlp, xs) -> None:
    model = NNsight(mlp)
    with model.trace() as tracer:
        with tracer.invoke(xs[:1]):
            first_a = model[0].output
            with model.output.sum().backward(retain_graph=True):
                g_a = first_a.grad.save()
        with tracer.invoke(xs[1:]):
            first_b = model[0].output
            with (model.output * 2).sum().backward():
                g_b = first_b.grad.save()
    first = mlp[0](xs)
    first.retain_grad()
    out = mlp[4](mlp[3](mlp[2](mlp[1](first))))
    out[:1].sum().backward(retain_graph=True)
    expected_a = first.grad[:1].clone()
    first.grad = None
    (out[1:] * 2).sum().backward()
    assert torch.equal(g_a, expected_a)
    assert torch.equal(g_b, first.grad[1:])


def test_reading_grads_in_forward_order_is_a_clear_error(mlp, xs) -> None:
    model = NNsight(mlp)
    with pytest.raises(MissedProviderError, match="reverse order of the forward") as info:
        with model.trace(xs):
            first = model[0].output
            second = model[2].output
            with (model.output**2).sum().backward():
                first.grad.save()
                second.grad.save()
    assert info.value.location is not None and info.value.location[0] == __file__


def test_grad_of_a_tensor_without_grad_is_a_clear_error(mlp, xs) -> None:
    model = NNsight(mlp)
    with pytest.raises(RuntimeError, match="does not require grad"):
        with model.trace(xs):
            out = model.output
            with out.sum().backward():
                xs.grad.save()


def test_module_values_inside_the_block_are_a_clear_error(mlp, xs) -> None:
    model = NNsight(mlp)
    with pytest.raises(MissedProviderError, match="only\\s+gradients exist"):
        with model.trace(xs):
            out = model.output
            with out.sum().backward():
                model[2].output.save()


def test_backward_outside_a_with_statement_runs_at_once(mlp, xs) -> None:
    model = NNsight(mlp)
    mlp.zero_grad()
    with model.trace(xs):
        model.output.sum().backward()
    traced = mlp[0].weight.grad.clone()
    mlp.zero_grad()
    mlp(xs).sum().backward()
    assert torch.equal(traced, mlp[0].weight.grad)


def test_backward_outside_traces_is_torchs(mlp, xs) -> None:
    mlp.zero_grad()
    mlp(xs).sum().backward()
    assert mlp[0].weight.grad is not None
    assert "grad" not in torch.Tensor.__dict__


def test_exception_in_the_block_keeps_its_type_and_restores_everything(mlp, xs) -> None:
    model = NNsight(mlp)
    with pytest.raises(KeyError, match="oops"):
        with model.trace(xs):
            first = model[0].output
            with model.output.sum().backward():
                first.grad.save()
                raise KeyError("oops")
    assert "grad" not in torch.Tensor.__dict__
    with model.trace(xs):
        out = model.output.save()
    assert torch.equal(out, mlp(xs))


def test_an_error_in_a_backward_block_shows_only_the_users_frames(mlp, xs) -> None:
    import traceback

    model = NNsight(mlp)
    with pytest.raises(KeyError) as caught:
        with model.trace(xs):
            hidden = model[2].output
            loss = (model.output**2).sum()
            with loss.backward():
                hidden.grad.save()
                raise KeyError("mine")
    frames = traceback.extract_tb(caught.value.__traceback__)
    assert [f.line for f in frames] == [
        "with model.trace(xs):",
        "with loss.backward():",
        'raise KeyError("mine")',
    ]


# A library that replaced Tensor.backward before endoscope was imported, the way
# nnsight 0.8.1 does: it looks at its caller's frame (nnsight for a `with`
# statement there). Reached through a wrapper of ours, its caller would be our
# frame.
_LOADED_FIRST = """
import functools
import sys
import torch

callers = []
torch_backward = torch.Tensor.backward

@functools.wraps(torch_backward)
def their_backward(tensor, *args, **kwargs):
    callers.append(sys._getframe(1).f_code.co_name)
    return torch_backward(tensor, *args, **kwargs)

torch.Tensor.backward = their_backward

import endoscope_envoy

def users_code():
    x = torch.ones(2, requires_grad=True)
    (x * 3).sum().backward()
    return x.grad

assert torch.Tensor.backward is their_backward, torch.Tensor.backward
assert users_code().tolist() == [3.0, 3.0]
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
x = torch.randn(2, 3)
model = endoscope_envoy.NNsight(net)
with model.trace(x):
    hidden = model[0].output
    loss = model.output.sum()
    with loss.backward():
        grad = hidden.grad.save()
assert torch.Tensor.backward is their_backward, torch.Tensor.backward
hidden = net[0](x)
hidden.retain_grad()
net[2](net[1](hidden)).sum().backward()
assert torch.equal(grad, hidden.grad)
assert users_code().tolist() == [3.0, 3.0]
print(callers)
"""


def test_a_backward_replaced_before_import_is_left_in_place() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _LOADED_FIRST], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    # Their function was called by the user's code each time, never through ours;
    # the backward block ran torch's own (theirs leads to it through __wrapped__).
    assert done.stdout.split("\n")[0] == "['users_code', '<module>', 'users_code']"


def test_torch_own_backward_is_found_behind_a_wrapper() -> None:
    import functools

    from endoscope_envoy._backward import _find_torch_backward, _is_torch_own

    torch_own = torch._tensor.Tensor.backward
    if not _is_torch_own(torch_own):  # endoscope's is installed: it wraps torch's
        torch_own = torch_own.__wrapped__
    assert _is_torch_own(torch_own)

    @functools.wraps(torch_own)
    def wrapped(*args, **kwargs):
        return torch_own(*args, **kwargs)

    def bare(*args, **kwargs):
        return torch_own(*args, **kwargs)

    def looped(*args, **kwargs):
        return None

    looped.__wrapped__ = looped  # type: ignore[attr-defined]
    assert _find_torch_backward(functools.wraps(wrapped)(lambda *a: None)) is torch_own
    assert _find_torch_backward(bare) is bare
    assert _find_torch_backward(looped) is looped
