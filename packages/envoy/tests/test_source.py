"""module.source: one operation's values inside a forward, checked against plain torch."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from endoscope_envoy import MissedProviderError, NNsight, OutOfOrderError, save
from endoscope_source import SourceError


def scale(v: torch.Tensor) -> torch.Tensor:
    return torch.mul(v, 2) + torch.abs(v)


class Attention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = torch.nn.Linear(4, 4)
        self.k = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.matmul(self.q(x), self.k(x).transpose(-1, -2))
        weights = F.softmax(scores, dim=-1)
        return scale(torch.matmul(weights, x))


@pytest.fixture
def attention() -> Attention:
    torch.manual_seed(0)
    return Attention().eval()


def test_print_names_each_call_site(attention) -> None:
    text = str(NNsight(attention).source)
    for name in (
        "torch_matmul_0",
        "self_q_0",
        "self_k_0",
        "transpose_0",
        "F_softmax_0",
        "torch_matmul_1",
        "scale_0",
    ):
        assert name in text
    operations = NNsight(attention).source.operations
    assert (
        operations.index("torch_matmul_0")
        < operations.index("F_softmax_0")
        < operations.index("torch_matmul_1")
    )


def test_read_operation_output_and_input(attention, no_leftovers_attention) -> None:
    x = torch.randn(2, 3, 4)
    model = NNsight(attention)
    with model.trace(x):
        scores = model.source.torch_matmul_0.output.save()
        softmax_in = model.source.F_softmax_0.input.save()
        out = model.output.save()
    expected = torch.matmul(attention.q(x), attention.k(x).transpose(-1, -2))
    assert torch.allclose(scores, expected)
    assert torch.allclose(softmax_in, expected)
    assert torch.allclose(out, attention(x))


def test_write_an_operation(attention, no_leftovers_attention) -> None:
    x = torch.randn(2, 3, 4)
    model = NNsight(attention)
    with model.trace(x):
        model.source.F_softmax_0.output = torch.full((2, 3, 3), 1 / 3)
        out = model.output.save()
    assert torch.allclose(out, scale(torch.matmul(torch.full((2, 3, 3), 1 / 3), x)))


def test_recursive_source(attention, no_leftovers_attention) -> None:
    x = torch.randn(2, 3, 4)
    model = NNsight(attention)
    with model.trace(x):
        doubled = model.source.scale_0.source.torch_mul_0.output.save()
        model.source.scale_0.source.torch_abs_0.output[:] = 0
        out = model.output.save()
    inner = torch.matmul(
        F.softmax(torch.matmul(attention.q(x), attention.k(x).transpose(-1, -2)), dim=-1), x
    )
    assert torch.allclose(doubled, inner * 2)
    assert torch.allclose(out, inner * 2)


def test_source_of_a_child_module_in_a_bigger_model(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace(x):
        fc = model.layers[1].source.self_fc_0.output.save()
        act_in = model.layers[1].source.self_act_0.input.save()
    h = net.layers[0](net.embed(x))
    assert torch.equal(fc, net.layers[1].fc(h))
    assert torch.equal(act_in, fc)


def test_an_operation_read_in_trace_after_trace_leaves_no_hooks(net, x) -> None:
    model = NNsight(net)
    source = model.layers[1].source
    accessor = source._accessor
    values = []
    for scale in (1.0, 2.0):
        with model.trace(x * scale):
            values.append(source.self_fc_0.output.save())
        op = accessor.operations["self_fc_0"]
        assert not op.pre_hooks and not op.post_hooks and not op.fn_hooks
        assert not accessor.active and not accessor.counting
    assert source.self_fc_0 is source["self_fc_0"]  # one envoy per operation
    for scale, value in zip((1.0, 2.0), values):
        h = net.layers[0](net.embed(x * scale))
        assert torch.equal(value, net.layers[1].fc(h))


def test_unknown_operation_lists_names(attention) -> None:
    with pytest.raises(AttributeError, match="F_softmax_0"):
        NNsight(attention).source.F_softmax_9


def test_untouched_modules_keep_their_forward(attention) -> None:
    forward = attention.forward
    model = NNsight(attention)
    with model.trace(torch.randn(1, 3, 4)):
        model.source.F_softmax_0.output.save()
    assert attention.forward == forward
    assert "forward" not in attention.__dict__


@pytest.fixture
def no_leftovers_attention(attention):
    yield
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in attention.modules())
    assert "forward" not in attention.__dict__
    accessor = attention.__dict__.get("__source_accessor__")
    assert accessor is None or not accessor.active


# ------------------------------------------------------- reads in the wrong order


def test_an_operation_of_a_module_the_model_left_is_out_of_order(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace(x):  # the first trace learns the module order
        model.output.save()
    with pytest.raises(OutOfOrderError) as caught:
        with model.trace(x):
            model.layers[1].output.save()
            model.layers[0].source.self_fc_0.output.save()
    assert "model.layers.0.source.self_fc_0.output.i0" in str(caught.value)
    assert "line" in str(caught.value) and "self_fc_0.output.save()" in str(caught.value)


def test_operations_of_one_forward_read_out_of_order(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with pytest.raises(OutOfOrderError) as caught:
        with model.trace(x):
            model.layers[0].source.self_act_0.output.save()
            model.layers[0].source.self_fc_0.output.save()
    assert "it is now at model.layers.0.source.self_act_0.output.i0" in str(caught.value)


class Shared(torch.nn.Module):
    """One block called twice in a forward."""

    def __init__(self) -> None:
        super().__init__()
        self.block = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
        self.inner = Branchy()

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.inner(self.inner(v))


class Branchy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)
        self.act = torch.nn.ReLU()

    def forward(self, v: torch.Tensor, negate: bool = False) -> torch.Tensor:
        h = self.fc(v)
        if negate:
            h = torch.neg(h)
        return self.act(h)


def test_a_later_call_is_never_served_as_an_earlier_one() -> None:
    """Reading the first call's fc after its act already ran is a mistake; it
    used to wait for the second call's fc and serve it as the first's."""
    torch.manual_seed(0)
    model = NNsight(Shared())
    with pytest.raises(OutOfOrderError):
        with model.trace(torch.randn(2, 4)):
            model.inner.source.self_act_0.output.save()
            model.inner.source.self_fc_0.output.save()
    v = torch.randn(2, 4)
    with model.trace(v) as tracer:  # in order, both calls: fine
        fcs = []
        for _ in tracer.iter[0:2]:
            fcs.append(model.inner.source.self_fc_0.output)
        first, second = save(fcs[0]), save(fcs[1])
    inner = model._module.inner
    assert torch.equal(first, inner.fc(v))
    assert torch.equal(second, inner.fc(inner(v)))


def test_an_operation_that_does_not_run_is_missed_not_out_of_order() -> None:
    torch.manual_seed(0)
    model = NNsight(Branchy())
    with pytest.raises(MissedProviderError) as caught:
        with model.trace(torch.randn(2, 4)):
            model.source.torch_neg_0.output.save()
    assert not isinstance(caught.value, OutOfOrderError)


def test_operations_follow_their_envoy_to_a_new_module(attention) -> None:
    """An Envoy pointed at another module (what loading weights does: the
    meta-package re-points every Envoy and drops its .source) takes operations
    held from before with it, nested ones included."""
    model = NNsight(attention)
    nested = model.source.scale_0.source.torch_mul_0
    query = model.source.self_q_0
    torch.manual_seed(5)
    replacement = Attention().eval()
    model._module = replacement
    model._source = None
    model._modules_replaced()
    x = torch.randn(2, 3, 4)
    with model.trace(x):
        q = query.output.save()
        doubled = nested.output.save()
    assert torch.equal(q, replacement.q(x))
    inner = torch.matmul(
        F.softmax(torch.matmul(replacement.q(x), replacement.k(x).transpose(-1, -2)), dim=-1), x
    )
    assert torch.allclose(doubled, inner * 2)
    assert "forward" not in attention.__dict__ and "forward" not in replacement.__dict__


def double(v: torch.Tensor) -> torch.Tensor:
    return torch.mul(v, 2)


def triple(v: torch.Tensor) -> torch.Tensor:
    return torch.mul(v, 3)


class Picker(torch.nn.Module):
    """Calls a function chosen at run time through a local variable (like the
    attention interface of a transformers model)."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        fn = double if self.factor == 2 else triple
        return fn(self.fc(v))


