"""The public API: everything a nnsight user imports, re-exported from endoscope_envoy."""

from __future__ import annotations

import torch

import endoscope
import endoscope_envoy


def test_all_is_sorted_and_importable():
    names = endoscope.__all__
    # isort style: constants, then classes, then everything else.
    assert names == sorted(
        names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n)
    )
    for name in names:
        assert getattr(endoscope, name) is not None


def test_nnsight_names_are_there():
    from endoscope import (  # noqa: F401
        CONFIG,
        Envoy,
        LanguageModel,
        NNsight,
        TransformersModel,
        WrapperModule,
        eproperty,
        requires_input,
        requires_output,
        save,
    )


def test_envoy_objects_are_re_exported_as_they_are():
    for name in (
        "BackwardTracer",
        "BatchingError",
        "EarlyStopException",
        "EditTracer",
        "Envoy",
        "InterleavingTracer",
        "Invoker",
        "MissedProviderError",
        "NNsight",
        "NotInTraceError",
        "OutOfOrderError",
        "RemoteSerializationError",
        "ScanTracer",
        "Session",
        "TensorSpec",
        "TraceDeadlockError",
        "WithBlockNotFoundError",
        "eproperty",
        "requires_inputs",
        "requires_output",
        "save",
    ):
        assert getattr(endoscope, name) is getattr(endoscope_envoy, name), name


def test_requires_input_is_nnsights_name_for_requires_inputs():
    assert endoscope.requires_input is endoscope_envoy.requires_inputs


def test_language_model_is_an_nnsight():
    assert issubclass(endoscope.LanguageModel, endoscope.NNsight)


def test_errors_are_exceptions():
    for name in (
        "BatchingError",
        "MissedProviderError",
        "NotInTraceError",
        "OutOfOrderError",
        "WithBlockNotFoundError",
    ):
        assert issubclass(getattr(endoscope, name), Exception), name
    assert issubclass(endoscope.OutOfOrderError, endoscope.MissedProviderError)


def test_demo_helpers_are_exported():
    from endoscope._demo import demo_facts, demo_model, demo_model_path

    assert endoscope.demo_model is demo_model
    assert endoscope.demo_facts is demo_facts
    assert endoscope.demo_model_path is demo_model_path
    assert (endoscope.demo_model_path() / "config.json").is_file()


def test_version():
    assert endoscope.__version__ == "0.1.0"


def test_save_function_keeps_a_value():
    model = endoscope.NNsight(torch.nn.Linear(2, 2))
    with model.trace(torch.ones(1, 2)):
        out = endoscope.save(model.output)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2)


def test_a_custom_eproperty_with_requires_output():
    class Doubled(endoscope.Envoy):
        @endoscope.eproperty(key="output")
        @endoscope.requires_output
        def doubled(self):
            """The module's output, doubled."""

        @doubled.preprocess
        def doubled(self, value):
            return value * 2

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    model = endoscope.NNsight(net, envoys={torch.nn.Linear: Doubled})
    x = torch.ones(1, 2)
    with model.trace(x):
        got = model[0].doubled.save()
    assert torch.equal(got, net(x) * 2)


def test_a_custom_eproperty_with_requires_input():
    class FirstArg(endoscope.Envoy):
        @endoscope.eproperty(key="input")
        @endoscope.requires_input
        def first(self):
            """The module's first positional argument."""

        @first.preprocess
        def first(self, value):
            args, _ = value
            return args[0]

    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    model = endoscope.NNsight(net, envoys={torch.nn.Linear: FirstArg})
    x = torch.ones(1, 2)
    with model.trace(x):
        got = model[0].first.save()
    assert torch.equal(got, x)
