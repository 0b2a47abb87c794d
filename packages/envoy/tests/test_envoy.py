"""The Envoy tree: navigation, printing, lookup, renaming, custom Envoy types."""

from __future__ import annotations

import subprocess
import sys
import traceback

import pytest
import torch

from endoscope_envoy import Envoy, NNsight, NotInTraceError


def test_tree_mirrors_modules(net) -> None:
    model = NNsight(net)
    assert model._module is net
    assert model.path == "model"
    assert model.layers[1].fc._module is net.layers[1].fc
    assert model.layers[1].fc.path == "model.layers.1.fc"
    assert [e.path for e in model.layers] == [f"model.layers.{i}" for i in range(3)]
    assert len(model.layers) == 3
    assert [e._module for e in model.layers[0:2]] == [net.layers[0], net.layers[1]]
    assert model.layers[-1]._module is net.layers[2]


def test_module_attributes_pass_through(net) -> None:
    model = NNsight(net)
    assert model.head.weight is net.head.weight
    assert model.head.out_features == 2


def test_print_shows_the_module_tree(net) -> None:
    assert str(NNsight(net)) == str(net)


def test_modules_and_named_modules(net) -> None:
    model = NNsight(net)
    assert [path for path, _ in model.named_modules()] == [
        "model" if not name else f"model.{name}" for name, _ in net.named_modules()
    ]
    assert [e._module for e in model.modules()] == list(net.modules())
    only_linear = model.modules(lambda e: isinstance(e._module, torch.nn.Linear))
    assert all(isinstance(e._module, torch.nn.Linear) for e in only_linear)


def test_get_by_path(net) -> None:
    model = NNsight(net)
    assert model.get("layers.0.fc") is model.layers[0].fc
    assert model.get("model.layers.0.fc") is model.layers[0].fc
    assert model["layers.2"] is model.layers[2]
    assert model.layers.get("1.act") is model.layers[1].act


def test_typo_lists_nearest_names(net) -> None:
    model = NNsight(net)
    with pytest.raises(AttributeError, match=r"'layer'.*Did you mean 'layers'"):
        model.layer
    with pytest.raises(AttributeError, match="Its child modules are: fc, act"):
        model.get("layers.0.nope")


def test_a_typo_is_suggested_once_by_any_printer(net) -> None:
    model = NNsight(net)
    with pytest.raises(AttributeError) as caught:
        model.layer
    error = caught.value
    assert error.name == "layer"
    # Python's printers (3.12+, and 3.11's uncaught-error printer) add their own
    # "Did you mean" from dir(error.obj): nothing to offer, so none is added.
    assert dir(error.obj) == []
    printed = "".join(traceback.format_exception_only(type(error), error))
    assert printed.count("Did you mean") == 1
    # Uncaught, as a user sees it: `modulez` is close to the Envoy method
    # `modules`, which Python's printer would suggest a second time.
    script = (
        "import torch\n"
        "from endoscope_envoy import NNsight\n"
        "NNsight(torch.nn.Sequential(torch.nn.Linear(1, 1))).modulez\n"
    )
    printed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    ).stderr
    assert "has no module or attribute 'modulez'. Did you mean 'modules'" in printed
    assert printed.count("Did you mean") == 1, printed
    with pytest.raises(AttributeError) as caught:
        model.source.nope
    assert dir(caught.value.obj) == []


def test_index_out_of_range(net) -> None:
    with pytest.raises(IndexError, match="3 child modules; index 7"):
        NNsight(net).layers[7]


def test_to_and_device(net) -> None:
    model = NNsight(net)
    assert model.to(torch.float64) is model
    assert net.head.weight.dtype == torch.float64
    assert model.device == torch.device("cpu")
    assert NNsight(torch.nn.ReLU()).device == torch.device("cpu")


def test_cpu_devices_parent_and_root(net) -> None:
    model = NNsight(net)
    assert model.layers[0].cpu() is model.layers[0]
    assert model.devices == {torch.device("cpu")}
    assert NNsight(torch.nn.ReLU()).devices == set()
    if torch.cuda.is_available():  # pragma: no cover - no GPU on the test machines
        assert model.cuda() is model and model.devices == {torch.device("cuda", 0)}
    fc = model.layers[1].fc
    assert fc.parent is model.layers[1] and fc.parent.parent is model.layers
    assert model.parent is None
    assert fc.root is model and model.root is model