def test_source_of_a_call_through_a_local_variable() -> None:
    torch.manual_seed(0)
    picker = Picker(3)
    model = NNsight(picker)
    x = torch.randn(2, 4)
    with pytest.raises(SourceError, match="`fn` is a local variable of Picker.forward"):
        model.source.fn_0.source  # nothing ran yet: unknown
    with model.trace(x):  # any read of this forward's operations records the callee
        model.source.self_fc_0.output.save()
    assert "def triple" in str(model.source.fn_0.source)
    with model.trace(x):
        product = model.source.fn_0.source.torch_mul_0.output.save()
        out = model.output.save()
    assert torch.equal(product, picker.fc(x) * 3)
    assert torch.equal(out, picker(x))


# -------------------------------- a built .source runs from the start (issue 17, 12)
#
# nnsight 0.8.1: once a module's `.source` exists, a trace may read a child
# module's output and then an operation of the parent's `.source` in the same
# step (GPT-2: `attn.c_attn.output`, then `attn.source.self_c_proj_0.input`); the
# parent's forward runs its rewritten form from the start of the run. Modules
# whose `.source` nobody built run their own forward.


def forward_frames(module: torch.nn.Module, calls: list[Any]) -> None:
    """Record, per call of ``module``, the code of the frame that called it."""

    def hook(*_: Any) -> None:
        frame = sys._getframe(1)
        while frame.f_code.co_name != "forward" or frame.f_locals.get("self") is module:
            frame = frame.f_back
        calls.append(frame.f_code)

    module.register_forward_hook(hook)


