"""Modules called several times: tracer.iter, tracer.all, tracer.next, Envoy.next."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import torch

from endoscope_envoy import MissedProviderError, NNsight, OutOfOrderError


class Recurrent(torch.nn.Module):
    """One cell applied ``steps`` times, then a readout: a module called in a loop."""

    def __init__(self, width: int = 6, steps: int = 4) -> None:
        super().__init__()
        self.cell = torch.nn.Linear(width, width)
        self.readout = torch.nn.Linear(width, 2)
        self.steps = steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for _ in range(self.steps):
            h = torch.tanh(self.cell(h))
        return self.readout(h)


@pytest.fixture
def rnn() -> Recurrent:
    torch.manual_seed(0)
    return Recurrent().eval()


@pytest.fixture
def h0() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 6)


def cell_outputs(rnn: Recurrent, x: torch.Tensor, edit=None) -> tuple[list, torch.Tensor]:
    """The cell's output per call and the model output, with plain torch hooks."""
    seen: list[torch.Tensor] = []

    def hook(module, args, output):
        if edit is not None:
            output = edit(len(seen), output)
        seen.append(output)
        return output

    handle = rnn.cell.register_forward_hook(hook)
    try:
        out = rnn(x)
    finally:
        handle.remove()
    return seen, out


def test_iter_slice_reads_the_chosen_calls(rnn, h0) -> None:
    model = NNsight(rnn)
    with model.trace(h0) as tracer:
        got = []
        for step in tracer.iter[1:3]:
            got.append((step, model.cell.output))
        got = got.save()
    expected, _ = cell_outputs(rnn, h0)
    assert [step for step, _ in got] == [1, 2]
    assert all(torch.equal(value, expected[step]) for step, value in got)


def test_iter_single_step(rnn, h0) -> None:
    model = NNsight(rnn)
    with model.trace(h0) as tracer:
        only = []
        for _ in tracer.iter[2]:
            only.append(model.cell.output)
        only = only.save()
    expected, _ = cell_outputs(rnn, h0)
    assert len(only) == 1 and torch.equal(only[0], expected[2])


def test_iter_list_in_order(rnn, h0) -> None:
    model = NNsight(rnn)
    with model.trace(h0) as tracer:
        picked = []
        for _ in tracer.iter[[0, 3]]:
            picked.append(model.cell.output)
        picked = picked.save()
    expected, _ = cell_outputs(rnn, h0)
    assert torch.equal(picked[0], expected[0]) and torch.equal(picked[1], expected[3])


def test_unbounded_loop_ends_and_code_after_it_runs(rnn, h0) -> None:
    model = NNsight(rnn)
    with model.trace(h0) as tracer:
        states = []
        for _ in tracer.iter[:]:
            states.append(model.cell.output)
        states = states.save()
        after = torch.tensor(len(states)).save()
        result = tracer.result.save()  # the loop ends in time for the result
    expected, out = cell_outputs(rnn, h0)
    assert torch.equal(result, out)
    assert int(after) == rnn.steps
    assert all(torch.equal(a, b) for a, b in zip(states, expected, strict=True))


def test_all_is_every_step_and_later_reads_are_answered(rnn, h0) -> None:
    model = NNsight(rnn)
    with model.trace(h0) as tracer:
        states = []
        for _ in tracer.all():
            states.append(model.cell.output.sum(dim=-1))
        states = torch.stack(states).save()
    expected, _ = cell_outputs(rnn, h0)
    assert torch.equal(states, torch.stack([e.sum(dim=-1) for e in expected]))


def test_unbounded_loop_over_a_module_that_is_never_called_is_an_error(rnn, h0) -> None:
    rnn.steps = 0
    model = NNsight(rnn)
    with pytest.raises(MissedProviderError) as info:
        with model.trace(h0) as tracer:
            for _ in tracer.all():
                model.cell.output.save()
    assert "model.cell.output.i0" in str(info.value)


def test_write_on_one_step(rnn, h0) -> None:
    model = NNsight(rnn)
    with model.trace(h0) as tracer:
        for _ in tracer.iter[2]:
            model.cell.output = model.cell.output * 0.5
        out = model.output.save()
    _, expected = cell_outputs(rnn, h0, edit=lambda i, v: v * 0.5 if i == 2 else v)
    assert torch.equal(out, expected)