def test_rename_component_path_and_list(net) -> None:
    model = NNsight(net, rename={"fc": "dense", "layers.1": ["middle", "center"]})
    assert model.layers[0].dense is model.layers[0].fc
    assert model.middle is model.layers[1]
    assert model.center is model.layers[1]
    assert model.get("middle.dense") is model.layers[1].fc
    assert "also reachable as middle, center" in repr(model)


def test_rename_works_in_a_trace(net, x) -> None:
    model = NNsight(net, rename={"layers.1": "middle"})
    with model.trace(x):
        out = model.middle.output.save()
    assert torch.equal(out, net.layers[1](net.layers[0](net.embed(x))))


class LinearEnvoy(Envoy):
    @property
    def width(self) -> int:
        return self._module.out_features


def test_envoys_mapping_and_class_attribute(net) -> None:
    model = NNsight(net, envoys={torch.nn.Linear: LinearEnvoy})
    assert isinstance(model.head, LinearEnvoy)
    assert model.head.width == 2
    assert not isinstance(model.layers, LinearEnvoy)

    class MyNNsight(NNsight):
        envoys = {torch.nn.ReLU: LinearEnvoy}

    assert isinstance(MyNNsight(net).layers[0].act, LinearEnvoy)


class Clashing(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.output = torch.nn.Linear(2, 2)
        self.input = torch.nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.input(x))


def test_children_named_like_envoy_attributes_stay_reachable() -> None:
    torch.manual_seed(0)
    module = Clashing()
    model = NNsight(module)
    assert model.output_._module is module.output
    assert model.get("input")._module is module.input
    x = torch.randn(1, 2)
    with model.trace(x):
        inner = model.output_.output.save()
        whole = model.output.save()
    assert torch.equal(inner, module.output(x))
    assert torch.equal(whole, inner)


def test_values_outside_a_trace_explain_themselves(net) -> None:
    model = NNsight(net)
    with pytest.raises(NotInTraceError, match="inside `with model.trace"):
        model.layers[0].output


def test_only_modules_can_be_wrapped() -> None:
    with pytest.raises(TypeError, match="torch.nn.Module"):
        NNsight(lambda x: x)  # type: ignore[arg-type]


def test_get_with_a_child_named_like_the_root() -> None:
    class Outer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = torch.nn.Sequential(torch.nn.Linear(2, 2))

    model = NNsight(Outer())
    assert model.get("model.0") is model.model[0]
    assert model.get("model.model.0") is model.model[0]
    assert model.get("model") is model


def test_a_child_found_once_is_found_by_normal_lookup_after(net, monkeypatch) -> None:
    # A failed normal lookup builds an AttributeError before __getattr__ runs;
    # each child, alias or spelling is looked up through __getattr__ once.
    model = NNsight(net)
    model._rename = {"layers": ["blocks"]}
    model._apply_rename()
    calls: list[str] = []
    lookup = Envoy.__getattr__

    def counting(self: Envoy, name: str) -> object:
        calls.append(name)
        return lookup(self, name)

    monkeypatch.setattr(Envoy, "__getattr__", counting)
    for _ in range(3):
        assert model.layers[1].fc._module is net.layers[1].fc
        assert model.blocks is model.layers
        assert model.E_layers is model.layers and model.layers_ is model.layers
        assert model.head.out_features == 2  # a module attribute: asked each time
    assert (
        calls
        == ["layers", "fc", "blocks", "E_layers", "layers_", "head", "out_features"]
        + ["out_features"] * 2
    )


class NamedLikeMethods(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.modules = torch.nn.Linear(2, 2)  # type: ignore[assignment]
        self.path = torch.nn.Identity()


def test_a_found_child_never_shadows_what_the_class_or_instance_defines() -> None:
    module = NamedLikeMethods()
    model = NNsight(module)
    for _ in range(2):
        assert model.modules_._module is module._modules["modules"]
        assert model.path_._module is module._modules["path"]
        assert model.path == "model"
        assert [envoy.path for envoy in model.modules()] == ["model", "model.modules", "model.path"]