def test_a_child_then_its_parents_operations(net, x) -> None:
    model = NNsight(net)
    str(model.layers[1].source)  # built outside any trace
    with model.trace(x):
        fc = model.layers[1].fc.output.save()
        act = model.layers[1].source.self_act_0.output.save()
        model.layers[1].source.self_act_0.output = act * 0  # and written
        out = model.output.save()
    h = net.layers[0](net.embed(x))
    assert torch.equal(fc, net.layers[1].fc(h))
    assert torch.equal(act, torch.relu(fc))
    assert torch.equal(out, net.head(net.layers[2](h)))  # layer 1 adds zero


def test_the_operation_around_the_child_read_after_it(net, x) -> None:
    model = NNsight(net)
    model.layers[1].source.self_fc_0  # built outside any trace
    with model.trace(x):
        fc = model.layers[1].fc.output.save()
        around = model.layers[1].source.self_fc_0.output.save()
    assert around is fc or torch.equal(around, fc)
    assert torch.equal(fc, net.layers[1].fc(net.layers[0](net.embed(x))))


def test_an_operation_that_ran_before_the_child_is_out_of_order(net, x) -> None:
    model = NNsight(net)
    model.layers[1].source.self_fc_0
    with pytest.raises(OutOfOrderError, match="self_fc_0.output.i0"):
        with model.trace(x):
            model.layers[1].act.output.save()
            model.layers[1].source.self_fc_0.output.save()


def test_a_source_built_in_a_trace_runs_from_the_start_of_the_next(net, x) -> None:
    """nnsight 0.8.1 alike: the run that builds ``.source`` after its module's
    forward started misses the operation (nnsight: OutOfOrderError); the next works."""
    model = NNsight(net)
    with pytest.raises(MissedProviderError, match="self_act_0.output.i0"):
        with model.trace(x):
            model.layers[1].fc.output.save()
            model.layers[1].source.self_act_0.output.save()
    with model.trace(x):
        fc = model.layers[1].fc.output.save()
        act = model.layers[1].source.self_act_0.output.save()
    assert torch.equal(act, torch.relu(fc))
    assert torch.equal(fc, net.layers[1].fc(net.layers[0](net.embed(x))))


def test_modules_without_a_built_source_keep_their_own_forward(net, x) -> None:
    model = NNsight(net)
    model.layers[1].source.self_fc_0
    callers: dict[int, list[Any]] = {0: [], 1: [], 2: []}
    for index, calls in callers.items():
        forward_frames(net.layers[index].fc, calls)
    with model.trace(x):
        # Every block is wrapped (an ancestor of a read).
        model.layers[0].fc.output.save()
        model.layers[1].fc.output.save()
        model.layers[1].source.self_act_0.output.save()
        model.layers[2].fc.output.save()
    plain = type(net.layers[0]).forward.__code__
    assert callers[0] == [plain] and callers[2] == [plain]
    injected = net.layers[1].__dict__["__source_accessor__"].injected
    assert callers[1] == [injected.__code__]  # the rewritten forward
    assert "__source_accessor__" not in net.layers[0].__dict__
    with model.trace(x):
        model.layers[2].fc.output.save()
    assert callers[1][-1] is plain  # not wrapped in this run: its own forward


# ------------------------------ .source of any callee expression (issue 17, 13)
#
# nnsight 0.8.1: `.source` of an operation whose callee is an expression (a
# call's result, a subscript, ...) resolves, inside a trace, the callee that
# actually runs; outside a trace it raises ("only available inside a trace").


class Chooser(torch.nn.Module):
    """Calls what a method call returns, then a tensor method (no Python source)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)
        self.table = {"scale": scale}

    def pick(self, factor: int) -> Any:
        return double if factor == 2 else triple

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        picked = self.pick(3)(self.fc(v))
        return self.table["scale"](picked).softmax(-1)


def test_source_of_an_expression_callee_is_the_callee_that_runs() -> None:
    torch.manual_seed(0)
    chooser = Chooser()
    model = NNsight(chooser)
    x = torch.randn(2, 4)
    with pytest.raises(
        SourceError, match=r"is an expression.*only known when it runs.*inside a trace"
    ):
        model.source.call_0.source
    with model.trace(x):
        tripled = model.source.call_0.source.torch_mul_0.output.save()
        model.source.self_table_0.source.torch_abs_0.output = torch.zeros(2, 4)
        out = model.output.save()
    fc = chooser.fc(x)
    assert torch.equal(tripled, fc * 3)
    assert torch.equal(out, torch.softmax(fc * 3 * 2, -1))
    # After a run the callee that ran is known outside a trace too.
    assert "def triple" in str(model.source.call_0.source)


def test_source_of_a_builtin_callee_says_it_has_none() -> None:
    model = NNsight(Chooser())
    with pytest.raises(SourceError, match="softmax"):
        with model.trace(torch.randn(2, 4)):
            model.source.softmax_0.source