def test_in_place_edit_on_every_step(rnn, h0) -> None:
    # An unbounded loop ends with the computation, so the model's output is read
    # in a second invoke (one without input sees the whole batch).
    model = NNsight(rnn)
    with model.trace() as tracer:
        with tracer.invoke(h0):
            for _ in tracer.all():
                model.cell.output[:, 0] = 0
        with tracer.invoke():
            out = model.output.save()

    def zero(i, v):
        v = v.clone()
        v[:, 0] = 0
        return v

    _, expected = cell_outputs(rnn, h0, edit=zero)
    assert torch.equal(out, expected)


def test_tracer_next_moves_every_read(rnn, h0) -> None:
    model = NNsight(rnn)
    with model.trace(h0) as tracer:
        first = model.cell.output.save()
        tracer.next()
        second = model.cell.output.save()
        tracer.next(2)
        fourth = model.cell.output.save()
    expected, _ = cell_outputs(rnn, h0)
    assert torch.equal(first, expected[0])
    assert torch.equal(second, expected[1])
    assert torch.equal(fourth, expected[3])


def test_envoy_next_moves_one_module(rnn, h0) -> None:
    model = NNsight(rnn)
    with model.trace(h0):
        first = model.cell.output.save()
        second = model.cell.next().output.save()
        last_input = model.cell.next(2).input.save()
        out = model.readout.output.save()
    expected, logits = cell_outputs(rnn, h0)
    assert torch.equal(first, expected[0])
    assert torch.equal(second, expected[1])
    assert torch.equal(last_input, torch.tanh(expected[2]))
    assert torch.equal(out, logits)


def test_envoy_next_inside_tracer_iteration_is_refused(rnn, h0) -> None:
    model = NNsight(rnn)
    with pytest.raises(RuntimeError, match="would be ignored"):
        with model.trace(h0) as tracer:
            for _ in tracer.iter[0:2]:
                model.cell.next()


def test_missing_step_is_an_error_at_the_users_line(rnn, h0) -> None:
    model = NNsight(rnn)
    with pytest.raises(MissedProviderError) as info:
        with model.trace(h0) as tracer:
            for _ in tracer.iter[3:6]:
                model.cell.output.save()
    message = str(info.value)
    assert "model.cell.output.i4" in message
    assert "ran 4 times" in message
    assert info.value.location is not None
    assert info.value.location[0] == __file__


def test_step_that_reads_nothing_in_an_unbounded_loop_is_an_error(rnn, h0) -> None:
    model = NNsight(rnn)
    with pytest.raises(RuntimeError, match="read or wrote no module value"):
        with model.trace(h0) as tracer:
            for step in tracer.all():
                if step == 0:
                    model.cell.output.save()


def test_error_inside_a_loop_body_keeps_its_type_and_line(rnn, h0) -> None:
    model = NNsight(rnn)
    with pytest.raises(ZeroDivisionError) as info:
        with model.trace(h0) as tracer:
            for _ in tracer.all():
                model.cell.output.save()
                1 / 0
    lines = [entry.lineno + 1 for entry in info.traceback if str(entry.path) == __file__]
    source = Path(__file__).read_text().splitlines()
    assert any(source[line - 1].strip().startswith("1 / 0") for line in lines)


def test_negative_steps_are_refused(rnn, h0) -> None:
    model = NNsight(rnn)
    with pytest.raises(ValueError, match="negative"):
        with model.trace(h0) as tracer:
            for _ in tracer.iter[-2:]:
                model.cell.output.save()


def test_reading_a_passed_call_is_out_of_order(rnn, h0) -> None:
    model = NNsight(rnn)
    with pytest.raises(OutOfOrderError):
        with model.trace(h0) as tracer:
            model.readout.output.save()
            for _ in tracer.iter[1]:
                model.cell.output.save()


class Generator(NNsight):
    """Runs the model three times, feeding each output back: like generation."""

    def _steps(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            x = self._module(x)
        return x

    def generate(self, x: torch.Tensor):
        tracer = self.trace(x)
        tracer.run_method = "_steps"
        return tracer


class Square(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(4, 4)
        self.second = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.second(self.first(x)))


def per_call(module: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor) -> list:
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, a, o: seen.append(o))
    try:
        for _ in range(3):
            x = model(x)
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("trace_number", [0, 1])
def test_late_hook_numbers_calls_across_forwards(trace_number) -> None:
    # `first` gets its hook only after its call of step 0 went by: its calls must
    # still be numbered from the run's start (on the learning trace and after).
    torch.manual_seed(0)
    net = Square().eval()
    x = torch.randn(2, 4)
    model = Generator(net)
    for _ in range(trace_number):
        with model.generate(x):
            model.second.output.save()
    with model.generate(x) as tracer:
        second_0 = model.second.output.save()
        firsts = []
        for _ in tracer.iter[1:3]:
            firsts.append(model.first.output)
        firsts = firsts.save()
    expected_first = per_call(net.first, net, x)
    expected_second = per_call(net.second, net, x)
    assert torch.equal(second_0, expected_second[0])
    assert torch.equal(firsts[0], expected_first[1])
    assert torch.equal(firsts[1], expected_first[2])


