"""model.session(), model.edit() / clear_edits(), model.scan(): against plain torch."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor

from endoscope_envoy import NNsight


def plain(net, x, edit=None):
    h = net.embed(x)
    for i, layer in enumerate(net.layers):
        h = layer(h)
        if edit is not None:
            h = edit(i, h)
    return net.head(h)


# --------------------------------------------------------------------- session


def test_session_values_flow_between_traces(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.session():
        with model.trace(x):
            hidden = model.layers[0].output  # not saved: still usable in the session
        with model.trace(x * 0):
            model.layers[0].output = hidden
            patched = model.output.save()
        with model.trace(x):
            clean = model.output.save()
    assert torch.equal(patched, net.head(net.layers[2](net.layers[1](net.layers[0](net.embed(x))))))
    assert torch.equal(clean, net(x))
    with pytest.raises(NameError, match="'hidden' was assigned inside the traced block"):
        hidden + 1  # unsaved: gone after the session


def test_session_with_invokes_and_saved_values_after(net, x) -> None:
    model = NNsight(net)
    with model.session():
        with model.trace() as tracer:
            with tracer.invoke(x[:1]):
                first = model.layers[1].output.save()
            with tracer.invoke(x[1:]):
                rest = model.layers[1].output.save()
        total = torch.cat([first, rest]).save()
    expected = net.layers[1](net.layers[0](net.embed(x)))
    assert torch.equal(total, expected)
    assert torch.equal(first, expected[:1])


# ------------------------------------------------------------------------ edit


def test_edit_returns_an_edited_copy(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.edit() as (_, edited):
        model.layers[1].output[:] = 0
    with edited.trace(x):
        out_edited = edited.output.save()
    with model.trace(x):
        out_plain = model.output.save()

    def zero(i, h):
        return torch.zeros_like(h) if i == 1 else h

    assert torch.equal(out_edited, plain(net, x, zero))
    assert torch.equal(out_plain, net(x))
    assert edited._module is net


def test_edit_applies_to_every_later_trace_and_composes(net, x) -> None:
    model = NNsight(net)
    with model.edit() as (_, edited):
        edited.layers[0].output = edited.layers[0].output * 2
    for scale in (1.0, 3.0):
        with edited.trace(x):
            seen = edited.layers[0].output.save()
            edited.layers[2].output = edited.layers[2].output * scale
            out = edited.output.save()

        def edit(i, h, scale=scale):
            return h * 2 if i == 0 else h * scale if i == 2 else h

        assert torch.equal(seen, net.layers[0](net.embed(x)) * 2)
        assert torch.equal(out, plain(net, x, edit))


def test_edit_inplace_and_clear_edits(net, x, no_leftovers) -> None:
    model = NNsight(net)
    bias = torch.ones(8)
    with model.edit(inplace=True) as tracer:
        model.layers[2].output += bias
    assert tracer.target is model
    with model.trace(x):
        out = model.output.save()
    assert torch.equal(out, plain(net, x, lambda i, h: h + bias if i == 2 else h))
    model.clear_edits()
    with model.trace(x):
        out = model.output.save()
    assert torch.equal(out, net(x))


def test_edit_with_invokes(net, x) -> None:
    model = NNsight(net)
    with model.edit() as (_, edited):
        model.layers[1].output[:, 0] = 5
    with edited.trace() as tracer:
        with tracer.invoke(x[:2]):
            a = edited.layers[1].output.save()
        with tracer.invoke(x[2:]):
            b = edited.output.save()

    def five(i, h):
        if i == 1:
            h = h.clone()
            h[:, 0] = 5
        return h

    assert torch.equal(a[:, 0], torch.full((2,), 5.0))
    assert torch.equal(b, plain(net, x, five)[2:])


def test_edit_body_does_not_run_at_edit_time(net) -> None:
    model = NNsight(net)
    ran = []
    with model.edit():
        ran.append(model.layers[0].output)
    assert ran == []


# ------------------------------------------------------------------------ scan


def test_scan_gives_shapes_without_computing(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.scan(x) as tracer:
        hidden = model.layers[1].output.save()
        out = model.output.save()
    assert isinstance(hidden, FakeTensor) and isinstance(out, FakeTensor)
    assert hidden.shape == (3, 8) and out.shape == (3, 2) and out.dtype == torch.float32
    assert tracer.shapes["model.layers.1.fc"]["output"].shape == (3, 8)
    assert tracer.shapes["model.head"]["inputs"][0].shape == (3, 8)
    called = {p for p, e in model.named_modules() if not isinstance(e._module, torch.nn.ModuleList)}
    assert set(tracer.shapes) == called


def test_scan_validates_interventions_at_the_users_line(net, x) -> None:
    model = NNsight(net)
    with pytest.raises(RuntimeError, match="size") as info:
        with model.scan(x):
            model.layers[1].output[:] = torch.zeros(5)
    lines = [e.lineno + 1 for e in info.traceback if str(e.path) == __file__]
    assert test_scan_validates_interventions_at_the_users_line.__code__.co_firstlineno + 4 in lines


def test_scan_leaves_the_model_real(net, x) -> None:
    model = NNsight(net)
    with model.scan(x):
        model.layers[0].output[:] = 0
    with model.trace(x):
        out = model.output.save()
    assert not isinstance(out, FakeTensor)
    assert torch.equal(out, net(x))


def test_edit_as_target_shapes_follow_nnsight(net, x) -> None:
    model = NNsight(net)
    with model.edit() as (tracer, edited):
        edited.layers[0].output[:] = 0
    assert tracer.target is edited and edited is not model
    with model.edit(inplace=True) as same_tracer:
        pass
    assert same_tracer.target is model
    with pytest.raises(TypeError, match="as \\(tracer, edited\\)"):
        with model.edit() as (a, b, c):
            pass
