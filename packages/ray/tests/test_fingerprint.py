"""The run fingerprint: code, the values it was built with, options; stable across processes."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import _models
import pytest
import torch

from endoscope_ray import RunMismatchError
from endoscope_ray._fingerprint import fingerprint_parts, run_fingerprint
from endoscope_ray._run import _open_out

CONFIG = {"batch_size": 4}


def fingerprint(step: Any, factory: Any = _models.load_mlp, config: Any = CONFIG) -> str:
    return run_fingerprint(fingerprint_parts(factory, step, config))


def make_step(layer: int, steer: torch.Tensor | None = None, model: Any = None) -> Any:
    def step(lm: Any, x: torch.Tensor) -> Any:
        return {"h": lm[layer].output + (0 if steer is None else steer), "m": model}

    return step


def test_code_and_options_decide_it() -> None:
    assert fingerprint(_models.mlp_step) == fingerprint(_models.mlp_step)
    assert fingerprint(_models.mlp_step) != fingerprint(_models.failing_step)
    assert fingerprint(_models.mlp_step) != fingerprint(_models.mlp_step, config={"batch_size": 8})
    assert fingerprint(_models.mlp_step) != fingerprint(_models.mlp_step, factory=_models.load_demo)


def test_the_values_a_step_captured_decide_it() -> None:
    assert fingerprint(make_step(2)) == fingerprint(make_step(2))
    assert fingerprint(make_step(2)) != fingerprint(make_step(3))
    # A steering vector by its values, not its identity.
    assert fingerprint(make_step(2, torch.ones(4))) == fingerprint(make_step(2, torch.ones(4)))
    assert fingerprint(make_step(2, torch.ones(4))) != fingerprint(make_step(2, torch.ones(4) * 2))
    assert fingerprint(make_step(2, torch.ones(4))) != fingerprint(make_step(2, torch.ones(1, 4)))
    # An object it only uses (a model, a tokenizer) by its type: another load is the same run.
    assert fingerprint(make_step(2, model=_models.mlp())) == fingerprint(
        make_step(2, model=_models.mlp())
    )


def test_odd_values_are_fed_without_failing() -> None:
    import numpy as np

    looped: list[Any] = [1]
    looped.append(looped)
    scalar, empty = torch.tensor(2.5), torch.zeros(0, 3)
    meta = torch.empty(2, 2, device="meta")
    bf16 = torch.ones(3, dtype=torch.bfloat16)
    for value in (looped, scalar, empty, meta, bf16, np.arange(3)):
        assert fingerprint(make_step(2, value)) == fingerprint(make_step(2, value))
    assert fingerprint(make_step(2, torch.tensor(2.5))) != fingerprint(
        make_step(2, torch.tensor(3.5))
    )
    assert fingerprint(make_step(2, np.arange(3))) != fingerprint(make_step(2, np.arange(4)))
    assert fingerprint(make_step(2, bf16)) != fingerprint(make_step(2, bf16 * 2))


def test_defaults_partials_and_callable_objects_decide_it() -> None:
    def with_default(lm: Any, x: torch.Tensor, layer: int = 2) -> Any:
        return lm[layer].output

    def with_other_default(lm: Any, x: torch.Tensor, layer: int = 3) -> Any:
        return lm[layer].output

    with_other_default.__qualname__ = with_default.__qualname__
    assert fingerprint(with_default) != fingerprint(with_other_default)

    def step(lm: Any, x: torch.Tensor, *, layer: int) -> Any:
        return lm[layer].output

    assert fingerprint(functools.partial(step, layer=1)) == fingerprint(
        functools.partial(step, layer=1)
    )
    assert fingerprint(functools.partial(step, layer=1)) != fingerprint(
        functools.partial(step, layer=2)
    )

    class Step:
        def __init__(self, layer: int) -> None:
            self.layer = layer

        def __call__(self, lm: Any, x: torch.Tensor) -> Any:
            return lm[self.layer].output

    assert fingerprint(Step(1)) == fingerprint(Step(1))
    assert fingerprint(Step(1)) != fingerprint(Step(2))


def module_functions(source: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "user_script"}
    exec(compile(textwrap.dedent(source), "user_script.py", "exec"), namespace)
    return namespace


def test_module_constants_and_helpers_decide_it_mutable_globals_do_not() -> None:
    source = """
        LAYER = {layer}
        RESULTS = []

        def scale(h):
            return h * {factor}

        def step(lm, x):
            RESULTS.append(1)
            return scale(lm[LAYER].output)
    """
    base = module_functions(source.format(layer=2, factor=2))
    assert fingerprint(base["step"]) == fingerprint(
        module_functions(source.format(layer=2, factor=2))["step"]
    )
    assert fingerprint(base["step"]) != fingerprint(
        module_functions(source.format(layer=3, factor=2))["step"]
    )
    assert fingerprint(base["step"]) != fingerprint(
        module_functions(source.format(layer=2, factor=3))["step"]
    )
    before = fingerprint(base["step"])
    base["RESULTS"].extend([1, 2, 3])  # what a run appends to is not what it is
    assert fingerprint(base["step"]) == before


def test_recursive_helpers_end() -> None:
    namespace = module_functions(
        """
        def walk(n):
            return n if n < 1 else walk(n - 1)

        def step(lm, x):
            return walk(3)
        """
    )
    assert fingerprint(namespace["step"]) == fingerprint(namespace["step"])


CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
import _models, torch
from test_fingerprint import fingerprint, make_step
print(fingerprint(make_step(2, torch.arange(4.0)), config={"batch_size": 4, "shapes": {"h": [4]}}))
print(fingerprint(_models.gated_step("hold", "progress"), config={}))
"""


def test_the_same_in_another_process() -> None:
    here = Path(__file__).parent
    expected = [
        fingerprint(
            make_step(2, torch.arange(4.0)), config={"batch_size": 4, "shapes": {"h": [4]}}
        ),
        fingerprint(_models.gated_step("hold", "progress"), config={}),
    ]
    for seed in ("1", "2"):
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(here)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        )
        assert child.stdout.split() == expected


def test_a_refused_resume_names_the_parts_that_differ(tmp_path: Path) -> None:
    def open_out(step: Any, config: Any) -> Any:
        parts = fingerprint_parts(_models.load_mlp, step, config)
        return _open_out(tmp_path / "out", parts, config, _models.load_mlp, step)

    open_out(make_step(2), CONFIG)
    open_out(make_step(2), CONFIG)  # the same run: its index, nothing refused
    with pytest.raises(RunMismatchError, match=r"would mix with it: the step \(.*\) differs\. "):
        open_out(make_step(3), CONFIG)
    with pytest.raises(
        RunMismatchError, match=r": the step \(.*\) and the options \(.*\) differ\. "
    ):
        open_out(make_step(3), {"batch_size": 8})
    # An index from before the parts were kept: nothing to name but the fingerprint.
    index_path = tmp_path / "out" / "index.json"
    index = json.loads(index_path.read_text())
    del index["fingerprint_parts"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(RunMismatchError, match=r"would mix with it: its fingerprint differs\. "):
        open_out(make_step(3), CONFIG)
