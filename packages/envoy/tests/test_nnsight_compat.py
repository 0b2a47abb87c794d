"""nnsight 0.8.1 behaviours an nnsight script relies on (issue 17), one test each.

Every docstring states what nnsight 0.8.1 does (each was checked by running it);
the test shows endoscope does the same, comparing values with plain torch where
there are values.
"""

from __future__ import annotations

import traceback

import pytest
import torch
from torch import nn

from endoscope_envoy import Envoy, NNsight, NotInTraceError


class Mine(Envoy):
    pass


class A(Envoy):
    pass


class B(Envoy):
    pass


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer2 = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(x)


class Paths(nn.Module):
    """layer1, inner.layer2, layers.0/1 and self_attn: the issue's example paths."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = nn.Linear(4, 4)
        self.inner = Inner()
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.self_attn = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inner(self.layer1(x))
        for layer in self.layers:
            x = layer(x)
        return self.self_attn(x)


@pytest.fixture
def paths() -> Paths:
    torch.manual_seed(0)
    return Paths().eval()


def kinds(model: NNsight) -> dict[str, str]:
    """Path to Envoy class name, for every Envoy below the root that is not plain."""
    return {
        path: type(envoy).__name__
        for path, envoy in model.named_modules()[1:]
        if type(envoy) is not Envoy
    }


def user_lines(error: BaseException) -> list[str | None]:
    return [
        frame.line
        for frame in traceback.extract_tb(error.__traceback__)
        if frame.filename == __file__
    ]


# ------------------------------------------------------------------ 1. envoys=Class


def test_one_envoy_class_wraps_every_module_below_the_root(net, x) -> None:
    """nnsight 0.8.1: ``NNsight(net, envoys=MyEnvoy)`` wraps every module below the
    root in ``MyEnvoy``, grandchildren included; the root stays ``NNsight``."""
    model = NNsight(net, envoys=Mine)
    below = model.named_modules()[1:]
    assert len(below) == len(list(net.modules())) - 1
    assert all(type(envoy) is Mine for _, envoy in below)
    assert type(model.layers[0].fc) is Mine  # a grandchild's child
    assert type(model) is NNsight
    with model.trace(x):
        hidden = model.layers[0].fc.output.save()
    assert torch.equal(hidden, net.layers[0].fc(net.embed(x)))


# ---------------------------------------------------- 2. passed envoys= vs class default


def test_a_passed_envoys_replaces_the_class_default(net) -> None:
    """nnsight 0.8.1 has no class-level default: the ``envoys=`` passed is all there
    is, and ``None`` means plain ``Envoy``. endoscope's class attribute applies only
    when the keyword is omitted, and may be a single class."""

    class Defaulted(NNsight):
        envoys = {nn.Linear: A}

    assert type(Defaulted(net).head) is A  # omitted: the class default
    assert kinds(Defaulted(net, envoys=None)) == {}  # None: plain Envoy everywhere
    assert kinds(Defaulted(net, envoys={})) == {}
    replaced = Defaulted(net, envoys={nn.ReLU: B})
    assert type(replaced.head) is Envoy  # not merged with the class default
    assert type(replaced.layers[0].act) is B
    assert type(Defaulted(net, envoys=B).head) is B

    class OneClass(NNsight):
        envoys = Mine

    model = OneClass(net)
    assert {type(envoy) for _, envoy in model.named_modules()[1:]} == {Mine}


# ------------------------------------------------------------- 3. mapping keys


def test_string_keys_match_whole_dotted_parts_at_the_end_of_the_path(paths) -> None:
    """nnsight 0.8.1: a string key matches the end of an Envoy's path by whole
    dotted parts; ``*`` is any one part; a leading ``.`` is ignored."""
    assert kinds(NNsight(paths, envoys={"layer1": A})) == {"model.layer1": "A"}
    assert kinds(NNsight(paths, envoys={"layer": A})) == {}  # not a substring match
    assert kinds(NNsight(paths, envoys={"inner.layer2": A})) == {"model.inner.layer2": "A"}
    assert kinds(NNsight(paths, envoys={".layer1": A})) == {"model.layer1": "A"}
    assert kinds(NNsight(paths, envoys={"model.layer1": A})) == {"model.layer1": "A"}
    assert kinds(NNsight(paths, envoys={"layers.*": A})) == {
        "model.layers.0": "A",
        "model.layers.1": "A",
    }  # not model.layers itself
    assert kinds(NNsight(paths, envoys={"layers": A})) == {"model.layers": "A"}
    assert kinds(NNsight(paths, envoys={"*.layer2": A})) == {"model.inner.layer2": "A"}
    assert kinds(NNsight(paths, envoys={"nothing": A})) == {}


def test_string_keys_match_every_alias_spelling_from_rename(paths) -> None:
    """nnsight 0.8.1: keys are also tried against each spelling of the path under
    ``rename`` (``{"self_attn": "attn"}`` makes ``{"attn": E}`` match
    ``model.self_attn``), aliases of ancestors included."""
    model = NNsight(paths, rename={"self_attn": "attn"}, envoys={"attn": A})
    assert kinds(model) == {"model.self_attn": "A"}
    assert model.attn is model.self_attn
    assert kinds(NNsight(paths, rename={"layers": "h"}, envoys={"h.*": A})) == {
        "model.layers.0": "A",
        "model.layers.1": "A",
    }
    assert kinds(NNsight(paths, rename={"inner": ["x", "y"]}, envoys={"y.layer2": A})) == {
        "model.inner.layer2": "A"
    }
    # A dotted key is a path from the root, its alias mounted on the root.
    mounted = NNsight(paths, rename={"inner.layer2": "deep"}, envoys={"deep": A})
    assert kinds(mounted) == {"model.inner.layer2": "A"}
    assert mounted.deep is mounted.inner.layer2


def test_type_keys_come_first_most_specific_class_first(paths) -> None:
    """nnsight 0.8.1: type keys are tried before string keys, along the module's
    MRO (``{nn.Module: A, nn.Linear: B}`` gives a Linear ``B``); nothing matching
    gives plain ``Envoy``."""
    assert kinds(NNsight(paths, envoys={nn.Module: A, nn.Linear: B})) == {
        "model.layer1": "B",
        "model.inner": "A",
        "model.inner.layer2": "B",
        "model.layers": "A",
        "model.layers.0": "B",
        "model.layers.1": "B",
        "model.self_attn": "B",
    }
    by_type = kinds(NNsight(paths, envoys={"layer1": B, nn.Linear: A}))
    assert by_type["model.layer1"] == "A"  # the type key wins over the path key
    assert kinds(NNsight(paths, envoys={nn.ModuleList: A, "layers.0": B})) == {
        "model.layers": "A",
        "model.layers.0": "B",
    }
    assert kinds(NNsight(paths, envoys={nn.Conv1d: A})) == {}


def test_an_envoys_value_that_is_no_envoy_class_says_so(paths) -> None:
    """nnsight 0.8.1 fails obscurely when it builds such an Envoy; endoscope names
    the key's path and what to give."""
    with pytest.raises(TypeError, match=r"model\.layer1.*not an Envoy subclass"):
        NNsight(paths, envoys={"layer1": int})
    with pytest.raises(TypeError, match="mapping of module types and path suffixes"):
        NNsight(paths, envoys=[A])  # type: ignore[arg-type]


