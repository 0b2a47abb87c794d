"""Mistakes fail at the user's line with the right type; nothing is left behind."""

from __future__ import annotations

import gc
import traceback
import weakref

import pytest
import torch

from endoscope_envoy import MissedProviderError, NNsight, OutOfOrderError


def user_frames(error: BaseException) -> list[traceback.FrameSummary]:
    return [f for f in traceback.extract_tb(error.__traceback__) if f.filename == __file__]


def test_out_of_order_read(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with model.trace(x):  # the first trace learns the module order
        model.output.save()
    with pytest.raises(OutOfOrderError) as caught:
        with model.trace(x):
            late = model.layers[2].output.save()
            early = model.layers[0].output.save()  # noqa: F841
    error = caught.value
    assert "model.layers.0.output.i0" in str(error)
    assert "model.layers.2.output" in str(error)  # where the model was
    assert user_frames(error)[-1].line == "early = model.layers[0].output.save()  # noqa: F841"
    assert torch.equal(late, net.layers[2](net.layers[1](net.layers[0](net.embed(x)))))


def test_out_of_order_in_the_very_first_trace(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with pytest.raises(OutOfOrderError):
        with model.trace(x):
            model.head.output.save()
            model.embed.output.save()


def test_missing_provider(net, x, no_leftovers) -> None:
    class Unused(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.spare = torch.nn.Linear(2, 2)
            self.used = torch.nn.Linear(4, 2)

        def forward(self, v):
            return self.used(v)

    model = NNsight(Unused())
    with pytest.raises(MissedProviderError) as caught:
        with model.trace(x):
            model.spare.output.save()
    assert not isinstance(caught.value, OutOfOrderError)
    assert "model.spare.output.i0" in str(caught.value)
    assert user_frames(caught.value)[-1].line == "model.spare.output.save()"


def test_exception_in_the_block_keeps_its_type_and_line(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with pytest.raises(IndexError) as caught:
        with model.trace(x):
            hidden = model.layers[0].output
            hidden[10]
    assert type(caught.value) is IndexError
    frames = traceback.extract_tb(caught.value.__traceback__)
    assert frames[-1].filename == __file__
    assert frames[-1].line == "hidden[10]"
    assert not [f for f in frames if "endoscope_" in f.filename]


def test_exception_in_the_block_shows_only_the_users_frames(net, x, no_leftovers) -> None:
    """Raised while the model is paused deep inside its forward (in layers[1].fc),
    the error passes back out through every module call on the way; those frames
    are not the user's and are left out."""
    model = NNsight(net)
    with pytest.raises(KeyError) as caught:
        with model.trace(x):
            model.layers[1].fc.output.save()
            raise KeyError("mine")
    frames = traceback.extract_tb(caught.value.__traceback__)
    assert [f.line for f in frames] == ["with model.trace(x):", 'raise KeyError("mine")']
    assert {f.filename for f in frames} == {__file__}


def test_an_error_of_the_model_keeps_the_models_frames(x, no_leftovers) -> None:
    class Broken(torch.nn.Module):
        def forward(self, v):
            raise RuntimeError("model failed")

    model = NNsight(torch.nn.Sequential(torch.nn.Identity(), Broken()))
    with pytest.raises(RuntimeError) as caught:
        with model.trace(x):
            model[0].output.save()
    assert traceback.extract_tb(caught.value.__traceback__)[-1].name == "forward"


def test_exception_in_an_invoke(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with pytest.raises(ZeroDivisionError) as caught:
        with model.trace() as tracer:
            with tracer.invoke(x[:1]):
                model.layers[0].output.save()
            with tracer.invoke(x[1:]):
                1 / 0
    assert user_frames(caught.value)[-1].line == "1 / 0"


def test_exception_in_the_model_surfaces_unchanged(x, no_leftovers) -> None:
    class Broken(torch.nn.Module):
        def forward(self, v):
            raise RuntimeError("model failed")

    model = NNsight(torch.nn.Sequential(Broken()))
    with pytest.raises(RuntimeError, match="model failed"):
        with model.trace(x):
            model[0].output.save()


def test_wrong_shape_replacement_fails_at_the_user_line(net, x, no_leftovers) -> None:
    model = NNsight(net)
    with pytest.raises(RuntimeError) as caught:
        with model.trace(x):
            model.layers[0].output = torch.zeros(5, 5)
    assert isinstance(caught.value, RuntimeError)


def test_no_references_to_the_model_survive(x) -> None:
    def run() -> tuple[weakref.ref, weakref.ref, torch.Tensor]:
        torch.manual_seed(0)
        module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
        model = NNsight(module)
        with model.trace(x) as tracer:
            out = model[0].output.save()
        return weakref.ref(module), weakref.ref(tracer), out

    module_ref, tracer_ref, out = run()
    gc.collect()
    assert module_ref() is None
    assert tracer_ref() is None
    assert out.shape == (3, 4)


def test_no_hooks_after_failures(net, x, no_leftovers) -> None:
    model = NNsight(net)
    for _ in range(3):
        with pytest.raises(ValueError):
            with model.trace(x):
                model.layers[1].output.save()
                raise ValueError("user error")
