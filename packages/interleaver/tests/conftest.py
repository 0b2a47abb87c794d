"""Shared fixtures: both schedulers, and leak counting after every test."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from endoscope_interleaver import GreenletScheduler, Scheduler, ThreadScheduler

sys.path.insert(0, str(Path(__file__).parent))

from interleaver_testkit import live_greenlets, worker_threads


@pytest.fixture(params=["thread", "greenlet"])
def scheduler(request: pytest.FixtureRequest) -> Scheduler:
    """Every interleaving test runs once per built-in scheduler.

    The greenlet case needs the ``greenlet`` extra (nox installs it); without it,
    GreenletScheduler() raises ImportError here and the tests fail loudly.
    """
    if request.param == "greenlet":
        return GreenletScheduler()
    return ThreadScheduler()


@pytest.fixture(autouse=True)
def no_leftover_workers() -> Iterator[None]:
    """After every test: no worker thread and no worker greenlet is left."""
    threads_before = len(threading.enumerate())
    greenlets_before = live_greenlets()
    yield
    assert worker_threads() == []
    assert len(threading.enumerate()) == threads_before
    assert live_greenlets() == greenlets_before