# ------------------------------------------------------------ 4. E_<name>


class Clashing(nn.Module):
    """Children named like Envoy attributes, as BERT's ``layer.output``."""

    def __init__(self) -> None:
        super().__init__()
        self.input = nn.Linear(4, 4)
        self.output = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.input(x))


def test_a_clashing_child_is_reachable_as_E_name(x) -> None:
    """nnsight 0.8.1 serves a child named like an Envoy attribute (BERT's
    ``layer.output``) as ``layer.E_output``; ``layer.output`` stays the layer's
    output. endoscope's ``layer.output_`` stays too."""
    torch.manual_seed(0)
    clashing = Clashing().eval()
    model = NNsight(nn.Sequential(nn.Linear(4, 4), clashing))
    block = model[1]
    assert block.E_output is block.output_ is block.get("output")
    assert block.E_input is block.input_
    assert block.E_output.path == "model.1.output"
    with model.trace(x):
        inner = block.E_input.output.save()
        sub = block.E_output.output.save()
        whole = block.output.save()
    expected = clashing.output(clashing.input(model._module[0](x)))
    assert torch.equal(inner, clashing.input(model._module[0](x)))
    assert torch.equal(sub, expected)
    assert torch.equal(whole, expected)


# ------------------------------------------------------------ 7. nested invoke


def test_an_invoke_inside_an_invoke_is_a_value_error(net, x, no_leftovers) -> None:
    """nnsight 0.8.1 raises ``ValueError: Cannot invoke while the model is already
    running.`` for ``tracer.invoke`` inside another invoke's body (and inside the
    body of ``model.trace(x)``); endoscope used to drop the inner invoke's code."""
    model = NNsight(net)
    running = "Cannot invoke while the model is already running"
    with pytest.raises(ValueError, match=running) as caught:
        with model.trace() as tracer:
            with tracer.invoke(x):
                model.layers[0].output.save()
                with tracer.invoke(x):
                    model.head.output.save()
    assert user_lines(caught.value)[-1] == "with tracer.invoke(x):"
    with pytest.raises(ValueError, match=running):
        with model.trace(x) as tracer:
            with tracer.invoke(x):
                pass
    # The model is usable afterwards.
    with model.trace() as tracer:
        with tracer.invoke(x):
            out = model.output.save()
    assert torch.equal(out, net(x))


