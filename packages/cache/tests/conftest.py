"""A small hand-made model and plain-torch hooks that feed a Cache like envoy will.

``Recorder`` registers, on every module, forward pre-hooks and forward hooks that
(a) call ``cache.add`` with provider strings ``<path>.<input|output>.i<n>`` (the
iteration counting each module's calls) and (b) keep their own detached clones of the
same values: the plain-torch reference the cache is compared against.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import defaultdict
from typing import Any

import pytest
import torch
from torch import nn

# torch built without numpy warns once at import; irrelevant to these tests.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")


@dataclasses.dataclass
class HeadOut:
    logits: torch.Tensor
    hidden: torch.Tensor | None = None
    step: int = 0


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.attn = nn.Linear(width, width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, dict[str, Any]]:
        h = x + self.attn(x) * scale
        return h + self.mlp(h), {"mean": h.mean(-1), "count": h.shape[-1], "none": None}


class Transformer(nn.Module):
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.h = nn.ModuleList(Block(width) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.h:
            x, _ = block(x, scale=0.5)
        return self.ln_f(x)


class Head(nn.Module):
    def __init__(self, width: int, vocab: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor, *, step: int = 0) -> HeadOut:
        return HeadOut(logits=self.proj(x), hidden=x, step=step)


class Toy(nn.Module):
    """embed -> transformer.h[0..depth) -> ln_f -> shared (twice) -> head."""

    def __init__(self, vocab: int = 11, width: int = 8, depth: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.transformer = Transformer(width, depth)
        self.shared = nn.Linear(width, width)
        self.head = Head(width, vocab)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> HeadOut:
        x = self.embed(ids)
        if mask is not None:
            x = x * mask.unsqueeze(-1)
        x = self.transformer(x)
        x = self.shared(self.shared(x))  # one module, two calls per forward
        return self.head(x, step=1)


def _clone(value: Any) -> Any:
    """Detached copies of every tensor, written independently of the package under test."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return type(value)(
            **{f.name: _clone(getattr(value, f.name)) for f in dataclasses.fields(value)}
        )
    if isinstance(value, tuple):
        return tuple(_clone(v) for v in value)
    if isinstance(value, list):
        return [_clone(v) for v in value]
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


class Recorder:
    """Hooks every module of ``model``; feeds ``cache`` and keeps plain-torch references.

    Attributes:
        outputs: path -> list of cloned outputs, one per call.
        inputs: path -> list of cloned ``(args, kwargs)``, one per call.
    """

    def __init__(self, model: nn.Module, cache: Any = None, root: str = "model") -> None:
        self.cache = cache
        self.outputs: dict[str, list[Any]] = defaultdict(list)
        self.inputs: dict[str, list[Any]] = defaultdict(list)
        self.calls: dict[str, int] = defaultdict(int)
        self.handles = []
        for name, module in model.named_modules():
            path = f"{root}.{name}" if name else root
            self.handles.append(module.register_forward_pre_hook(self._pre(path), with_kwargs=True))
            self.handles.append(module.register_forward_hook(self._post(path), with_kwargs=True))

    def _pre(self, path: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            self.inputs[path].append(_clone((args, kwargs)))
            if self.cache is not None:
                self.cache.add(f"{path}.input.i{self.calls[path]}", (args, kwargs))

        return hook

    def _post(self, path: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            self.outputs[path].append(_clone(output))
            if self.cache is not None:
                self.cache.add(f"{path}.output.i{self.calls[path]}", output)
            self.calls[path] += 1

        return hook

    def new_pass(self) -> None:
        """Restart iteration numbering, as a new trace would."""
        self.calls.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def assert_same(actual: Any, expected: Any) -> None:
    """Exact structural and tensor equality (torch.equal, dtype included)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), type(actual)
        assert actual.dtype == expected.dtype
        assert actual.shape == expected.shape
        assert torch.equal(actual, expected)
    elif dataclasses.is_dataclass(expected) and not isinstance(expected, type):
        assert type(actual) is type(expected)
        for field in dataclasses.fields(expected):
            assert_same(getattr(actual, field.name), getattr(expected, field.name))
    elif isinstance(expected, (tuple, list)):
        assert type(actual) is type(expected), (type(actual), type(expected))
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_same(a, e)
    elif isinstance(expected, dict):
        assert type(actual) is type(expected)
        assert list(actual) == list(expected)
        for key in expected:
            assert_same(actual[key], expected[key])
    else:
        assert type(actual) is type(expected)
        assert actual == expected


@pytest.fixture
def toy() -> Toy:
    torch.manual_seed(0)
    return Toy().eval()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])


@pytest.fixture
def recorder_factory():
    made: list[Recorder] = []

    def make(model: nn.Module, cache: Any = None) -> Recorder:
        recorder = Recorder(model, cache)
        made.append(recorder)
        return recorder

    yield make
    for recorder in made:
        recorder.remove()


@pytest.fixture
def same():
    return assert_same


@pytest.fixture
def matches_reference(same):
    """``check(cache_dict, recorder)``: every module's entries equal the recorded values."""
    from endoscope_cache import EntryList

    def check(d: Any, ref: Any) -> None:
        assert set(d) == set(ref.outputs)
        for path, outputs in ref.outputs.items():
            value = d[path]
            entries = value if isinstance(value, EntryList) else [value]
            assert len(entries) == len(outputs)
            for entry, output, inputs in zip(entries, outputs, ref.inputs[path]):
                same(entry.output, output)
                same(entry.inputs, inputs)

    return check
