"""Factories and steps the tests run on Ray, with the plain loops they are checked against.

Two models: the shipped demo model (text prompts, per-token values with left padding)
and a tiny MLP wrapped in ``NNsight`` (tensor rows; it starts in a fraction of the
time, so the fault tests use it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

PROMPTS = [
    "The Eiffel Tower is in",
    "Paris is",
    "Big Ben is in the city of",
    "Rome",
    "The Colosseum is in",
    "The capital of Italy is",
    "London is",
    "Berlin is the capital of",
    "The Brandenburg Gate is in",
    "Madrid",
    "The Louvre is in",
]


def load_demo() -> Any:
    import endoscope

    return endoscope.demo_model()


def demo_step(lm: Any, texts: list[str]) -> dict[str, torch.Tensor]:
    """Layer 1's hidden states per token and the last position's logits."""
    inputs = lm.tokenizer(texts, return_tensors="pt", padding=True)
    with lm.trace(dict(inputs)):
        hidden = lm.transformer.h[1].output.save()
        last = lm.lm_head.output[:, -1].save()
    return {"hidden": hidden, "last": last, "mask": inputs["attention_mask"]}


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def load_mlp() -> Any:
    from endoscope_envoy import NNsight

    return NNsight(mlp())


def mlp_step(model: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with model.trace(x):
        hidden = model[0].output.save()
        out = model.output.save()
    return {"hidden": hidden, "out": out}


def mlp_reference(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same values with plain torch."""
    model = mlp()
    with torch.no_grad():
        hidden = model[0](x)
        return {"hidden": hidden, "out": model[2](model[1](hidden))}


def rows(n: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return list(torch.randn(n, 4, generator=generator))


def killing_step(marker: str) -> Any:
    """A step whose replica kills itself (ray.kill) on the batch starting at row 8, once."""

    def step(model: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
        import ray

        if float(x[0, 0]) == KILL_VALUE and not Path(marker).exists():
            Path(marker).write_text(str(os.getpid()))
            ray.kill(ray.get_runtime_context().current_actor)
            time.sleep(60)  # killed before this ends: the batch never returns
        return mlp_step(model, x)

    return step


KILL_VALUE = 1234.0


def scaled_step(factor: float) -> Any:
    """``mlp_step`` with its outputs scaled by ``factor``, a value the step captures."""

    def step(model: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {key: value * factor for key, value in mlp_step(model, x).items()}

    return step


def failing_step(model: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Raises on any batch holding a row whose first value is -1000."""
    if bool((x[:, 0] == -1000).any()):
        raise ValueError("bad row in this batch")
    return mlp_step(model, x)


def gated_step(hold: str, progress: str) -> Any:
    """A step that waits while the file ``hold`` exists once 8 rows are done.

    It records each batch it finishes in the directory ``progress``. The driver-kill
    test holds the run there, kills the driver, removes ``hold`` and resumes with the
    same step (same code, so the same run fingerprint).
    """

    def step(model: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
        start = int(x[0, 1])
        while start >= 8 and Path(hold).exists():
            time.sleep(0.05)
        result = mlp_step(model, x)
        Path(progress, f"{start}").touch()
        return result

    return step


def numbered_rows(n: int) -> list[torch.Tensor]:
    """Rows whose second value is the row number (the gated step reads it)."""
    data = rows(n)
    for i, row in enumerate(data):
        row[1] = float(i)
    return data