# --------------------------------------------------------- 8. no input, no invoke


def test_a_read_in_a_trace_without_input_says_how_to_give_one(net, x, no_leftovers) -> None:
    """nnsight 0.8.1: ``with model.trace(): model.output.save()`` raises
    ``ValueError: Cannot access `model.output` outside of interleaving``. endoscope
    raises a ``ValueError`` (``NotInTraceError``) with those words at the user's line,
    saying the trace has no input and how to give one (it used to say "no values
    outside a trace", wrong inside one)."""
    model = NNsight(net)
    with pytest.raises(ValueError, match="Cannot access `model.output` outside of interleaving"):
        with model.trace():
            model.output.save()
    with pytest.raises(NotInTraceError) as caught:
        with model.trace():
            model.layers[0].inputs
    message = str(caught.value)
    assert "this trace has no input" in message and "model.trace(x)" in message
    assert "tracer.invoke(x)" in message and "outside a trace" not in message
    assert user_lines(caught.value)[-1] == "model.layers[0].inputs"
    # After invokes, the trace's own code still runs before the model: say so.
    with pytest.raises(NotInTraceError, match="outside its invokes runs before the model"):
        with model.trace() as tracer:
            with tracer.invoke(x):
                pass
            model.head.output.save()
    # Outside any trace: a ValueError too, as nnsight's.
    with pytest.raises(ValueError, match="Cannot access `model.head.output`.*outside a trace"):
        model.head.output
    assert issubclass(NotInTraceError, ValueError) and issubclass(NotInTraceError, RuntimeError)
    with model.trace(x):
        out = model.output.save()
    assert torch.equal(out, net(x))


# ------------------------------------------------------------ 9. switched-off kinds


def test_cache_kinds_switched_off_read_none(net, x, no_leftovers) -> None:
    """nnsight 0.8.1: in ``tracer.cache()``'s entries, ``.input``/``.inputs`` are
    ``None`` unless ``include_inputs=True``, and ``.output`` is ``None`` with
    ``include_output=False``. endoscope used to raise ``AttributeError``."""
    model = NNsight(net)
    with model.trace(x) as tracer:
        outputs = tracer.cache()
    with model.trace(x) as tracer:
        inputs = tracer.cache(include_output=False, include_inputs=True)
    hidden = net.embed(x)
    assert torch.equal(outputs["model.layers.0"].output, net.layers[0](hidden))
    assert outputs["model.layers.0"].input is None
    assert outputs.model.layers[0].inputs is None
    assert inputs.model.layers[0].output is None
    assert torch.equal(inputs.model.layers[0].input, hidden)
    assert torch.equal(inputs["model.layers.0"].inputs[0][0], hidden)


def test_a_cached_module_that_never_finished_still_explains_itself(net, x) -> None:
    """nnsight 0.8.1 gives ``None`` for the output of a module a ``tracer.stop()``
    cut short; endoscope keeps its clear error there (a kept kind that never came),
    while the inputs it did receive are cached."""
    model = NNsight(net)
    with model.trace(x) as tracer:
        cache = tracer.cache(include_inputs=True)
        model.layers[1].output.save()
        tracer.stop()
    assert torch.equal(cache.model.input, x)
    with pytest.raises(AttributeError, match="did not finish this call"):
        cache.model.output
    assert torch.equal(cache.model.layers[0].output, net.layers[0](net.embed(x)))


# --------------------------------------------------------- 10. an invoke's cache


def test_a_cache_made_in_an_invoke_keeps_that_invokes_rows(net, x, no_leftovers) -> None:
    """nnsight 0.8.1 (a LanguageModel there: it refuses to batch invokes of a plain
    module): ``tracer.cache()`` inside an invoke records that invoke's rows of the
    batch; one inside an invoke without input records the whole batch."""
    model = NNsight(net)
    with model.trace() as tracer:
        with tracer.invoke(x[:1]):
            first = tracer.cache()
        with tracer.invoke(x[1:]):
            rest = tracer.cache(include_inputs=True, modules=["model.layers.1", "model"])
        with tracer.invoke():
            whole = tracer.cache()
    # The one batched forward, in plain torch: each invoke's rows of it.
    hidden = net.layers[0](net.embed(x))
    out = net(x)
    assert first.model.output.shape == (1, 2)
    assert torch.equal(first.model.output, out[:1])
    assert torch.equal(first.model.layers[0].output, hidden[:1])
    assert torch.equal(rest.model.output, out[1:])
    assert torch.equal(rest.model.input, x[1:])
    assert torch.equal(rest.model.layers[1].input, hidden[1:])
    assert torch.equal(rest.model.layers[1].output, net.layers[1](hidden)[1:])
    assert list(rest.keys()) == ["model", "model.layers.1"]
    assert torch.equal(whole.model.output, out)
    assert torch.equal(whole.model.layers[1].output[1:], rest.model.layers[1].output)
