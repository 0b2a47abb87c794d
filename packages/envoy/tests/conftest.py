"""Fixtures for the endoscope-envoy tests: every test runs on both schedulers."""

from __future__ import annotations

import gc
import threading

import pytest
import torch

from endoscope_envoy import CONFIG


@pytest.fixture(params=["greenlet", "thread"], autouse=True)
def scheduler(request: pytest.FixtureRequest):
    """Run the test with this scheduler as the default."""
    previous = CONFIG.scheduler
    CONFIG.scheduler = request.param
    yield request.param
    CONFIG.scheduler = previous


class Block(torch.nn.Module):
    """A residual MLP block with a named sub-layer, like a transformer block."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(width, width)
        self.act = torch.nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.fc(x))


class Net(torch.nn.Module):
    """embed -> layers -> head, small and deterministic."""

    def __init__(self, width: int = 8, depth: int = 3) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(4, width)
        self.layers = torch.nn.ModuleList(Block(width) for _ in range(depth))
        self.head = torch.nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 4)


def hook_count(module: torch.nn.Module) -> int:
    """Every hook registered anywhere in ``module``'s tree."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in module.modules()
    )


@pytest.fixture
def no_leftovers(net: Net):
    """Assert the test leaves no hooks, worker threads or instance forwards behind."""
    threads = threading.active_count()
    yield
    gc.collect()
    assert hook_count(net) == 0
    assert threading.active_count() == threads
    assert all("forward" not in m.__dict__ for m in net.modules())
