"""ModuleValue: ``.output``'s common case and its fall back to eproperty's steps."""

from __future__ import annotations

from typing import Any

import torch

from endoscope_envoy import Envoy, NNsight, requires_output
from endoscope_envoy._module_values import ModuleValue


class DoubledEnvoy(Envoy):
    """An Envoy whose output reads as twice the module's and writes as half."""

    @ModuleValue(key="output")
    @requires_output
    def output(self) -> Any:
        """The output, doubled."""

    output.preprocess(lambda envoy, value: value * 2)
    output.postprocess(lambda envoy, value: value / 2)


def test_processing_steps_turn_the_common_case_off(net, x) -> None:
    model = NNsight(net, envoys={torch.nn.Linear: DoubledEnvoy})
    with model.trace(x):
        head = model.head.output.save()
    # Warm now: the second trace of the same code takes the common case if allowed.
    for _ in range(2):
        with model.trace(x):
            head = model.head.output.save()
    plain_head = net(x)
    assert torch.equal(head, plain_head * 2)

    def patched(module: Any, args: Any, output: Any) -> torch.Tensor:
        return torch.ones(3, 8) * 2

    handle = net.embed.register_forward_hook(patched)
    try:
        expected = net(x)
    finally:
        handle.remove()
    for _ in range(2):
        with model.trace(x):
            model.embed.output = torch.ones(3, 8) * 4
            out = model.output.save()
        assert torch.equal(out, expected)


def test_a_step_added_later_applies_to_the_next_read(net, x) -> None:
    class LateEnvoy(Envoy):
        @ModuleValue(key="output")
        @requires_output
        def output(self) -> Any:
            """The output."""

    model = NNsight(net, envoys={torch.nn.Linear: LateEnvoy})
    seen = []
    for step in range(4):
        if step == 2:  # the call site is warm by now
            LateEnvoy.output.preprocess(lambda envoy, value: value + 1)
        with model.trace(x):
            head = model.head.output.save()
        seen.append(head)
    plain = net(x)
    assert [torch.equal(head, plain) for head in seen] == [True, True, False, False]
    assert torch.equal(seen[3], plain + 1)