def test_read_after_an_unbounded_loop_says_the_computation_ended(rnn, h0) -> None:
    model = NNsight(rnn)
    with pytest.raises(MissedProviderError, match="ran until the computation ended"):
        with model.trace(h0) as tracer:
            for _ in tracer.all():
                model.cell.output.save()
            model.output.save()


def test_reading_a_module_before_an_unbounded_loop(rnn, h0) -> None:
    model = NNsight(rnn)
    with model.trace(h0) as tracer:
        first = model.cell.output.save()
        states = []
        for _ in tracer.all():
            states.append(model.cell.output)
        states = states.save()
    expected, _ = cell_outputs(rnn, h0)
    assert torch.equal(first, expected[0])
    assert all(torch.equal(a, b) for a, b in zip(states, expected, strict=True))


def test_the_deprecated_model_iter_and_all_are_the_tracers(rnn, h0) -> None:
    model = NNsight(rnn)
    expected, _ = cell_outputs(rnn, h0)
    with pytest.warns(DeprecationWarning, match="use tracer.iter"):
        with model.trace(h0):
            chosen = []
            for step in model.iter[1:3]:
                chosen.append((step, model.cell.output))
            chosen = chosen.save()
    assert [step for step, _ in chosen] == [1, 2]
    assert all(torch.equal(value, expected[step]) for step, value in chosen)
    with pytest.warns(DeprecationWarning, match=r"use tracer.all\(\)"):
        with model.trace(h0):
            states = []
            for _ in model.cell.all():
                states.append(model.cell.output)
            states = states.save()
            after = torch.tensor(len(states)).save()
    assert int(after) == rnn.steps
    assert all(torch.equal(a, b) for a, b in zip(states, expected, strict=True))
    with pytest.raises(RuntimeError, match=r"model.cell.all\(\) can only be used inside"):
        with pytest.warns(DeprecationWarning):
            model.cell.all()


def test_what_ran_after_an_ended_loop_is_out_of_reach_and_says_why(rnn, h0) -> None:
    model = NNsight(rnn)
    with pytest.raises(MissedProviderError, match=r"readout.output(.|\n)*\(tracer.result can\)"):
        with model.trace(h0) as tracer:
            for _ in tracer.all():
                model.cell.output.save()
            model.readout.output.save()


def test_the_deprecated_block_form_runs_the_block_once_per_step(rnn, h0) -> None:
    model = NNsight(rnn)
    expected, out = cell_outputs(rnn, h0)
    with pytest.warns(DeprecationWarning, match=r"`with tracer.all\(\):` is deprecated") as seen:
        with model.trace(h0) as tracer:
            states = [].save()
            with tracer.all():  # the line the warning names
                states.append(model.cell.output)
            result = tracer.result.save()
    assert seen[0].filename == __file__
    assert (
        "# the line the warning names"
        in Path(__file__).read_text().splitlines()[seen[0].lineno - 1]
    )
    assert len(states) == rnn.steps
    assert all(torch.equal(a, b) for a, b in zip(states, expected, strict=True))
    assert torch.equal(result, out)
    # A bounded block; the block's own variables carry from step to step.
    with pytest.warns(DeprecationWarning, match=r"tracer.iter\[1:3\]"):
        with model.trace(h0) as tracer:
            steps = 0
            with tracer.iter[1:3]:
                steps += 1
                last = model.cell.output
            steps = torch.tensor(steps).save()
            last = last.save()
    assert int(steps) == 2 and torch.equal(last, expected[2])


def test_loops_leave_no_cycle(rnn, h0) -> None:
    model = NNsight(rnn)
    loops = []
    gc.collect()
    gc.disable()
    try:
        with pytest.warns(DeprecationWarning):
            with model.trace(h0) as tracer:
                loop = tracer.iter[0:2]
                loops.append(weakref.ref(loop))
                with loop:
                    model.cell.output.save()
                del loop
        with model.trace(h0) as tracer:
            loop = tracer.iter[0:2]
            loops.append(weakref.ref(loop))
            for _ in loop:
                model.cell.output.save()
            del loop
        del tracer
        assert [ref() for ref in loops] == [None, None]
    finally:
        gc.enable()
