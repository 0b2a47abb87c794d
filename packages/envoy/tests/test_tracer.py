"""Traces and invokes, each checked against the same computation in plain torch."""

from __future__ import annotations

import linecache
import sys
import textwrap
import traceback
import warnings
from pathlib import Path

import pytest
import torch

from endoscope_envoy import NNsight, UnsavedValueWarning, save
from endoscope_interleaver import OutOfOrderError
from endoscope_tracing import UnsavedName


def plain(net, x, edit=None):
    """Run ``net`` with plain torch hooks; ``edit(name, value) -> value`` per block."""
    h = net.embed(x)
    for i, layer in enumerate(net.layers):
        h = layer(h)
        if edit is not None:
            h = edit(i, h)
    return net.head(h)


def test_read_outputs_and_inputs(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace(x):
        embedded = model.embed.output.save()
        block_in = model.layers[1].input.save()
        args, kwargs = model.layers[2].inputs
        third = save(args[0])
        out = model.output.save()
    expected = net.embed(x)
    assert torch.equal(embedded, expected)
    assert torch.equal(block_in, net.layers[0](expected))
    assert torch.equal(third, net.layers[1](net.layers[0](expected)))
    assert torch.equal(out, net(x))


def test_in_place_edit(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace(x):
        model.layers[1].output[:, :4] = 0
        out = model.output.save()

    def zero(i, h):
        if i == 1:
            h = h.clone()
            h[:, :4] = 0
        return h

    assert torch.equal(out, plain(net, x, zero))


def test_replacement(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace(x):
        model.layers[0].output = model.layers[0].output * 2
        out = model.output.save()
    assert torch.allclose(out, plain(net, x, lambda i, h: h * 2 if i == 0 else h))


def test_replace_an_input(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace(x):
        model.head.input = torch.zeros(3, 8)
        out = model.output.save()
    assert torch.equal(out, net.head.bias.expand(3, 2))


def test_unsaved_values_do_not_leak(net, x) -> None:
    model = NNsight(net)
    with model.trace(x):
        hidden = model.layers[0].output + 1
        kept = model.layers[0].output.save()
    with pytest.raises(NameError, match="'hidden' was assigned inside the traced block"):
        hidden + 1
    assert kept.shape == (3, 8)


def test_save_on_containers(x) -> None:
    class Pair(torch.nn.Module):
        def forward(self, v):
            return v + 1, {"double": v * 2}

    model = NNsight(torch.nn.Sequential(Pair()))
    with model.trace(x):
        both = model[0].output.save()
        listed = [1, 2].save()
    assert torch.equal(both[0], x + 1)
    assert torch.equal(both[1]["double"], x * 2)
    assert listed == [1, 2]


def test_invokes_batch_and_see_their_own_rows(net, x, no_leftovers) -> None:
    model = NNsight(net)
    calls = []
    net.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    with model.trace() as tracer:
        with tracer.invoke(x[:1]):
            first = model.layers[0].output.save()
        with tracer.invoke(x[1:]):
            rest = model.layers[0].output.save()
        with tracer.invoke():
            everything = model.layers[0].output.save()
    net._forward_pre_hooks.clear()
    assert calls == [3]  # one batched forward
    full = net.layers[0](net.embed(x))
    assert torch.equal(first, full[:1])
    assert torch.equal(rest, full[1:])
    assert torch.equal(everything, full)


def test_edits_in_one_invoke_touch_only_its_rows(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace() as tracer:
        with tracer.invoke(x[:2]):
            model.layers[0].output[:] = 0
            a = model.output.save()
        with tracer.invoke(x[2:]):
            b = model.output.save()

    def zero_first_two(i, h):
        if i == 0:
            h = h.clone()
            h[:2] = 0
        return h

    expected = plain(net, x, zero_first_two)
    assert torch.allclose(a, expected[:2])
    assert torch.allclose(b, expected[2:])


def test_replacement_in_one_invoke(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace() as tracer:
        with tracer.invoke(x[:1]):
            model.layers[2].output = torch.ones(1, 8)
        with tracer.invoke(x[1:]):
            pass
        with tracer.invoke():
            out = model.output.save()
    assert torch.allclose(out[0], net.head(torch.ones(8)))
    assert torch.allclose(out[1:], net(x[1:]))


def test_activation_patching_across_invokes_without_barrier(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace() as tracer:
        with tracer.invoke(x[:1]):
            source = model.layers[1].output
        with tracer.invoke(x[1:2]):
            target = model.layers[1].output
            target[:] = source
            patched = model.output.save()
    clean = net.layers[1](net.layers[0](net.embed(x[:1])))
    assert torch.allclose(patched, net.head(net.layers[2](clean)))


def hooked_forward(net, x, hooks):
    """``net(x)`` with plain torch forward hooks ``{module: hook}``, removed afterwards."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    try:
        with torch.no_grad():
            return net(x)
    finally:
        for handle in handles:
            handle.remove()


def copy_row(source: int, target: int):
    """A forward hook that sets row ``target`` of the output to row ``source``."""

    def hook(module, args, output):
        output = output.clone()
        output[target] = output[source]
        return output

    return hook


@pytest.mark.parametrize(("read", "write"), [(1, 1), (0, 2), (2, 2)])
def test_a_later_invoke_may_use_a_value_before_the_earlier_invoke_made_it(
    net, x, no_leftovers, read, write
) -> None:
    model = NNsight(net)
    with model.trace() as tracer:
        with tracer.invoke(x[:1]):
            source = model.layers[read].fc.output
            clean = model.output.save()
        with tracer.invoke(x[1:2]):
            model.layers[write].fc.output = source  # waits for the first invoke's source
            patched = model.output.save()
    captured = {}

    def keep(module, args, output):
        captured["source"] = output[:1].clone()

    def patch(module, args, output):
        output = output.clone()
        output[1:2] = captured["source"]
        return output

    if read == write:
        expected = hooked_forward(net, x[:2], {net.layers[write].fc: copy_row(0, 1)})
    else:
        hooks = {net.layers[read].fc: keep, net.layers[write].fc: patch}
        expected = hooked_forward(net, x[:2], hooks)
    assert torch.allclose(patched, expected[1:2])
    assert torch.allclose(clean, net(x[:1]))


def test_a_wait_in_the_middle_of_an_invoke_keeps_what_it_read_before(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace() as tracer:
        with tracer.invoke(x[:1]):
            source = model.layers[1].output
        with tracer.invoke(x[1:2]):
            mine = model.layers[0].output.save()
            model.layers[1].output = (mine + source) / 2  # waits at layer 0
            patched = model.output.save()

    def mix(module, args, output):
        output = output.clone()
        output[1] = (net.layers[0](net.embed(x[1])) + output[0]) / 2
        return output

    expected = hooked_forward(net, x[:2], {net.layers[1]: mix})
    assert torch.allclose(mine, net.layers[0](net.embed(x[1:2])))
    assert torch.allclose(patched, expected[1:2])


def test_invokes_see_earlier_invokes_values_as_if_run_in_order(net, x, no_leftovers) -> None:
    model = NNsight(net)
    total = 0
    with model.trace() as tracer:
        for row in range(3):
            with tracer.invoke(x[row : row + 1]):
                total = (total + model.output.sum()).save()  # waits for the previous one
        with tracer.invoke(x[:1]):
            scaled = (model.layers[2].output * 0 + total).save()
    expected = net(x).sum().detach()
    assert torch.allclose(total, expected)
    assert torch.allclose(scaled, expected.expand(1, 8))


def test_a_value_left_from_an_earlier_trace_is_not_used_before_the_new_one(
    net, x, no_leftovers
) -> None:
    model = NNsight(net)
    patched = []
    for scale in (1.0, -2.0):
        inputs = x * scale
        with model.trace() as tracer:
            with tracer.invoke(inputs[:1]):
                source = model.layers[0].output.save()  # saved: the caller keeps it
            with tracer.invoke(inputs[1:2]):
                model.layers[0].output = source  # this trace's, not the last one's
                patched.append(model.output.save())
        expected = hooked_forward(net, inputs[:2], {net.layers[0]: copy_row(0, 1)})
        assert torch.allclose(patched[-1], expected[1:2])
    assert not torch.allclose(patched[0], patched[1])


def test_reads_that_cannot_need_waiting_stay_plain(net, x) -> None:
    model = NNsight(net)
    invokers = []
    with model.trace() as tracer:
        with tracer.invoke(x[:1]) as first:
            source = model.layers[0].output
            seen = model.layers[1].output
        with tracer.invoke(x[1:2]) as second:
            seen = model.layers[1].output  # binds it first: no wait
            model.layers[2].output = seen + source
        invokers += [first, second]
    first, second = invokers
    assert first._awaits == frozenset()
    assert second._awaits == frozenset({"source"})


def error_line(error: BaseException, code: str) -> int:
    """The line of the innermost frame of ``error`` in the test's own file."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == __file__]
    assert frames[-1].line.strip() == code
    return frames[-1].lineno


def test_an_earlier_invoke_that_never_assigns_the_name_fails_at_the_users_line(
    net, x, no_leftovers
) -> None:
    model = NNsight(net)
    with pytest.raises(NameError) as caught:
        with model.trace() as tracer:
            with tracer.invoke(x[:1]):
                if model.layers[0].output.sum() > 1e9:
                    source = model.layers[1].output
                model.layers[2].output
            with tracer.invoke(x[1:2]):
                model.layers[1].output = source
    error = caught.value
    assert error.name == "source"
    message = str(error)
    assert "invoke 0" in message and "ended without assigning it" in message
    error_line(error, "model.layers[1].output = source")


@pytest.mark.timeout(20)
def test_a_wait_that_can_never_end_fails_at_the_users_line(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with pytest.raises(NameError) as caught:
        with model.trace() as tracer:
            barrier = tracer.barrier(2)
            with tracer.invoke(x[:1]):
                barrier()
                source = model.layers[1].output
            with tracer.invoke(x[1:2]):
                model.layers[1].output = source  # before its barrier: a deadlock
                barrier()
    message = str(caught.value)
    assert "deadlock" in message and "barrier" in message
    error_line(caught.value, "model.layers[1].output = source  # before its barrier: a deadlock")


def test_waiting_past_the_point_to_patch_fails_at_the_users_line(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with pytest.raises(OutOfOrderError) as caught:
        with model.trace() as tracer:
            with tracer.invoke(x[:1]):
                source = model.layers[2].output
            with tracer.invoke(x[1:2]):
                model.layers[0].output = source  # layer 0 runs before layer 2
    message = str(caught.value)
    assert "waited for 'source', which invoke 0 assigns" in message
    assert "earlier trace" in message
    error_line(caught.value, "model.layers[0].output = source  # layer 0 runs before layer 2")


def test_a_point_gone_before_the_wait_began_is_not_blamed_on_it(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace(x):  # learns the order of the points
        pass
    with pytest.raises(OutOfOrderError) as caught:
        with model.trace() as tracer:
            with tracer.invoke(x[:1]):
                source = model.layers[2].output
            with tracer.invoke(x[1:2]):
                model.layers[1].output
                model.layers[2].output = source
                model.layers[0].output
    assert "waited" not in str(caught.value)
    error_line(caught.value, "model.layers[0].output")


def test_a_name_only_a_later_invoke_assigns_is_explained(net, x) -> None:
    model = NNsight(net)
    with pytest.raises(NameError) as info:
        with model.trace() as tracer:
            with tracer.invoke(x[:1]):
                model.layers[1].output = source_of_later  # noqa: F821
            with tracer.invoke(x[1:2]):
                source_of_later = model.layers[1].output  # noqa: F841
    notes = getattr(info.value, "__notes__", [])
    if sys.version_info >= (3, 11):
        assert "later invoke (invoke 1)" in notes[0]


def test_barrier(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace() as tracer:
        barrier = tracer.barrier(2)
        with tracer.invoke(x[:1]):
            embedded = model.embed.output
            barrier()
        with tracer.invoke(x[1:2]):
            barrier()
            model.embed.output = embedded
            out = model.output.save()
    assert torch.allclose(out, net(x[:1]))


def test_tracer_result(net, x) -> None:
    model = NNsight(net)
    with model.trace(x) as tracer:
        result = tracer.result.save()
    assert torch.equal(result, net(x))


def test_stop_ends_the_forward_early(net, x, no_leftovers) -> None:
    model = NNsight(net)
    ran = []
    net.head.register_forward_hook(lambda *a: ran.append("head"))
    with model.trace(x) as tracer:
        early = model.layers[0].output.save()
        tracer.stop()
    net.head._forward_hooks.clear()
    assert ran == []
    assert torch.equal(early, net.layers[0](net.embed(x)))


def test_skip_a_module(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace(x):
        model.layers[1].skip(model.layers[1].input)
        out = model.output.save()
    expected = net.head(net.layers[2](net.layers[0](net.embed(x))))
    assert torch.allclose(out, expected)


def test_skip_in_one_of_several_invokes(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace() as tracer:
        with tracer.invoke(x[:1]):
            model.layers[1].skip(torch.zeros(1, 8))
            a = model.output.save()
        with tracer.invoke(x[1:]):
            b = model.output.save()
    assert torch.allclose(a, net.head(net.layers[2](torch.zeros(1, 8))))
    assert torch.allclose(b, net(x[1:]))


def test_skip_in_every_invoke(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace() as tracer:
        with tracer.invoke(x[:1]):
            model.layers[0].skip(torch.zeros(1, 8))
        with tracer.invoke(x[1:]):
            model.layers[0].skip(torch.ones(2, 8))
        with tracer.invoke():
            out = model.output.save()
    h = torch.cat([torch.zeros(1, 8), torch.ones(2, 8)])
    assert torch.allclose(out, net.head(net.layers[2](net.layers[1](h))))


def test_calling_an_envoy_in_a_trace_runs_it_ad_hoc(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace(x):
        hidden = model.layers[2].output
        logits = model.head(hidden * 0).save()
        out = model.output.save()
    assert torch.allclose(logits, net.head.bias.expand(3, 2))
    assert torch.equal(out, net(x))


def test_two_wrappers_over_one_module(net, x, no_leftovers) -> None:
    first, second = NNsight(net), NNsight(net)
    with first.trace(x):
        a = first.layers[0].output.save()
    with second.trace(x):
        second.layers[0].output[:] = 0
        b = second.output.save()
    with first.trace(x):
        c = first.output.save()
    assert torch.equal(a, net.layers[0](net.embed(x)))
    assert torch.allclose(b, plain(net, x, lambda i, h: h * 0 if i == 0 else h))
    assert torch.equal(c, net(x))


def test_forward_is_unchanged_after_tracing(net, x) -> None:
    before = net(x)
    forward = net.forward
    model = NNsight(net)
    with model.trace(x):
        model.layers[1].output[:] = 5
    assert net.forward == forward
    assert torch.equal(net(x), before)


def test_dataclass_and_dict_outputs(x) -> None:
    from dataclasses import dataclass

    @dataclass
    class Out:
        hidden: torch.Tensor
        extra: int

    class Producer(torch.nn.Module):
        def forward(self, v):
            return Out(v * 3, 7)

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Producer()

        def forward(self, v):
            return {"result": self.inner(v).hidden + 1}

    model = NNsight(Wrapper())
    with model.trace() as tracer:
        with tracer.invoke(x[:1]):
            model.inner.output.hidden[:] = 0
            a = model.output.save()
        with tracer.invoke(x[1:]):
            inner = save(model.inner.output)  # a dataclass: save(), not .save()
            b = model.output.save()
    assert torch.equal(a["result"], torch.ones(1, 4))
    assert torch.equal(inner.hidden, x[1:] * 3) and inner.extra == 7
    assert torch.equal(b["result"], x[1:] * 3 + 1)


def test_inputs_that_cannot_be_batched(net) -> None:
    from endoscope_envoy import BatchingError

    model = NNsight(net)
    with pytest.raises(BatchingError, match="override _batch_inputs"):
        with model.trace() as tracer:
            with tracer.invoke(torch.ones(1, 4)):
                pass
            with tracer.invoke(torch.ones(1, 5)):
                pass


def test_trace_without_input(net) -> None:
    model = NNsight(net)
    with pytest.raises(ValueError, match="no input"):
        with model.trace():
            pass


def test_save_methods_do_not_reach_every_class() -> None:
    # Libraries that validate class attributes (anyio's typed attribute sets) must
    # keep working after endoscope is imported.
    class Checked:
        def __init_subclass__(cls) -> None:
            public = [name for name in dir(cls) if not name.startswith("_")]
            assert public == [], public

    class Sub(Checked):
        pass

    assert not hasattr(object(), "save")
    assert hasattr(torch.ones(1), "save") and hasattr((), "save") and hasattr({}, "save")


def test_invokes_made_in_a_loop_keep_their_own_loop_variable(net, x) -> None:
    model = NNsight(net)
    with model.trace() as tracer:
        for row in range(3):
            with tracer.invoke(x[row : row + 1]):
                hidden = model.layers[0].output
                hidden[:] = hidden * (row + 1)
                out = model.output.save()
                if row == 0:
                    first = out
    expected = [
        net.head(net.layers[2](net.layers[1](net.layers[0](net.embed(x[r : r + 1])) * (r + 1))))
        for r in range(3)
    ]
    assert torch.allclose(first, expected[0])
    assert torch.allclose(out, expected[2])


def lm() -> None:
    """A module-level name that a test's local shadows (as pytest fixtures do)."""


def test_invoke_locals_shadowing_module_globals_stay_local(net, x) -> None:
    lm = NNsight(net)
    with lm.trace() as tracer:
        for row in (0, 1):
            with tracer.invoke(x[row : row + 1]):
                first = lm.layers[0].output.save()
                out = lm.output.save()
    assert torch.allclose(out, net(x[1:2]))
    assert torch.allclose(first, net.layers[0](net.embed(x[1:2])))


def test_same_named_variables_of_invokes_in_a_loop_stay_apart(net, x) -> None:
    model = NNsight(net)
    with model.trace() as tracer:
        lengths = [].save()
        for row in (0, 1):
            with tracer.invoke(x[row : row + 1]):
                mine = []
                for layer in model.layers:
                    mine.append(layer.output)
                lengths.append(len(mine))
    assert lengths == [3, 3]


def test_a_variable_of_the_enclosing_code_takes_an_earlier_invokes_value(net, x) -> None:
    model = NNsight(net)
    with model.trace() as tracer:
        source = None
        with tracer.invoke(x[:1]):
            source = model.layers[0].output
        with tracer.invoke(x[1:2]):
            target = model.layers[1].output
            target[:] = model.layers[1]._module(source)
            out = model.output.save()
    clean = net.layers[0](net.embed(x[:1]))
    assert torch.allclose(out, net.head(net.layers[2](net.layers[1](clean))))


def test_invokes_that_share_no_variable_switch_without_publishing(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace() as tracer:
        sharing = [].save()
        with tracer.invoke(x[:1]):
            mediator = tracer.interleaver.current
            sharing.append((mediator.push is not None, mediator.pull is not None))
            first = model.layers[1].output.save()
        with tracer.invoke(x[1:2]):
            mediator = tracer.interleaver.current
            sharing.append((mediator.push is not None, mediator.pull is not None))
            second = model.layers[1].output.save()
    # `mediator` is assigned by both and read by both: shared both ways; only
    # the second can pull (from the first).
    assert sharing == [(True, False), (True, True)]
    with model.trace() as tracer:
        flags = [].save()
        with tracer.invoke(x[:1]):
            flags.append(tracer.interleaver.current.push)
            first = model.layers[1].output.save()
        with tracer.invoke(x[1:2]):
            flags.append(tracer.interleaver.current.pull)
            second = model.layers[1].output.save()
    assert flags == [None, None]  # `first` and `second` are each one invoke's
    h = net.layers[1](net.layers[0](net.embed(x[:2])))
    assert torch.allclose(first, h[:1]) and torch.allclose(second, h[1:2])


@pytest.mark.parametrize(
    "bind",
    [
        "source = model.layers[1].output",
        "for source in [model.layers[1].output]:\n    pass",
        "[(source := model.layers[1].output) for _ in range(1)]",
        "source, _ = model.layers[1].output, None",
        "def source_of():\n    return hidden\nhidden = model.layers[1].output\n"
        "source = source_of()",
    ],
)
def test_every_way_of_binding_a_variable_is_shared_with_later_invokes(
    net, x, bind: str, no_leftovers
) -> None:
    namespace = {"NNsight": NNsight, "net": net, "x": x}
    source = (
        "model = NNsight(net)\n"
        "with model.trace() as tracer:\n"
        "    with tracer.invoke(x[:1]):\n" + textwrap.indent(bind, " " * 8) + "\n"
        # Still running when the next invoke reads `source`: what it bound must
        # be published when it switched to the model, not only at its end.
        "        model.layers[2].output\n"
        "    with tracer.invoke(x[1:2]):\n"
        "        target = model.layers[1].output\n"
        "        target[:] = source\n"
        "        patched = model.output.save()\n"
    )
    filename = f"<invoke sharing {abs(hash(bind))}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)
    clean = net.layers[1](net.layers[0](net.embed(x[:1])))
    assert torch.allclose(namespace["patched"], net.head(net.layers[2](clean)))


def test_trace_false_runs_the_model_at_once_with_its_edits(net, x, no_leftovers) -> None:
    model = NNsight(net)
    out = model.trace(x, trace=False)
    assert torch.equal(out, net(x))
    with model.edit(inplace=True):
        model.layers[0].output[:] = 0
    edited = model.trace(x, trace=False, remote=False, blocking=True)
    model.clear_edits()
    zeroed = net.head(net.layers[2](net.layers[1](torch.zeros(3, 8))))
    assert torch.equal(edited, zeroed)
    with pytest.raises(NotImplementedError, match=r"trace\(remote=True\).*remote=.local."):
        model.trace(x, remote=True)
    with pytest.raises(ValueError, match="no input"):
        model.trace(trace=False)


# ------------------------------------------------------- values used without .save()

HERE = Path(__file__).read_text(encoding="utf-8").splitlines()


def line_of(marker: str) -> int:
    """The line of this file that ends with the comment ``# <marker>``."""
    (line,) = [n for n, text in enumerate(HERE, 1) if text.endswith(f"# {marker}")]
    return line


def unsaved_hint(name: str, line: int) -> str:
    return (
        f"name {name!r} was assigned inside the traced block ({__file__}:{line}) but not "
        "saved, so it does not exist after the block: call .save() on it inside the block"
    )


def test_an_unsaved_tensor_used_after_the_trace_names_its_line(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace(x):
        hidden = model.layers[0].output  # hidden, not saved
    uses = {
        "print": lambda: print(hidden),
        "attribute": lambda: hidden.shape,
        "arithmetic": lambda: hidden + 1,
        "tensor arithmetic": lambda: torch.ones(8) * hidden,
        "torch function": lambda: torch.cat([hidden]),
        "module": lambda: net.head(hidden),
        "indexing": lambda: hidden[0],
    }
    for use, run in uses.items():
        with pytest.raises(NameError) as caught:
            run()
        assert str(caught.value).startswith(unsaved_hint("hidden", line_of("hidden, not saved")))
        assert caught.value.name == "hidden", use


def test_invokes_leave_placeholders_and_warn_at_their_lines(net, x, no_leftovers) -> None:
    model = NNsight(net)
    out = None
    with pytest.warns(UnsavedValueWarning) as caught:
        with model.trace() as tracer:
            with tracer.invoke(x[:1]):
                source = model.layers[1].output  # invoke 0 assigns source
            with tracer.invoke(x[1:2]):
                target = model.layers[1].output
                target[:] = source  # the next invoke still uses it
                out = model.output  # reassigned, not saved
            with tracer.invoke(x[2:]):
                rest = model.output.save()
    assert out is None
    assert [(w.filename, w.lineno) for w in caught] == [
        (__file__, line_of("reassigned, not saved"))
    ]
    assert "'out' was reassigned" in str(caught[0].message)
    assert torch.allclose(rest, net(x[2:]))
    with pytest.raises(NameError) as error:
        source.sum()
    assert str(error.value).startswith(unsaved_hint("source", line_of("invoke 0 assigns source")))


def test_no_warning_in_the_normal_cases(net, x, no_leftovers) -> None:
    model = NNsight(net)
    tracer = None
    patched = None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):  # the second round finds the first round's placeholders
            with model.trace() as tracer:
                with tracer.invoke(x[:1]):
                    for layer in range(2):  # a loop variable of the block
                        source = model.layers[layer].output
                with tracer.invoke(x[1:2]):
                    target = model.layers[1].output
                    target[:] = source
                    patched = model.output.save()  # reassigned and saved
    clean = net.layers[1](net.layers[0](net.embed(x[:1])))
    assert torch.allclose(patched, net.head(net.layers[2](clean)))
    assert isinstance(source, UnsavedName) and isinstance(layer, UnsavedName)


def _patched_row(net, x):
    """Row 1 of x[:2] with layer 1's output replaced by row 0's, by plain hooks."""
    return hooked_forward(net, x[:2], {net.layers[1]: copy_row(0, 1)})[1:2]


def test_an_earlier_unsaved_traces_placeholder_is_not_read_by_a_waiting_invoke(net, x) -> None:
    # The first trace leaves an UnsavedName placeholder for `source`; the later
    # invoke of the second trace waits for the earlier invoke's new value instead.
    model = NNsight(net)
    with model.trace(x):
        source = model.layers[1].output  # leaves a placeholder for `source`
    with model.trace() as tracer:
        with tracer.invoke(x[:1]):
            source = model.layers[1].output
        with tracer.invoke(x[1:2]):
            model.layers[1].output[:] = source  # waits for the first invoke's source
            patched = model.output.save()
    assert torch.allclose(patched, _patched_row(net, x))


def test_at_module_level_invokes_do_not_read_an_earlier_traces_placeholder(net, x) -> None:
    source = textwrap.dedent(
        """
        with model.trace(x):
            source = model.layers[1].output  # leaves a placeholder in the globals
        with model.trace() as tracer:
            with tracer.invoke(x[:1]):
                source = model.layers[1].output
            with tracer.invoke(x[1:2]):
                model.layers[1].output[:] = source  # waits for the first invoke's source
                patched = model.output.save()
        """
    )
    name = "<unsaved module level>"
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    namespace = {"model": NNsight(net), "x": x}
    exec(compile(source, name, "exec"), namespace)
    assert torch.allclose(namespace["patched"], _patched_row(net, x))


class _Probe(torch.nn.Module):
    """Records what an exception raised and caught inside its forward is chained to."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 3)
        self.contexts: list[BaseException | None] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            raise KeyError("caught inside the forward")
        except KeyError as error:
            self.contexts.append(error.__context__)
        return self.fc(x)


def test_the_model_runs_with_no_exception_being_handled(no_leftovers) -> None:
    # The model runs from the trace's __exit__, inside the with statement's handler
    # of the body-skipping exception: exceptions raised in the forward (transformers
    # raises dozens, caught at once) must not be chained to it and built eagerly.
    probe = _Probe()
    x = torch.randn(2, 3)
    model = NNsight(probe)
    with model.trace(x):
        out = save(model.fc.output)
    assert probe.contexts == [None]
    assert torch.equal(out, probe.fc(x))
    assert sys.exc_info() == (None, None, None)


def _sharing_pairwise(blocks):
    """The definition _sharing computes, pair by pair (quadratic in the invokes)."""
    shares = []
    for index, block in enumerate(blocks):
        if block is None:
            shares.append((True, True))
            continue
        push = any(
            other is None or block.may_share_with(other)
            for position, other in enumerate(blocks)
            if position != index
        )
        pull = any(earlier is None or earlier.may_share_with(block) for earlier in blocks[:index])
        shares.append((push, pull))
    return shares


def test_invoke_sharing_is_judged_per_distinct_block_as_pair_by_pair() -> None:
    # Invokes from one call site share their block: _sharing judges distinct
    # blocks (linear in the invokes) and must agree with the pairwise definition.
    import random
    from types import SimpleNamespace

    from endoscope_envoy._tracer import _sharing

    class Block:
        def __init__(self, name: str, relation: dict) -> None:
            self.name, self.relation = name, relation

        def may_share_with(self, reader: Block) -> bool:
            return self.relation[self.name, reader.name]

    rng = random.Random(0)
    names = "abc"
    for _ in range(300):
        relation = {(w, r): rng.random() < 0.25 for w in names for r in names}
        kinds = [Block(name, relation) for name in names]
        blocks = [
            None if rng.random() < 0.05 else rng.choice(kinds) for _ in range(rng.randint(2, 9))
        ]
        invokers = [
            SimpleNamespace(info=None if b is None else SimpleNamespace(block=b)) for b in blocks
        ]
        assert _sharing(invokers) == _sharing_pairwise(blocks), (blocks, relation)
